//! `guruconnect-viewer`: joins a session with a viewer token and runs headless: decodes
//! frames, prints live statistics, sends scripted input, and saves the picture as PNG; or,
//! with `--upload` / `--download`, moves one file (or a folder, as a tar) to or from the
//! machine without a picture.
//! (A windowed native viewer is a later milestone.)

#![forbid(unsafe_code)]

mod script;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use guruconnect_client::{ClientError, connect_viewer, connect_viewer_with, files};
use guruconnect_codec::{Decoder, Image};
use guruconnect_proto::{self as proto, Codec, Payload};

/// Headless GuruConnect viewer.
#[derive(Parser, Debug)]
#[command(version = guruconnect_release::VERSION_LINE, about)]
struct Cli {
    /// Server base URL, e.g. http://127.0.0.1:3002.
    #[arg(
        long,
        env = "GURUCONNECT_SERVER",
        default_value = "http://127.0.0.1:3002"
    )]
    server: String,
    /// Session to join.
    #[arg(long)]
    session: String,
    /// Viewer token (from POST /api/sessions/:id/viewer-token).
    #[arg(long, env = "GURUCONNECT_VIEWER_TOKEN")]
    token: Option<String>,
    /// Sign in as this user to mint the viewer token instead.
    #[arg(long)]
    user: Option<String>,
    /// Password for --user.
    #[arg(long, env = "GURUCONNECT_PASSWORD")]
    password: Option<String>,
    /// Codecs to advertise: raw, h264 (comma-separated).
    #[arg(long, default_value = "raw,h264", value_delimiter = ',')]
    codecs: Vec<String>,
    /// Save the current picture here on exit.
    #[arg(long)]
    save_png: Option<PathBuf>,
    /// Exit after the first keyframe has been decoded.
    #[arg(long)]
    until_keyframe: bool,
    /// Exit after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Input script to send once the session is active (see `script` syntax).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Print statistics every second.
    #[arg(long)]
    stats: bool,
    /// Ask for lossless tiles while the link carries them (H.264 stays a fallback the agent
    /// may switch to on a slow link).
    #[arg(long)]
    prefer_lossless: bool,
    /// Do not acknowledge frames (the agent then cannot measure the link; benchmarks).
    #[arg(long)]
    no_acks: bool,
    /// Upload this local file to the machine (into --to), then exit.
    #[arg(long, requires = "to", conflicts_with = "download")]
    upload: Option<PathBuf>,
    /// The machine's folder an upload goes into (an absolute path that exists).
    #[arg(long)]
    to: Option<String>,
    /// Replace a file of the same name on the machine.
    #[arg(long)]
    overwrite: bool,
    /// Download this file or folder (absolute path on the machine), then exit.
    #[arg(long, requires = "output")]
    download: Option<String>,
    /// Where the download is written (a folder arrives as a tar).
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("guruconnect-viewer: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guruconnect-viewer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn mint_token(cli: &Cli) -> anyhow::Result<String> {
    if let Some(token) = &cli.token {
        return Ok(token.clone());
    }
    let (Some(user), Some(password)) = (&cli.user, &cli.password) else {
        anyhow::bail!("give --token, or --user and --password to mint one");
    };
    let http = reqwest::Client::new();
    let base = cli.server.trim_end_matches('/');
    let login = http
        .post(format!("{base}/api/auth/login"))
        .json(&serde_json::json!({ "username": user, "password": password }))
        .send()
        .await
        .context("cannot reach the server")?;
    if !login.status().is_success() {
        anyhow::bail!("sign-in failed: HTTP {}", login.status());
    }
    let body: serde_json::Value = login.json().await?;
    let login_token = body["token"]
        .as_str()
        .context("no token in the sign-in response")?;
    let minted = http
        .post(format!("{base}/api/sessions/{}/viewer-token", cli.session))
        .bearer_auth(login_token)
        .send()
        .await?;
    if !minted.status().is_success() {
        let status = minted.status();
        let detail = minted
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned));
        anyhow::bail!(
            "viewer token refused: HTTP {status}: {}",
            detail.unwrap_or_default()
        );
    }
    let body: serde_json::Value = minted.json().await?;
    body["token"]
        .as_str()
        .map(str::to_owned)
        .context("no token in the response")
}

/// The server's refusal of a viewer, with the error envelope's detail.
fn refusal(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Rejected { status, body } => {
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_owned))
                .unwrap_or(body);
            anyhow::anyhow!("the server refused the viewer (HTTP {status}): {detail}")
        }
        e => anyhow::Error::new(e).context("cannot connect to the server"),
    }
}

/// `--upload` / `--download`: one transfer over a viewer without a picture.
async fn transfer(cli: &Cli, token: &str) -> anyhow::Result<()> {
    let mut conn = connect_viewer_with(&cli.server, &cli.session, token, false)
        .await
        .map_err(refusal)?;
    let started = Instant::now();
    let mut last = Instant::now();
    let mut progress = |bytes: u64| {
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!("{:.1} MB", bytes as f64 / 1e6);
        }
    };
    let result = if let (Some(local), Some(to)) = (&cli.upload, &cli.to) {
        let mut file = std::fs::File::open(local)
            .with_context(|| format!("cannot open {}", local.display()))?;
        let size = file.metadata()?.len();
        let name = local
            .file_name()
            .context("the file to upload has no name")?
            .to_string_lossy()
            .into_owned();
        let what = files::Upload {
            directory: to,
            name: &name,
            size,
            overwrite: cli.overwrite,
            // A cut-off upload of this name goes on where it stopped (the hash at the end
            // still covers the whole file).
            resume: true,
        };
        let (result, from) = files::upload(&mut conn, 1, &what, &mut file, &mut progress).await?;
        if from > 0 {
            eprintln!("resumed a cut-off upload at {:.1} MB", from as f64 / 1e6);
        }
        result
    } else if let (Some(remote), Some(output)) = (&cli.download, &cli.output) {
        // Written beside the target and moved into place only when the hash matched.
        let partial = output.with_extension("part");
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?,
        );
        let outcome = files::download(&mut conn, 1, remote, &mut file, &mut progress).await;
        drop(file);
        match outcome {
            Ok((_, result)) if result.ok => {
                std::fs::rename(&partial, output)?;
                result
            }
            other => {
                let _ = std::fs::remove_file(&partial);
                other?.1
            }
        }
    } else {
        anyhow::bail!("give --upload FILE --to FOLDER, or --download PATH --output FILE");
    };
    let _ = conn.close().await;
    if !result.ok {
        anyhow::bail!("the transfer failed: {}", result.error);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} {} bytes in {secs:.2} s ({:.1} MB/s), SHA-256 {}",
        result.path,
        result.bytes,
        result.bytes as f64 / 1e6 / secs.max(1e-9),
        result.sha256
    );
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Per-second and overall statistics.
#[derive(Debug, Default)]
struct Stats {
    frames: u64,
    bytes: u64,
    window_frames: u64,
    window_bytes: u64,
    latencies_us: Vec<u64>,
    /// This second's picture ages (the per-second line's percentiles).
    window_latencies_us: Vec<u64>,
}

impl Stats {
    fn record(&mut self, bytes: usize, capture_us: u64) {
        self.frames += 1;
        self.window_frames += 1;
        self.bytes += bytes as u64;
        self.window_bytes += bytes as u64;
        if capture_us > 0 {
            let age = now_us().saturating_sub(capture_us);
            self.latencies_us.push(age);
            self.window_latencies_us.push(age);
        }
    }

    /// The `p` percentile of `samples` in ms (0 without samples).
    fn percentile(samples: &[u64], p: f64) -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[idx] as f64 / 1000.0
    }

    fn print_window(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-6);
        println!(
            "fps={:.1} bandwidth={:.1} KB/s latency_p50={:.1} ms latency_p95={:.1} ms frames={}",
            self.window_frames as f64 / secs,
            self.window_bytes as f64 / 1024.0 / secs,
            Self::percentile(&self.window_latencies_us, 0.5),
            Self::percentile(&self.window_latencies_us, 0.95),
            self.frames
        );
        self.window_frames = 0;
        self.window_bytes = 0;
        self.window_latencies_us.clear();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let actions = match &cli.script {
        Some(path) => script::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        )?,
        None => Vec::new(),
    };
    let token = mint_token(&cli).await?;
    if cli.upload.is_some() || cli.download.is_some() {
        return transfer(&cli, &token).await;
    }
    let conn = connect_viewer(&cli.server, &cli.session, &token)
        .await
        .map_err(refusal)?;
    let (mut tx, mut rx) = conn.split();
    let codecs: Vec<i32> = cli
        .codecs
        .iter()
        .filter_map(|c| match c.trim() {
            "raw" | "raw_zstd" | "lossless" => Some(Codec::RawZstd as i32),
            "h264" => Some(Codec::H264 as i32),
            _ => None,
        })
        .collect();
    tx.send(Payload::ViewerHello(proto::ViewerHello {
        protocol_version: proto::PROTOCOL_VERSION,
        codecs,
        prefer_lossless: cli.prefer_lossless,
    }))
    .await?;
    // One writer owns the socket: frame acknowledgements and the script share it.
    let (out, mut queued) = tokio::sync::mpsc::channel::<Payload>(256);
    let writer = tokio::spawn(async move {
        while let Some(payload) = queued.recv().await {
            tx.send(payload).await?;
        }
        anyhow::Ok(())
    });

    let started = Instant::now();
    let deadline = cli.duration.map(|s| started + Duration::from_secs_f64(s));
    let mut decoder = Decoder::new();
    let mut stats = Stats::default();
    let mut window = Instant::now();
    let mut keyframe_seen = false;
    let mut script_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    let mut pending_script = Some((out.clone(), actions));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let outcome: anyhow::Result<()> = loop {
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = until => break Ok(()),
            _ = ticker.tick(), if cli.stats => {
                stats.print_window(window.elapsed());
                window = Instant::now();
            }
            msg = rx.recv() => {
                let envelope = match msg {
                    Ok(envelope) => envelope,
                    Err(ClientError::Closed { code, reason }) => {
                        println!("session closed ({code}): {reason}");
                        break Ok(());
                    }
                    Err(e) => break Err(e.into()),
                };
                match envelope.payload {
                    Some(Payload::VideoFrame(frame)) => {
                        let size = frame.data.len();
                        let capture = frame.capture_timestamp_us;
                        let keyframe = frame.keyframe;
                        let sequence = frame.sequence;
                        if let Err(e) = decoder.decode(&frame) {
                            eprintln!("dropping an undecodable frame: {e}");
                            continue;
                        }
                        if !cli.no_acks {
                            // Never waits: a full queue means the socket is behind anyway.
                            let _ = out.try_send(Payload::FrameAck(proto::FrameAck { sequence }));
                        }
                        stats.record(size, capture);
                        keyframe_seen |= keyframe;
                        if keyframe_seen && cli.until_keyframe {
                            break Ok(());
                        }
                    }
                    Some(Payload::SessionState(state)) => {
                        println!("session {} phase={} access={}", state.session_id, state.phase, state.access_mode);
                        if state.phase == proto::SessionPhase::Active as i32
                            && let Some((tx, actions)) = pending_script.take()
                        {
                            script_task = Some(tokio::spawn(run_script(tx, actions)));
                        }
                    }
                    Some(Payload::Chat(chat)) => println!("chat from {}: {}", chat.from, chat.text),
                    Some(Payload::StreamMode(mode)) if cli.stats => println!("mode: {}", describe_mode(&mode)),
                    Some(Payload::SessionEnd(end)) => {
                        println!("session ended: {}", end.reason);
                        break Ok(());
                    }
                    _ => {}
                }
            }
        }
    };
    if let Some(task) = script_task {
        task.await??;
    }
    drop(pending_script);
    drop(out);
    if writer.is_finished() {
        writer.await??;
    } else {
        writer.abort();
    }
    if let Some(path) = &cli.save_png {
        save_png(decoder.image(), path)?;
        println!("saved {}", path.display());
    }
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    println!(
        "total: frames={} fps={:.1} bandwidth={:.1} KB/s latency_p50={:.1} ms latency_p95={:.1} ms",
        stats.frames,
        stats.frames as f64 / secs,
        stats.bytes as f64 / 1024.0 / secs,
        Stats::percentile(&stats.latencies_us, 0.5),
        Stats::percentile(&stats.latencies_us, 0.95)
    );
    outcome
}

/// The stream mode in one line, as the browser viewer shows it.
fn describe_mode(mode: &proto::StreamMode) -> String {
    let codec = match Codec::try_from(mode.codec) {
        Ok(Codec::H264) => "H.264",
        _ => "lossless",
    };
    let mut text = format!(
        "{codec} {} fps, {}",
        mode.fps,
        if mode.adaptive { "adaptive" } else { "fixed" }
    );
    if mode.bitrate_kbps > 0 {
        text += &format!(", capped at {} kbit/s", mode.bitrate_kbps);
    }
    if mode.bandwidth_kbps > 0 {
        text += &format!(", link {} kbit/s", mode.bandwidth_kbps);
    }
    if mode.rtt_ms > 0 {
        text += &format!(", rtt {} ms", mode.rtt_ms);
    }
    format!("{text} ({})", mode.reason)
}

async fn run_script(
    tx: tokio::sync::mpsc::Sender<Payload>,
    actions: Vec<script::Action>,
) -> anyhow::Result<()> {
    for action in actions {
        match action {
            script::Action::Sleep(d) => tokio::time::sleep(d).await,
            script::Action::Send(payloads) => {
                for payload in payloads {
                    tx.send(payload)
                        .await
                        .map_err(|_| anyhow::anyhow!("the connection closed"))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes a BGRA image as an RGBA PNG.
fn save_png(image: &Image, path: &std::path::Path) -> anyhow::Result<()> {
    if image.width == 0 || image.height == 0 {
        anyhow::bail!("no picture was received, nothing to save");
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), image.width, image.height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut rgba = image.data.clone();
    for px in rgba.chunks_exact_mut(4) {
        px.swap(0, 2);
        px[3] = 255;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgba)?;
    Ok(())
}
