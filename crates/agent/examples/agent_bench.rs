//! Agent benchmarks on a private 1920×1080 Xvfb screen.
//!
//! ```sh
//! cargo run --release -p guruconnect-agent --example agent_bench
//! ```
//!
//! Needs `Xvfb` and `xdotool` (Debian: xvfb, xdotool). The process starts
//! `Xvfb :N -screen 0 1920x1080x24 -noreset -nolisten tcp`, then re-runs itself with
//! `DISPLAY=:N` (the agent's X code reads `$DISPLAY`) and kills Xvfb at the end.
//!
//! 1. **typing**: a terminal-like window (core font, one character typed per frame at
//!    30 fps, a block cursor) is captured with the agent's own [`X11Capturer`] (MIT-SHM) and
//!    encoded with the agent's [`FrameEncoder`] (dirty tiles + zstd, or H.264), on this
//!    thread. CPU time is this process's CPU time from `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`
//!    (exact at each reading; the process: openh264 encodes its slices on worker threads,
//!    and nothing else in the process runs during these two scenarios); the X server's share of the capture (it copies the pixels
//!    into the shared memory) is Xvfb's on-CPU time from `/proc/<pid>/task/*/schedstat`
//!    (another process's threads; it may lag by up to a tick while Xvfb runs, and Xvfb is
//!    idle when it is read after each frame). Bytes are
//!    the protobuf `Envelope { VideoFrame }` as it goes on the WebSocket.
//! 2. **full**: two different full-screen pictures (a noisy photo-like one and a smooth
//!    gradient) alternate; capture + encode per frame.
//! 3. **input**: the real relay in-process (`guruconnect_server`, SQLite in a temporary
//!    directory), the agent's support-mode session (`session::connect` + `session::run`,
//!    on its own 2-thread runtime, exactly what `guruconnect-agent --server --code` runs
//!    after its start-up checks) in this process, the consent prompt clicked with xdotool.
//!    A control viewer (the protocol client) sends `KeyEvent`s carrying
//!    `sent_timestamp_us`; an X client window with the focus records when each `KeyPress`
//!    arrives. Latency = arrival − send (same clock).
//! 4. **glass-to-glass**: a strip of 16 black/white blocks (a counter and its complement)
//!    is redrawn at 30 fps with `PutImage`, recording when each value was drawn; the agent
//!    streams at the relay's 30 fps; the viewer decodes every frame with the codec
//!    [`Decoder`] and reads the counter back. Two figures: draw → decoded (true
//!    glass-to-glass, includes waiting up to one frame interval for the next capture) and
//!    capture → decoded (from the frame's `capture_timestamp_us`).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use guruconnect_agent::encoding::FrameEncoder;
use guruconnect_agent::platform::Capturer as _;
use guruconnect_agent::platform::linux::capture::X11Capturer;
use guruconnect_agent::platform::linux::consent::{ALLOW_BUTTON, WINDOW_TITLE, center};
use guruconnect_agent::session;
use guruconnect_client::{Connection, connect_viewer};
use guruconnect_codec::{Decoder, Image};
use guruconnect_proto::{Codec, DisplayInfo, Envelope, KeyEvent, Payload, ViewerHello};
use serde_json::{Value, json};
use x11rb::connection::{Connection as _, RequestConnection as _};
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    ConnectionExt as _, CreateGCAux, CreateWindowAux, EventMask, ImageFormat, InputFocus,
    Rectangle, WindowClass,
};
use x11rb::rust_connection::RustConnection;

const SCREEN_W: u16 = 1920;
const SCREEN_H: u16 = 1080;
const FPS: u32 = 30;
/// Set in the re-run child: Xvfb's pid.
const CHILD_ENV: &str = "GURUCONNECT_AGENT_BENCH_XVFB_PID";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug, Clone)]
#[command(about = "GuruConnect agent benchmarks on a private 1920x1080 Xvfb screen")]
struct Args {
    /// Typing frames measured per codec (30 fps; 15 warm-up frames are not counted).
    #[arg(long, default_value_t = 300)]
    typing_frames: usize,
    /// Full-screen-change frames measured per codec (4 warm-up frames are not counted).
    #[arg(long, default_value_t = 60)]
    full_frames: usize,
    /// Key presses measured (20 warm-up presses are not counted).
    #[arg(long, default_value_t = 500)]
    input_events: usize,
    /// Seconds of glass-to-glass measurement per codec (after 1 s of warm-up).
    #[arg(long, default_value_t = 10)]
    g2g_seconds: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match std::env::var(CHILD_ENV) {
        Ok(pid) => child_main(&args, pid.parse().unwrap_or(0)),
        Err(_) => parent_main(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent_bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ Xvfb and re-run

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn start_xvfb() -> Result<(Child, String)> {
    if !have("Xvfb") || !have("xdotool") {
        bail!("needs Xvfb and xdotool (Debian: apt-get install xvfb xdotool)");
    }
    for _ in 0..20 {
        let n = 100 + rand::random::<u32>() % 800;
        if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
            || Path::new(&format!("/tmp/.X{n}-lock")).exists()
        {
            continue;
        }
        let display = format!(":{n}");
        let size = format!("{SCREEN_W}x{SCREEN_H}x24");
        let mut child = Command::new("Xvfb")
            .args([
                &display,
                "-screen",
                "0",
                &size,
                "-noreset",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn Xvfb")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                break; // lost a race for the display number
            }
            if x11rb::connect(Some(&display)).is_ok() {
                return Ok((child, display));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    bail!("could not start Xvfb")
}

fn stop_xvfb(mut child: Child) {
    // SIGTERM lets Xvfb remove its socket and lock file.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn parent_main() -> Result<ExitCode> {
    let (xvfb, display) = start_xvfb()?;
    eprintln!(
        "agent_bench: Xvfb {display} (pid {}) at {SCREEN_W}x{SCREEN_H}x24",
        xvfb.id()
    );
    let status = std::env::current_exe()
        .context("current_exe")
        .and_then(|exe| {
            Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("DISPLAY", &display)
                .env(CHILD_ENV, xvfb.id().to_string())
                .status()
                .context("re-run under Xvfb")
        });
    stop_xvfb(xvfb);
    Ok(if status?.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// ------------------------------------------------------------------ clocks and statistics

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// On-CPU nanoseconds from a `schedstat` file, or from the `stat` file beside it (10 ms
/// ticks) when the kernel has no schedstat.
fn cpu_ns(schedstat: &str) -> u64 {
    if let Some(ns) = std::fs::read_to_string(schedstat)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
    {
        return ns;
    }
    let stat = schedstat.trim_end_matches("schedstat").to_owned() + "stat";
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
            let ticks: u64 =
                rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 10_000_000)
        })
        .unwrap_or(0)
}

/// This process's CPU time (all threads: openh264's slice workers too) from the CPU-time
/// clock: exact at the call, unlike `/proc/thread-self/schedstat`, which lags by up to a
/// scheduler tick and under-counted short frames (issue 16).
fn agent_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// All threads of `pid` (Xvfb).
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .map(|t| cpu_ns(&format!("{}/schedstat", t.path().display())))
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

// ------------------------------------------------------------------ X helpers

fn x_connect() -> Result<(RustConnection, u32)> {
    let (conn, screen) = x11rb::connect(None).context("connect to $DISPLAY")?;
    let root = conn
        .setup()
        .roots
        .get(screen)
        .map(|s| s.root)
        .ok_or_else(|| anyhow!("no X screen"))?;
    Ok((conn, root))
}

/// A round trip: every request sent before it has been executed by the server.
fn x_sync(conn: &RustConnection) -> Result<()> {
    conn.get_input_focus()?.reply()?;
    Ok(())
}

fn create_window(
    conn: &RustConnection,
    root: u32,
    (x, y, w, h): (i16, i16, u16, u16),
    background: u32,
    events: EventMask,
) -> Result<u32> {
    let id = conn.generate_id()?;
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        id,
        root,
        x,
        y,
        w,
        h,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new()
            .background_pixel(background)
            .override_redirect(1)
            .event_mask(events),
    )?;
    conn.map_window(id)?;
    x_sync(conn)?;
    Ok(id)
}

/// `PutImage` of a BGRX buffer in strips that fit the server's request limit.
fn put_image(
    conn: &RustConnection,
    drawable: u32,
    gc: u32,
    width: u16,
    height: u16,
    bgrx: &[u8],
) -> Result<()> {
    let stride = usize::from(width) * 4;
    let max = conn.maximum_request_bytes().min(4 << 20) - 64;
    let rows = (max / stride).clamp(1, usize::from(height));
    let mut y = 0usize;
    while y < usize::from(height) {
        let h = rows.min(usize::from(height) - y);
        conn.put_image(
            ImageFormat::Z_PIXMAP,
            drawable,
            gc,
            width,
            u16::try_from(h)?,
            0,
            i16::try_from(y)?,
            0,
            24,
            &bgrx[y * stride..(y + h) * stride],
        )?;
        y += h;
    }
    Ok(())
}

// ------------------------------------------------------------------ 1. the typing scene

const TERMINAL: (i16, i16, u16, u16) = (60, 60, 1200, 720);
const TERM_BG: u32 = 0x001e_1e1e;
const TERM_FG: u32 = 0x00d0_d0d0;
const SHELL_TEXT: &str = "$ cargo build --release -p guruconnect-agent\n\
$ ls -la /var/log/guruconnect\n\
$ grep -rn \"capture\" crates/agent/src | head -20\n\
$ ssh admin@10.0.0.12 'systemctl status guruconnect-agent'\n\
$ sudo journalctl -u guruconnect-agent --since today\n";

/// A terminal-like window: one character per call, a block cursor after it.
struct Terminal {
    conn: RustConnection,
    window: u32,
    text_gc: u32,
    fg_gc: u32,
    bg_gc: u32,
    /// Cell width, height and the font's ascent; `None` font: glyph blocks.
    cell: (i16, i16, i16),
    font: Option<String>,
    cols: i16,
    rows: i16,
    col: i16,
    row: i16,
    typed: usize,
}

impl Terminal {
    fn open() -> Result<Self> {
        let (conn, root) = x_connect()?;
        let window = create_window(&conn, root, TERMINAL, TERM_BG, EventMask::NO_EVENT)?;
        let mut font = None;
        let mut cell = (8, 16, 12);
        for name in ["8x16", "9x15", "fixed"] {
            let fid = conn.generate_id()?;
            if conn.open_font(fid, name.as_bytes())?.check().is_err() {
                continue;
            }
            let info = conn.query_font(fid)?.reply()?;
            cell = (
                info.max_bounds.character_width,
                info.font_ascent + info.font_descent,
                info.font_ascent,
            );
            font = Some((fid, name.to_owned()));
            break;
        }
        let text_gc = conn.generate_id()?;
        let mut aux = CreateGCAux::new().foreground(TERM_FG).background(TERM_BG);
        if let Some((fid, _)) = &font {
            aux = aux.font(*fid);
        }
        conn.create_gc(text_gc, window, &aux)?;
        let fg_gc = conn.generate_id()?;
        conn.create_gc(fg_gc, window, &CreateGCAux::new().foreground(TERM_FG))?;
        let bg_gc = conn.generate_id()?;
        conn.create_gc(bg_gc, window, &CreateGCAux::new().foreground(TERM_BG))?;
        let cols = i16::try_from(TERMINAL.2)? / cell.0 - 2;
        let rows = i16::try_from(TERMINAL.3)? / cell.1 - 2;
        x_sync(&conn)?;
        Ok(Self {
            conn,
            window,
            text_gc,
            fg_gc,
            bg_gc,
            cell,
            font: font.map(|(_, name)| name),
            cols,
            rows,
            col: 0,
            row: 0,
            typed: 0,
        })
    }

    fn cell_rect(&self, col: i16, row: i16) -> Rectangle {
        Rectangle {
            x: (col + 1) * self.cell.0,
            y: (row + 1) * self.cell.1,
            width: self.cell.0.unsigned_abs(),
            height: self.cell.1.unsigned_abs(),
        }
    }

    fn newline(&mut self) -> Result<()> {
        let old = self.cell_rect(self.col, self.row);
        self.conn
            .poly_fill_rectangle(self.window, self.bg_gc, &[old])?;
        self.col = 0;
        self.row = (self.row + 1) % self.rows;
        // Wrap to the top instead of scrolling; the new line is cleared as a shell would.
        let mut line = self.cell_rect(0, self.row);
        line.width = (self.cols * self.cell.0).unsigned_abs();
        self.conn
            .poly_fill_rectangle(self.window, self.bg_gc, &[line])?;
        Ok(())
    }

    /// Types the next character of the script and waits until the server drew it.
    fn type_char(&mut self) -> Result<()> {
        let bytes = SHELL_TEXT.as_bytes();
        let c = bytes[self.typed % bytes.len()];
        self.typed += 1;
        if c == b'\n' {
            self.newline()?;
        } else {
            let r = self.cell_rect(self.col, self.row);
            if self.font.is_some() {
                self.conn
                    .image_text8(self.window, self.text_gc, r.x, r.y + self.cell.2, &[c])?;
            } else {
                // No core font: an 8×16 glyph-like block whose shape depends on the byte.
                self.conn
                    .poly_fill_rectangle(self.window, self.bg_gc, &[r])?;
                let h = 4 + i16::from(c % 9);
                self.conn.poly_fill_rectangle(
                    self.window,
                    self.text_gc,
                    &[Rectangle {
                        x: r.x + 1,
                        y: r.y + r.height as i16 - 2 - h,
                        width: r.width - 2,
                        height: h.unsigned_abs(),
                    }],
                )?;
            }
            self.col += 1;
            if self.col == self.cols {
                self.newline()?;
            }
        }
        let cursor = self.cell_rect(self.col, self.row);
        self.conn
            .poly_fill_rectangle(self.window, self.fg_gc, &[cursor])?;
        x_sync(&self.conn)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.conn.destroy_window(self.window);
        let _ = x_sync(&self.conn);
    }
}

// ------------------------------------------------------------------ capture + encode costs

#[derive(Debug, Clone, Copy)]
struct FrameCost {
    capture_ms: f64,
    encode_ms: f64,
    /// This thread's CPU for capture + encode.
    cpu_ms: f64,
    /// This thread's CPU for the capture alone (copy out of the shared memory, alpha).
    capture_cpu_ms: f64,
    /// Xvfb's CPU over the same span (its half of the MIT-SHM capture).
    xserver_ms: f64,
    /// Wire bytes (`Envelope { VideoFrame }`); 0 when nothing was sent.
    bytes: usize,
}

struct Pipeline {
    capturer: X11Capturer,
    display: DisplayInfo,
    encoder: FrameEncoder,
    xvfb_pid: u32,
    sequence: u64,
}

impl Pipeline {
    fn new(codec: Codec, xvfb_pid: u32) -> Result<Self> {
        let capturer = X11Capturer::open().map_err(|e| anyhow!("capturer: {e}"))?;
        if !capturer.uses_shm() {
            eprintln!("agent_bench: WARNING: MIT-SHM unavailable, capturing with GetImage");
        }
        let displays = capturer.displays();
        let display = displays
            .iter()
            .find(|d| d.primary)
            .or(displays.first())
            .cloned()
            .ok_or_else(|| anyhow!("no display"))?;
        let mut pipeline = Self {
            capturer,
            display,
            encoder: FrameEncoder::new(codec),
            xvfb_pid,
            sequence: 0,
        };
        if pipeline.encoder.codec() != codec {
            bail!("{codec:?} is unavailable in this build");
        }
        // The stream starts with a keyframe, as in the agent.
        let image = pipeline.capture()?;
        pipeline.encoder.encode(&image, true);
        Ok(pipeline)
    }

    fn capture(&mut self) -> Result<Image> {
        self.capturer
            .capture(&self.display)
            .map_err(|e| anyhow!("capture: {e}"))
    }

    /// One iteration of the agent's capture loop: capture, dirty detection + encode.
    fn frame(&mut self) -> Result<FrameCost> {
        let (c0, x0, t0) = (
            agent_cpu_ns(),
            process_cpu_ns(self.xvfb_pid),
            Instant::now(),
        );
        let image = self.capture()?;
        let (t1, cm) = (Instant::now(), agent_cpu_ns());
        let frame = self.encoder.encode(&image, false);
        // As the agent's capture thread does: the next capture reuses the buffer.
        self.capturer.recycle(image);
        let t2 = Instant::now();
        let (c1, x1) = (agent_cpu_ns(), process_cpu_ns(self.xvfb_pid));
        let bytes = frame.map_or(0, |f| {
            self.sequence += 1;
            let video = f.to_video_frame(self.display.id, self.sequence, now_us());
            Envelope::new(Payload::VideoFrame(video)).to_bytes().len()
        });
        Ok(FrameCost {
            capture_ms: (t1 - t0).as_secs_f64() * 1e3,
            encode_ms: (t2 - t1).as_secs_f64() * 1e3,
            cpu_ms: c1.saturating_sub(c0) as f64 / 1e6,
            capture_cpu_ms: cm.saturating_sub(c0) as f64 / 1e6,
            xserver_ms: x1.saturating_sub(x0) as f64 / 1e6,
            bytes,
        })
    }
}

#[derive(Debug, Default)]
struct CostSummary {
    frames: usize,
    cpu_mean: f64,
    cpu_p95: f64,
    capture_cpu_mean: f64,
    wall_mean: f64,
    wall_p95: f64,
    capture_mean: f64,
    encode_mean: f64,
    xserver_mean: f64,
    bytes_per_frame: f64,
    max_bytes: usize,
    sent_frames: usize,
}

fn summarize(costs: &[FrameCost]) -> CostSummary {
    let cpu = sorted(costs.iter().map(|c| c.cpu_ms).collect());
    let wall = sorted(costs.iter().map(|c| c.capture_ms + c.encode_ms).collect());
    CostSummary {
        frames: costs.len(),
        cpu_mean: mean(&cpu),
        cpu_p95: percentile(&cpu, 95.0),
        capture_cpu_mean: mean(&costs.iter().map(|c| c.capture_cpu_ms).collect::<Vec<_>>()),
        wall_mean: mean(&wall),
        wall_p95: percentile(&wall, 95.0),
        capture_mean: mean(&costs.iter().map(|c| c.capture_ms).collect::<Vec<_>>()),
        encode_mean: mean(&costs.iter().map(|c| c.encode_ms).collect::<Vec<_>>()),
        xserver_mean: mean(&costs.iter().map(|c| c.xserver_ms).collect::<Vec<_>>()),
        bytes_per_frame: mean(&costs.iter().map(|c| c.bytes as f64).collect::<Vec<_>>()),
        max_bytes: costs.iter().map(|c| c.bytes).max().unwrap_or(0),
        sent_frames: costs.iter().filter(|c| c.bytes > 0).count(),
    }
}

fn frame_interval() -> Duration {
    Duration::from_secs(1) / FPS
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn typing_bench(codec: Codec, frames: usize, xvfb_pid: u32) -> Result<(CostSummary, String)> {
    const WARM: usize = 15;
    let mut terminal = Terminal::open()?;
    let font = terminal
        .font
        .clone()
        .unwrap_or_else(|| "none (glyph blocks)".into());
    let mut pipeline = Pipeline::new(codec, xvfb_pid)?;
    let mut costs = Vec::with_capacity(frames);
    let start = Instant::now();
    for i in 0..WARM + frames {
        sleep_until(start + frame_interval() * u32::try_from(i)?);
        terminal.type_char()?;
        let cost = pipeline.frame()?;
        if i >= WARM {
            costs.push(cost);
        }
    }
    Ok((
        summarize(&costs),
        format!(
            "font {font}, cell {}x{} px",
            terminal.cell.0, terminal.cell.1
        ),
    ))
}

/// Costs of two steps inside the encoders, on a 1920×1080 capture of the typing scene
/// (this thread's CPU, mean of 30 runs): the codec's dirty-tile comparison of two captures
/// that differ by one glyph (the lossless path), and openh264's BGRA → YUV 4:2:0
/// conversion (`YUVBuffer::read_bgra8`, what the H.264 path runs on every frame).
fn encoder_steps() -> Result<(f64, f64)> {
    const RUNS: u32 = 30;
    let mut terminal = Terminal::open()?;
    let mut pipeline = Pipeline::new(Codec::RawZstd, 0)?;
    let before = pipeline.capture()?;
    terminal.type_char()?;
    let after = pipeline.capture()?;
    let time = |f: &mut dyn FnMut()| {
        let c0 = agent_cpu_ns();
        for _ in 0..RUNS {
            f();
        }
        agent_cpu_ns().saturating_sub(c0) as f64 / 1e6 / f64::from(RUNS)
    };
    let mut rects = 0;
    let dirty = time(&mut || rects += guruconnect_codec::dirty_tiles(&before, &after).len());
    let (w, h) = (after.width as usize, after.height as usize);
    let mut yuv = openh264::formats::YUVBuffer::new(w, h);
    let convert =
        time(&mut || yuv.read_bgra8(openh264::formats::BgraSliceU8::new(&after.data, (w, h))));
    std::hint::black_box((rects, &yuv));
    Ok((dirty, convert))
}

// ------------------------------------------------------------------ 2. full-screen change

/// Deterministic xorshift for the noisy picture.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A photo-like picture: smooth colour fields plus per-pixel sensor-like noise (±12).
fn photo_like(w: usize, h: usize) -> Vec<u8> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64, y as f64);
            let base = [
                128.0 + 90.0 * (fx / 97.0 + fy / 143.0).sin(),
                128.0 + 80.0 * ((fx + fy) / 61.0).sin() * (fy / 211.0).cos(),
                128.0 + 100.0 * (fx / 173.0 - fy / 89.0).cos(),
            ];
            let noise = rng.next();
            for (i, b) in base.iter().enumerate() {
                let n = ((noise >> (i * 8)) & 0xff) as f64 / 255.0 * 24.0 - 12.0;
                out.push((b + n).clamp(0.0, 255.0) as u8);
            }
            out.push(0);
        }
    }
    out
}

/// A smooth diagonal gradient.
fn gradient(w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            out.extend_from_slice(&[
                (x * 255 / w.max(1)) as u8,
                (y * 255 / h.max(1)) as u8,
                ((x + y) * 255 / (w + h).max(1)) as u8,
                0,
            ]);
        }
    }
    out
}

struct FullScreen {
    conn: RustConnection,
    window: u32,
    gc: u32,
    pixmaps: [u32; 2],
}

impl FullScreen {
    fn open() -> Result<Self> {
        let (conn, root) = x_connect()?;
        let window = create_window(
            &conn,
            root,
            (0, 0, SCREEN_W, SCREEN_H),
            0,
            EventMask::NO_EVENT,
        )?;
        let gc = conn.generate_id()?;
        conn.create_gc(gc, window, &CreateGCAux::new())?;
        let (w, h) = (usize::from(SCREEN_W), usize::from(SCREEN_H));
        let mut pixmaps = [0; 2];
        for (slot, picture) in pixmaps.iter_mut().zip([photo_like(w, h), gradient(w, h)]) {
            let pixmap = conn.generate_id()?;
            conn.create_pixmap(24, pixmap, window, SCREEN_W, SCREEN_H)?;
            put_image(&conn, pixmap, gc, SCREEN_W, SCREEN_H, &picture)?;
            *slot = pixmap;
        }
        x_sync(&conn)?;
        Ok(Self {
            conn,
            window,
            gc,
            pixmaps,
        })
    }

    fn show(&self, which: usize) -> Result<()> {
        self.conn.copy_area(
            self.pixmaps[which % 2],
            self.window,
            self.gc,
            0,
            0,
            0,
            0,
            SCREEN_W,
            SCREEN_H,
        )?;
        x_sync(&self.conn)
    }
}

impl Drop for FullScreen {
    fn drop(&mut self) {
        let _ = self.conn.destroy_window(self.window);
        for p in self.pixmaps {
            let _ = self.conn.free_pixmap(p);
        }
        let _ = x_sync(&self.conn);
    }
}

fn full_bench(codec: Codec, frames: usize, xvfb_pid: u32) -> Result<CostSummary> {
    const WARM: usize = 4;
    let screen = FullScreen::open()?;
    screen.show(1)?;
    let mut pipeline = Pipeline::new(codec, xvfb_pid)?;
    let mut costs = Vec::with_capacity(frames);
    let start = Instant::now();
    for i in 0..WARM + frames {
        sleep_until(start + frame_interval() * u32::try_from(i)?);
        screen.show(i)?;
        let cost = pipeline.frame()?;
        if i >= WARM {
            costs.push(cost);
        }
    }
    Ok(summarize(&costs))
}

// ------------------------------------------------------------------ the relay

struct Relay {
    base: String,
    admin_password: String,
    http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Relay {
    async fn start() -> Result<Relay> {
        let dir = tempfile::tempdir()?;
        let admin_password = format!("adm-{:016x}", rand::random::<u64>());
        let config = guruconnect_server::Config {
            data_dir: dir.path().join("data"),
            admin_password: Some(secrecy::SecretString::from(admin_password.clone())),
            signing_secret: None,
            database_url: None,
            ..guruconnect_server::Config::default()
        };
        let state = guruconnect_server::build_state(config).await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(guruconnect_server::serve_state(
            state,
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        Ok(Relay {
            base: format!("http://{addr}"),
            admin_password,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(WAIT)
                .build()?,
            shutdown: Some(tx),
            _dir: dir,
        })
    }

    async fn request(&self, token: Option<&str>, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = match &body {
            Some(b) => self.http.post(url).json(b),
            None => self.http.get(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {value}");
        }
        Ok(value)
    }

    async fn admin(&self) -> Result<String> {
        let body = json!({ "username": "admin", "password": self.admin_password });
        let v = self.request(None, "/api/auth/login", Some(body)).await?;
        v["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no token"))
    }

    async fn wait_session(&self, token: &str, status: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let sessions = self
                .request(Some(token), "/api/sessions?all=true", None)
                .await?;
            if let Some(s) = sessions
                .as_array()
                .and_then(|a| a.iter().find(|s| s["status"] == status))
            {
                return s["id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("no session id"));
            }
            if Instant::now() > deadline {
                bail!("no session reached {status}: {sessions}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn viewer(&self, token: &str, session_id: &str, codecs: &[Codec]) -> Result<Connection> {
        let minted = self
            .request(
                Some(token),
                &format!("/api/sessions/{session_id}/viewer-token"),
                Some(json!({})),
            )
            .await?;
        let viewer_token = minted["token"]
            .as_str()
            .ok_or_else(|| anyhow!("no viewer token"))?;
        let mut conn = connect_viewer(&self.base, session_id, viewer_token).await?;
        conn.send(Payload::ViewerHello(ViewerHello {
            protocol_version: guruconnect_proto::PROTOCOL_VERSION,
            codecs: codecs.iter().map(|c| *c as i32).collect(),
            ..Default::default()
        }))
        .await?;
        Ok(conn)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut pipe) = child.stdout.take() {
                pipe.read_to_string(&mut out)?;
            }
            if !status.success() {
                bail!("{cmd:?} failed: {status}");
            }
            return Ok(out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clicks "Allow" on the agent's consent prompt, as the person at the machine would.
fn click_allow() -> Result<()> {
    let found = run_with_timeout(
        Command::new("xdotool").args(["search", "--sync", "--onlyvisible", "--name", WINDOW_TITLE]),
        WAIT,
    )?;
    let window = found
        .lines()
        .next()
        .ok_or_else(|| anyhow!("no consent window"))?
        .trim()
        .to_owned();
    std::thread::sleep(Duration::from_millis(200));
    let (x, y) = center(ALLOW_BUTTON);
    run_with_timeout(
        Command::new("xdotool").args([
            "mousemove",
            "--window",
            &window,
            &x.to_string(),
            &y.to_string(),
            "click",
            "1",
        ]),
        WAIT,
    )?;
    Ok(())
}

// ------------------------------------------------------------------ 3. input latency

const KEY_WINDOW: (i16, i16, u16, u16) = (1600, 40, 240, 120);

/// An X client window that records when each KeyPress reaches it.
struct KeyRecorder {
    window: u32,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<u64>,
}

impl KeyRecorder {
    fn start() -> Result<Self> {
        let (conn, root) = x_connect()?;
        let window = create_window(&conn, root, KEY_WINDOW, 0x0033_66cc, EventMask::KEY_PRESS)?;
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("key-recorder".into())
            .spawn(move || {
                // Blocks in the X socket read: the arrival time is taken as soon as the
                // event is parsed.
                while let Ok(event) = conn.wait_for_event() {
                    if let Event::KeyPress(k) = event
                        && k.event == window
                        && tx.send(now_us()).is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Self { window, arrivals })
    }

    fn focus(&self) -> Result<()> {
        let (conn, _) = x_connect()?;
        conn.set_input_focus(InputFocus::POINTER_ROOT, self.window, x11rb::CURRENT_TIME)?;
        x_sync(&conn)
    }
}

fn key_event(down: bool) -> Payload {
    Payload::KeyEvent(KeyEvent {
        scancode: 0x1e, // A
        extended: false,
        down,
        modifiers: None,
        sent_timestamp_us: now_us(),
        ..KeyEvent::default()
    })
}

#[derive(Debug, Default)]
struct InputSummary {
    samples: usize,
    lost: usize,
    p50: f64,
    p99: f64,
    max: f64,
    frames_meanwhile: usize,
}

async fn input_bench(
    viewer: Connection,
    keys: &mut KeyRecorder,
    events: usize,
) -> Result<InputSummary> {
    const WARM: usize = 20;
    keys.focus()?;
    let (mut tx, mut rx) = viewer.split();
    // Keep the video flowing as in a real session (a static screen sends little).
    let frames = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = frames.clone();
    let drain = tokio::spawn(async move {
        while let Ok(env) = rx.recv().await {
            if matches!(env.payload, Some(Payload::VideoFrame(_))) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut latencies = Vec::with_capacity(events);
    let mut lost = 0;
    for i in 0..WARM + events {
        while keys.arrivals.try_recv().is_ok() {}
        let press = key_event(true);
        let Payload::KeyEvent(k) = &press else {
            unreachable!()
        };
        let sent = k.sent_timestamp_us;
        tx.send(press).await?;
        match tokio::time::timeout(Duration::from_secs(1), keys.arrivals.recv()).await {
            Ok(Some(at)) if i >= WARM => latencies.push(at.saturating_sub(sent) as f64 / 1e3),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the key recorder stopped"),
            Err(_) => lost += 1,
        }
        tx.send(key_event(false)).await?;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    drain.abort();
    let _ = tx.close().await;
    let sorted = sorted(latencies);
    Ok(InputSummary {
        samples: sorted.len(),
        lost,
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
        max: sorted.last().copied().unwrap_or(f64::NAN),
        frames_meanwhile: frames.load(Ordering::Relaxed),
    })
}

// ------------------------------------------------------------------ 4. glass-to-glass

/// The counter strip: 16 blocks of 24×24 (bit k of the counter, white = 1) above the same
/// 16 blocks complemented, so that a torn or smeared picture reads as invalid.
const COUNTER: (i16, i16, u16, u16) = (760, 880, 384, 48);
const BLOCK: usize = 24;
const BITS: usize = 16;

fn counter_pixels(n: u16) -> Vec<u8> {
    let (w, h) = (usize::from(COUNTER.2), usize::from(COUNTER.3));
    let mut out = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            let bit = (n >> (x / BLOCK)) & 1 == 1;
            let white = if y < BLOCK { bit } else { !bit };
            let v = if white { 0xff } else { 0 };
            out.extend_from_slice(&[v, v, v, 0]);
        }
    }
    out
}

fn read_counter(image: &Image) -> Option<u16> {
    let green = |x: usize, y: usize| -> Option<bool> {
        let i = (y * image.width as usize + x) * 4 + 1;
        image.data.get(i).map(|g| *g > 128)
    };
    let (x0, y0) = (COUNTER.0 as usize, COUNTER.1 as usize);
    let mut n = 0u16;
    for k in 0..BITS {
        let x = x0 + k * BLOCK + BLOCK / 2;
        let bit = green(x, y0 + BLOCK / 2)?;
        if bit == green(x, y0 + BLOCK + BLOCK / 2)? {
            return None;
        }
        n |= u16::from(bit) << k;
    }
    Some(n)
}

/// Drawing rate of the counter: 1 % under the agent's 30 fps, so that over a few seconds the
/// drawing sweeps every phase of the agent's capture clock (a drawer locked to the same
/// 30 fps clock would measure one arbitrary, fixed phase).
const DRAW_FPS: f64 = 29.7;

/// Redraws the counter at [`DRAW_FPS`] (one `PutImage`, atomic for the capturer) and
/// records when each value was sent to the X server.
struct CounterDrawer {
    stop: Arc<AtomicBool>,
    drawn: Arc<Mutex<HashMap<u16, u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CounterDrawer {
    fn start() -> Result<Self> {
        let (conn, root) = x_connect()?;
        let window = create_window(&conn, root, COUNTER, 0, EventMask::NO_EVENT)?;
        let gc = conn.generate_id()?;
        conn.create_gc(gc, window, &CreateGCAux::new())?;
        let stop = Arc::new(AtomicBool::new(false));
        let drawn = Arc::new(Mutex::new(HashMap::new()));
        let (s, d) = (stop.clone(), drawn.clone());
        let thread = std::thread::Builder::new()
            .name("counter".into())
            .spawn(move || {
                let start = Instant::now();
                let mut n: u16 = 0;
                while !s.load(Ordering::Relaxed) {
                    n = n.wrapping_add(1);
                    sleep_until(start + Duration::from_secs_f64(f64::from(n) / DRAW_FPS));
                    let pixels = counter_pixels(n);
                    if let Ok(mut map) = d.lock() {
                        map.insert(n, now_us());
                    }
                    let drew = put_image(&conn, window, gc, COUNTER.2, COUNTER.3, &pixels)
                        .and_then(|()| x_sync(&conn));
                    if let Err(e) = drew {
                        eprintln!("agent_bench: counter drawing failed: {e:#}");
                        return;
                    }
                }
                let _ = conn.destroy_window(window);
                let _ = x_sync(&conn);
            })?;
        Ok(Self {
            stop,
            drawn,
            thread: Some(thread),
        })
    }

    fn drawn_at(&self, n: u16) -> Option<u64> {
        self.drawn.lock().ok()?.get(&n).copied()
    }
}

impl Drop for CounterDrawer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Default)]
struct G2gSummary {
    frames: usize,
    seconds: f64,
    bytes: usize,
    draw_p50: f64,
    draw_p95: f64,
    draw_samples: usize,
    capture_p50: f64,
    capture_p95: f64,
    decode_mean: f64,
    skipped_values: usize,
    wrong_codec: usize,
}

async fn g2g_bench(
    relay: &Relay,
    admin: &str,
    session_id: &str,
    offered: &[Codec],
    expect: Codec,
    seconds: u64,
) -> Result<G2gSummary> {
    let drawer = CounterDrawer::start()?;
    let mut viewer = relay.viewer(admin, session_id, offered).await?;
    let mut decoder = Decoder::new();
    let warm_until = Instant::now() + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(seconds);
    let mut s = G2gSummary::default();
    let (mut draw, mut capture, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    let mut keyframe_seen = false;
    let mut last_seen: Option<u16> = None;
    let (mut first_counted, mut last_counted) = (None, 0u16);
    let mut seen = 0usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let envelope = match tokio::time::timeout(end - now, viewer.recv()).await {
            Err(_) => break,
            Ok(r) => r?,
        };
        let Some(Payload::VideoFrame(frame)) = envelope.payload else {
            continue;
        };
        if frame.codec != expect as i32 {
            s.wrong_codec += 1;
            continue;
        }
        keyframe_seen |= frame.keyframe;
        if !keyframe_seen {
            continue;
        }
        let d0 = Instant::now();
        let image = decoder.decode(&frame).map_err(|e| anyhow!("decode: {e}"))?;
        let decoded_at = now_us();
        let counted = Instant::now() >= warm_until;
        if counted {
            decode.push(d0.elapsed().as_secs_f64() * 1e3);
            s.frames += 1;
            s.bytes += Envelope::new(Payload::VideoFrame(frame.clone()))
                .to_bytes()
                .len();
            capture.push(decoded_at.saturating_sub(frame.capture_timestamp_us) as f64 / 1e3);
        }
        if let Some(n) = read_counter(image)
            && last_seen.is_none_or(|l| n > l)
        {
            last_seen = Some(n);
            if counted {
                if let Some(at) = drawer.drawn_at(n) {
                    draw.push(decoded_at.saturating_sub(at) as f64 / 1e3);
                }
                first_counted.get_or_insert(n);
                last_counted = n;
                seen += 1;
            }
        }
    }
    let _ = viewer.close().await;
    drop(drawer);
    s.seconds = seconds as f64;
    s.skipped_values = first_counted
        .map_or(0, |f| usize::from(last_counted - f) + 1)
        .saturating_sub(seen);
    let (draw, capture) = (sorted(draw), sorted(capture));
    s.draw_samples = draw.len();
    s.draw_p50 = percentile(&draw, 50.0);
    s.draw_p95 = percentile(&draw, 95.0);
    s.capture_p50 = percentile(&capture, 50.0);
    s.capture_p95 = percentile(&capture, 95.0);
    s.decode_mean = mean(&decode);
    Ok(s)
}

// ------------------------------------------------------------------ the session scenarios

async fn session_benches(
    args: &Args,
    codecs: &[Codec],
) -> Result<(InputSummary, Vec<(Codec, G2gSummary)>)> {
    let relay = Relay::start().await?;
    let admin = relay.admin().await?;
    let code = relay
        .request(Some(&admin), "/api/codes", Some(json!({})))
        .await?["code"]
        .as_str()
        .ok_or_else(|| anyhow!("no support code"))?
        .to_owned();
    let mut keys = KeyRecorder::start()?;
    let base = relay.base.clone();
    // The agent's support session, on its own runtime as in `guruconnect-agent`.
    std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build();
            let outcome = match runtime {
                Ok(rt) => rt.block_on(async {
                    match session::connect(&base, &code).await {
                        Ok(conn) => format!("{:?}", session::run(conn, true).await),
                        Err(e) => e.to_string(),
                    }
                }),
                Err(e) => e.to_string(),
            };
            eprintln!("agent_bench: the agent session ended: {outcome}");
        })?;
    tokio::task::spawn_blocking(click_allow).await??;
    let session_id = relay.wait_session(&admin, "active").await?;

    eprintln!(
        "agent_bench: input latency ({} key presses)",
        args.input_events
    );
    let viewer = relay.viewer(&admin, &session_id, &[Codec::RawZstd]).await?;
    let input = input_bench(viewer, &mut keys, args.input_events).await?;

    let mut g2g = Vec::new();
    for &codec in codecs {
        eprintln!(
            "agent_bench: glass-to-glass {codec:?} ({} s)",
            args.g2g_seconds
        );
        let offered: &[Codec] = if codec == Codec::H264 {
            &[Codec::RawZstd, Codec::H264]
        } else {
            &[Codec::RawZstd]
        };
        let summary = g2g_bench(
            &relay,
            &admin,
            &session_id,
            offered,
            codec,
            args.g2g_seconds,
        )
        .await?;
        g2g.push((codec, summary));
    }
    Ok((input, g2g))
}

// ------------------------------------------------------------------ report

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    format!("nproc {nproc}, {cpu}, MemTotal {mem}")
}

fn codec_name(codec: Codec) -> &'static str {
    if codec == Codec::H264 {
        "H.264"
    } else {
        "lossless"
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn child_main(args: &Args, xvfb_pid: u32) -> Result<ExitCode> {
    let mut codecs = vec![Codec::RawZstd];
    if guruconnect_agent::encoding::h264_available() {
        codecs.push(Codec::H264);
    } else {
        eprintln!("agent_bench: H.264 is unavailable in this build; lossless only");
    }

    let mut typing = Vec::new();
    let mut full = Vec::new();
    let (dirty_ms, yuv_ms) = encoder_steps()?;
    for &codec in &codecs {
        eprintln!(
            "agent_bench: typing, {codec:?} ({} frames at 30 fps)",
            args.typing_frames
        );
        typing.push((codec, typing_bench(codec, args.typing_frames, xvfb_pid)?));
    }
    for &codec in &codecs {
        eprintln!(
            "agent_bench: full-screen change, {codec:?} ({} frames)",
            args.full_frames
        );
        full.push((codec, full_bench(codec, args.full_frames, xvfb_pid)?));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (input, g2g) = runtime.block_on(session_benches(args, &codecs))?;

    let mut out = String::new();
    let mut row = |cells: [&str; 5]| {
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    };
    println!(
        "Machine: {}; screen {SCREEN_W}x{SCREEN_H}x24 (Xvfb)",
        machine()
    );
    if let Some((_, (_, font))) = typing.first() {
        println!("Typing scene: {font}, one character per frame at {FPS} fps");
    }
    println!();
    row(["Scenario", "Figure", "Value", "Target", "Result"]);
    row(["---", "---", "---", "---", "---"]);
    for (codec, (s, _)) in &typing {
        let name = codec_name(*codec);
        let kbps = s.bytes_per_frame * f64::from(FPS) / 1e3;
        row([
            &format!("typing, {name}"),
            "agent CPU per frame, capture + dirty detection + encode (mean / p95; capture share)",
            &format!(
                "{:.2} / {:.2} ms ({:.2})",
                s.cpu_mean, s.cpu_p95, s.capture_cpu_mean
            ),
            "≤ 3 ms",
            met(s.cpu_mean <= 3.0),
        ]);
        row([
            &format!("typing, {name}"),
            "wall per frame (mean / p95; capture + encode means)",
            &format!(
                "{:.2} / {:.2} ms ({:.2} + {:.2})",
                s.wall_mean, s.wall_p95, s.capture_mean, s.encode_mean
            ),
            "",
            "",
        ]);
        row([
            &format!("typing, {name}"),
            "Xvfb CPU per frame (its side of the capture)",
            &format!("{:.2} ms", s.xserver_mean),
            "",
            "",
        ]);
        row([
            &format!("typing, {name}"),
            "bytes per second at 30 fps (wire envelopes)",
            &format!(
                "{kbps:.1} KB/s ({:.0} B/frame, {} of {} frames sent)",
                s.bytes_per_frame, s.sent_frames, s.frames
            ),
            "≤ 50 KB/s",
            met(kbps <= 50.0),
        ]);
    }
    row([
        "typing, steps",
        "dirty-tile comparison of two 1920×1080 captures / openh264 BGRA → YUV conversion (CPU)",
        &format!("{dirty_ms:.2} / {yuv_ms:.2} ms"),
        "",
        "",
    ]);
    for (codec, s) in &full {
        let name = codec_name(*codec);
        let target = if *codec == Codec::H264 { 16.0 } else { 25.0 };
        row([
            &format!("full change, {name}"),
            "capture + encode per frame, wall (mean / p95; capture + encode means)",
            &format!(
                "{:.1} / {:.1} ms ({:.1} + {:.1})",
                s.wall_mean, s.wall_p95, s.capture_mean, s.encode_mean
            ),
            &format!("≤ {target} ms"),
            met(s.wall_mean <= target),
        ]);
        row([
            &format!("full change, {name}"),
            "agent CPU (capture share) / Xvfb CPU per frame (means)",
            &format!(
                "{:.1} ({:.1}) / {:.1} ms",
                s.cpu_mean, s.capture_cpu_mean, s.xserver_mean
            ),
            "",
            "",
        ]);
        row([
            &format!("full change, {name}"),
            "bytes per frame (mean / max)",
            &format!(
                "{:.0} KB / {:.0} KB",
                s.bytes_per_frame / 1e3,
                s.max_bytes as f64 / 1e3
            ),
            "",
            if s.max_bytes > guruconnect_proto::MAX_AGENT_MESSAGE - 4096 {
                "over the relay's 4 MiB cap"
            } else {
                ""
            },
        ]);
    }
    row([
        "input",
        "viewer send → KeyPress in an X client (p50 / p99 / max)",
        &format!(
            "{:.2} / {:.2} / {:.2} ms ({} presses, {} lost)",
            input.p50, input.p99, input.max, input.samples, input.lost
        ),
        "p99 ≤ 5 ms",
        met(input.p99 <= 5.0 && input.lost == 0),
    ]);
    for (codec, s) in &g2g {
        let name = codec_name(*codec);
        row([
            &format!("glass-to-glass, {name}"),
            "capture → viewer decoded (p50 / p95)",
            &format!("{:.1} / {:.1} ms", s.capture_p50, s.capture_p95),
            "p95 ≤ 30 ms",
            met(s.capture_p95 <= 30.0),
        ]);
        row([
            &format!("glass-to-glass, {name}"),
            "counter drawn → viewer decoded (p50 / p95)",
            &format!(
                "{:.1} / {:.1} ms ({} values, {} skipped)",
                s.draw_p50, s.draw_p95, s.draw_samples, s.skipped_values
            ),
            "p95 ≤ 30 ms",
            met(s.draw_p95 <= 30.0),
        ]);
        row([
            &format!("glass-to-glass, {name}"),
            "frames, decode, bandwidth",
            &format!(
                "{:.1} fps, decode {:.2} ms/frame, {:.1} KB/s{}",
                s.frames as f64 / s.seconds,
                s.decode_mean,
                s.bytes as f64 / s.seconds / 1e3,
                if s.wrong_codec > 0 {
                    format!(", {} frames in another codec", s.wrong_codec)
                } else {
                    String::new()
                }
            ),
            "",
            "",
        ]);
    }
    print!("{out}");
    println!(
        "\nInput: {} video frames reached the control viewer during the key test.",
        input.frames_meanwhile
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}
