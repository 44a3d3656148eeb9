//! Capture + encode cost per frame on the desktop the agent runs on, through the agent's own
//! platform seam (`platform::native()`): GDI under Wine for the Windows build, MIT-SHM on
//! X11 for the Linux build. Used for the Wine figures in `docs/benchmarks.md`.
//!
//! For each frame: capture the primary display (timed), then apply a synthetic change to
//! the captured picture (not timed) and encode it in both codecs (timed separately, each
//! with its own encoder, as a session would). Two scenarios:
//! - **typing**: a 320×24 strip changes per frame (a line of text being typed);
//! - **full**: the whole picture changes per frame (a window drag, a video).
//!
//! Clocks: wall time per frame (p50, p95), and this thread's CPU time per stage as the
//! total over the run divided by the frames (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)` on
//! Linux; `GetThreadTimes` on Windows, which Wine serves from the kernel's tick-based
//! counters, 10 ms steps, so only a total over many frames means anything there).
//! Capture time includes the copy out of the desktop into the agent's `Image` (GDI
//! `BitBlt` + `GetDIBits`); under Wine the X server's own share is not counted.
//!
//! ```sh
//! # Windows build under Wine (see scripts/windows/bench.sh):
//! xvfb-run -a -s "-screen 0 1920x1080x24" wine capture_bench.exe --frames 60
//! # Linux build:
//! xvfb-run -a -s "-screen 0 1920x1080x24" cargo run --release -p guruconnect-agent --example capture_bench
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![cfg_attr(windows, allow(unsafe_code))]

use std::time::{Duration, Instant};

use guruconnect_codec::{Encoder, Image};
use guruconnect_proto::Codec;

/// This thread's CPU time.
#[cfg(windows)]
fn thread_cpu() -> Duration {
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{GetCurrentThread, GetThreadTimes};
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: the pseudo-handle of the current thread is always valid; the four pointers
    // are to live, writable FILETIMEs.
    let ok = unsafe {
        GetThreadTimes(
            GetCurrentThread(),
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    };
    assert!(ok != 0, "GetThreadTimes failed");
    let ticks = |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
    // FILETIME counts 100 ns.
    Duration::from_nanos((ticks(kernel) + ticks(user)) * 100)
}

/// This thread's CPU time.
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.unsigned_abs(),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let out = f();
    (out, wall.elapsed(), thread_cpu().saturating_sub(cpu))
}

#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len().max(1) as f64
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i]
    }
}

/// Changes the picture as the scenario says; `n` is the frame number.
fn mutate(image: &mut Image, scenario: &str, n: usize) {
    let w = image.width as usize;
    match scenario {
        "typing" => {
            // A strip of "text" grows by one glyph cell per frame.
            let (x0, y0) = (200 + (n % 40) * 8, 300);
            for y in y0..y0 + 24 {
                for x in x0..(x0 + 8).min(w) {
                    let i = (y * w + x) * 4;
                    if let Some(px) = image.data.get_mut(i..i + 4) {
                        let on = (x + y + n).is_multiple_of(3);
                        px.copy_from_slice(if on {
                            &[0, 0, 0, 255]
                        } else {
                            &[255, 255, 255, 255]
                        });
                    }
                }
            }
        }
        _ => {
            // Every pixel changes: a moving gradient with texture.
            for (i, px) in image.data.chunks_exact_mut(4).enumerate() {
                let (x, y) = (i % w, i / w);
                px[0] = (x + n * 7) as u8;
                px[1] = (y + n * 3) as u8;
                px[2] = ((x ^ y) + n) as u8;
                px[3] = 255;
            }
        }
    }
}

fn main() {
    let frames: usize = std::env::args()
        .skip_while(|a| a != "--frames")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let desktop = guruconnect_agent::platform::native();
    let mut capturer = desktop.capturer().expect("open capture");
    let displays = capturer.displays();
    let display = displays
        .iter()
        .find(|d| d.primary)
        .or(displays.first())
        .cloned()
        .expect("a display");
    let identity = desktop.identity();
    println!(
        "capture_bench: {} ({}), backend {}, display {}x{}, {frames} frames per scenario",
        identity.os,
        identity.os_version,
        capturer.backend(),
        display.width,
        display.height
    );
    for _ in 0..5 {
        capturer.capture(&display).expect("warm-up capture");
    }
    println!(
        "{:<8} {:<14} {:>9} {:>9} {:>9} {:>10}",
        "scenario", "stage", "wall p50", "wall p95", "cpu mean", "bytes/frm"
    );
    for scenario in ["typing", "full"] {
        let mut lossless = Encoder::new(Codec::RawZstd);
        let mut h264 = Encoder::new(Codec::H264);
        let h264_ok = h264.codec() == Codec::H264;
        let (mut cap_wall, mut cap_cpu) = (Series::default(), Series::default());
        let (mut ll_wall, mut ll_cpu, mut ll_bytes) =
            (Series::default(), Series::default(), 0usize);
        let (mut hw_wall, mut hw_cpu, mut hw_bytes) =
            (Series::default(), Series::default(), 0usize);
        // The first frame of each encoder is a keyframe; it is not counted.
        for n in 0..=frames {
            let (image, wall, cpu) = timed(|| capturer.capture(&display).expect("capture"));
            let mut image = image;
            mutate(&mut image, scenario, n);
            let (ll, llw, llc) = timed(|| lossless.encode(&image, false));
            let (hf, hww, hwc) = timed(|| {
                if h264_ok {
                    h264.encode(&image, false)
                } else {
                    None
                }
            });
            if n == 0 {
                continue;
            }
            cap_wall.push(wall);
            cap_cpu.push(cpu);
            ll_wall.push(llw);
            ll_cpu.push(llc);
            ll_bytes += ll.map_or(0, |f| f.data.len());
            hw_wall.push(hww);
            hw_cpu.push(hwc);
            hw_bytes += hf.map_or(0, |f| f.data.len());
        }
        let row = |stage: &str, wall: &Series, cpu: &Series, bytes: Option<usize>| {
            println!(
                "{scenario:<8} {stage:<14} {:>9.2} {:>9.2} {:>9.2} {:>10}",
                wall.pct(0.5),
                wall.pct(0.95),
                cpu.mean(),
                bytes.map_or("-".to_owned(), |b| (b / frames).to_string())
            );
        };
        row("capture", &cap_wall, &cap_cpu, None);
        row("lossless", &ll_wall, &ll_cpu, Some(ll_bytes));
        if h264_ok {
            row("h264", &hw_wall, &hw_cpu, Some(hw_bytes));
        } else {
            println!("{scenario:<8} h264           unavailable in this build");
        }
    }
    println!("(milliseconds; cpu mean = this thread's CPU time over the run / frames)");
}
