//! The four scenarios: throughput, latency, fan-out with a slow viewer, idle memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use guruconnect_client::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};

use crate::peers::{Agent, Api, Viewer, as_video, hello, now_us, payload, video_frame};
use crate::report::{Row, summarize};
use crate::target::{Target, open_files_limit, rss_kib, server_cpu_secs};

pub(crate) const MIB: usize = 1024 * 1024;

pub(crate) fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e6
}

// ---------------------------------------------------------------------------------------
// throughput

/// What a counting viewer saw.
#[derive(Default)]
pub(crate) struct Count {
    pub(crate) frames: u64,
    pub(crate) bytes: u64,
    pub(crate) last: Duration,
}

pub(crate) async fn count_frames(mut viewer: Viewer, start: Instant) -> Result<Count> {
    let mut count = Count::default();
    while let Ok(Ok(bytes)) = timeout(Duration::from_secs(1), viewer.rx.recv_raw()).await {
        let len = bytes.len() as u64;
        if as_video(bytes).is_some() {
            count.frames += 1;
            count.bytes += len;
            count.last = start.elapsed();
        }
    }
    Ok(count)
}

/// 1 agent → 1 viewer, 1 MiB keyframes, pre-encoded, sent back to back for 5 s.
pub async fn throughput(target: &Target) -> Result<Vec<Row>> {
    const RUN: Duration = Duration::from_secs(5);
    let api = Api::login(&target.base, &target.admin_password).await?;
    let mut agent = Agent::connect(&api, &target.base).await?;
    let viewer = Viewer::join(&api, &target.base, &agent.session_id).await?;
    agent.wait_streaming().await?;
    let frame = video_frame(&payload(MIB), 1, 0, true);
    let frame_len = frame.len() as u64;

    let cpu_before = server_cpu_secs(target);
    let start = Instant::now();
    let counter = tokio::spawn(count_frames(viewer, start));
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        agent.tx.send_raw(frame.clone()).await?;
        sent += 1;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let got = counter.await??;
    // Read before the agent closes; includes the viewer's last second of waiting (idle).
    let cpu = server_cpu_secs(target)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    agent.close().await;
    let secs = got.last.as_secs_f64();

    let base = pipe_throughput(RUN, MIB).await?;
    let dropped = sent.saturating_sub(got.frames);
    Ok(vec![
        Row::info(
            "Frame size",
            format!("{frame_len} B envelope (1 MiB payload)"),
        ),
        Row::info(
            "Received by the viewer",
            format!(
                "**{:.0} MB/s** ({:.0} frames/s)",
                mb_per_s(got.bytes, secs),
                got.frames as f64 / secs
            ),
        ),
        Row::info(
            "Sent by the agent",
            format!(
                "{:.0} MB/s ({:.0} frames/s)",
                mb_per_s(sent * frame_len, send_secs),
                sent as f64 / send_secs
            ),
        ),
        Row::info(
            "Relay CPU per GB received by the viewer",
            match cpu {
                Some(cpu) => format!(
                    "{:.2} core-s/GB ({cpu:.2} core-s over the run)",
                    cpu / (got.bytes as f64 / 1e9).max(1e-9)
                ),
                None => "n/a (external server without --server-pid)".to_owned(),
            },
        ),
        Row::info(
            "Frames the relay dropped (viewer queue full)",
            format!(
                "{dropped} of {sent} ({:.1} %)",
                100.0 * dropped as f64 / sent.max(1) as f64
            ),
        ),
        Row::info(
            "Baseline: same frames through a plain tokio::io::copy TCP forwarder",
            format!("{:.0} MB/s ({:.0} frames/s)", base.0, base.1),
        ),
    ])
}

// ---------------------------------------------------------------------------------------
// baseline: a plain TCP forwarder (one extra hop, no WebSocket, no protocol)

/// Sender and receiver ends of a two-hop TCP pipe through a `tokio::io::copy` task.
/// The client ends always disable Nagle (as the protocol client does); `relay_nodelay`
/// decides it for the forwarder's accepted sockets.
async fn pipe(relay_nodelay: bool) -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let sender = TcpStream::connect(addr).await?;
    let (a, _) = listener.accept().await?;
    let receiver = TcpStream::connect(addr).await?;
    let (b, _) = listener.accept().await?;
    for socket in [&sender, &receiver] {
        socket.set_nodelay(true)?;
    }
    for socket in [&a, &b] {
        socket.set_nodelay(relay_nodelay)?;
    }
    tokio::spawn(async move {
        let (mut from, _keep_a) = a.into_split();
        let (_keep_b, mut to) = b.into_split();
        let _ = tokio::io::copy(&mut from, &mut to).await;
    });
    Ok((sender, receiver))
}

/// Header of a baseline frame: length, capture time, sequence.
const HEADER: usize = 20;

fn pipe_frame(data: &[u8], capture_us: u64, seq: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + data.len());
    buf.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(&capture_us.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(data);
    buf
}

/// Reads one baseline frame; returns (capture time, sequence, bytes) or None at EOF.
async fn read_pipe_frame(rx: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u64, u64, usize)> {
    let mut header = [0u8; HEADER];
    rx.read_exact(&mut header).await.ok()?;
    let mut word = [0u8; 8];
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(&header[0..4]);
    let len = u32::from_le_bytes(len4) as usize;
    word.copy_from_slice(&header[4..12]);
    let capture = u64::from_le_bytes(word);
    word.copy_from_slice(&header[12..20]);
    let seq = u64::from_le_bytes(word);
    buf.resize(len, 0);
    rx.read_exact(buf).await.ok()?;
    Some((capture, seq, HEADER + len))
}

/// Returns (MB/s, frames/s) received through the forwarder.
async fn pipe_throughput(run: Duration, size: usize) -> Result<(f64, f64)> {
    let (mut tx, mut rx) = pipe(true).await?;
    let frame = pipe_frame(&payload(size), 0, 1);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let (mut frames, mut bytes) = (0u64, 0u64);
        while let Some((_, _, n)) = read_pipe_frame(&mut rx, &mut buf).await {
            frames += 1;
            bytes += n as u64;
        }
        (frames, bytes, start.elapsed())
    });
    while start.elapsed() < run {
        tx.write_all(&frame).await?;
    }
    drop(tx);
    let (frames, bytes, elapsed) = reader.await?;
    let secs = elapsed.as_secs_f64();
    Ok((mb_per_s(bytes, secs), frames as f64 / secs))
}

// ---------------------------------------------------------------------------------------
// latency

/// Frames per second in the latency scenario.
const LATENCY_RATE: u64 = 200;
/// Seconds measured per frame size.
const LATENCY_SECS: u64 = 10;
/// Leading frames not counted (connection warm-up).
const LATENCY_WARMUP: u64 = 50;

async fn collect_latency(mut viewer: Viewer, last: u64) -> Result<(Vec<u64>, u64)> {
    let mut samples = Vec::new();
    let mut received = 0u64;
    while let Ok(Ok(bytes)) = timeout(Duration::from_secs(2), viewer.rx.recv_raw()).await {
        let now = now_us();
        if let Some(frame) = as_video(bytes) {
            received += 1;
            if frame.sequence > LATENCY_WARMUP {
                samples.push(now.saturating_sub(frame.capture_timestamp_us));
            }
            if frame.sequence >= last {
                break;
            }
        }
    }
    Ok((samples, received))
}

pub(crate) fn ticker(rate: u64, behavior: MissedTickBehavior) -> tokio::time::Interval {
    let mut tick = interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(behavior);
    tick
}

/// 1 agent → 1 viewer at 200 frames/s, 1 KiB and 64 KiB frames; receive − send.
pub async fn latency(target: &Target) -> Result<Vec<Row>> {
    let api = Api::login(&target.base, &target.admin_password).await?;
    let total = LATENCY_RATE * LATENCY_SECS + LATENCY_WARMUP;
    let mut rows = vec![Row::info(
        "Method",
        format!(
            "{LATENCY_RATE} frames/s for {LATENCY_SECS} s per size (first {LATENCY_WARMUP} \
             not counted); latency = viewer receive − agent send, one process clock"
        ),
    )];
    for size in [1024usize, 64 * 1024] {
        let mut agent = Agent::connect(&api, &target.base).await?;
        let viewer = Viewer::join(&api, &target.base, &agent.session_id).await?;
        agent.wait_streaming().await?;
        let collector = tokio::spawn(collect_latency(viewer, total));
        let data = payload(size);
        let mut tick = ticker(LATENCY_RATE, MissedTickBehavior::Delay);
        for seq in 1..=total {
            tick.tick().await;
            let frame = video_frame(&data, seq, now_us(), true);
            agent.tx.send_raw(frame).await?;
        }
        let (mut samples, received) = collector.await??;
        agent.close().await;
        let over_1ms = samples.iter().filter(|&&us| us > 1000).count();
        let over_30ms = samples.iter().filter(|&&us| us > 30_000).count();
        let s = summarize(&mut samples);
        let label = format!("{} KiB frames", size / 1024);
        rows.push(Row::check(
            format!("{label}: relay p50 / p99 / max"),
            format!(
                "{} / **{}** / {} µs ({} samples)",
                s.p50, s.p99, s.max, s.count
            ),
            "p99 ≤ 1000 µs",
            s.p99 <= 1000 && received == total,
        ));
        rows.push(Row::info(
            format!("{label}: samples over 1 ms / over 30 ms"),
            format!("{over_1ms} / {over_30ms}"),
        ));
        if received != total {
            rows.push(Row::info(
                format!("{label}: frames lost"),
                format!("{} of {total}", total - received),
            ));
        }
        for (nodelay, what) in [
            (true, "baseline TCP forwarder"),
            (
                false,
                "baseline forwarder without TCP_NODELAY on its accepted sockets",
            ),
        ] {
            let mut base = pipe_latency(size, total, nodelay).await?;
            let b = summarize(&mut base);
            rows.push(Row::info(
                format!("{label}: {what} p50 / p99 / max"),
                format!("{} / {} / {} µs ({} samples)", b.p50, b.p99, b.max, b.count),
            ));
        }
    }
    Ok(rows)
}

async fn pipe_latency(size: usize, total: u64, relay_nodelay: bool) -> Result<Vec<u64>> {
    let (mut tx, mut rx) = pipe(relay_nodelay).await?;
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut samples = Vec::new();
        while let Some((capture, seq, _)) = read_pipe_frame(&mut rx, &mut buf).await {
            let now = now_us();
            if seq > LATENCY_WARMUP {
                samples.push(now.saturating_sub(capture));
            }
            if seq >= total {
                break;
            }
        }
        samples
    });
    let data = payload(size);
    let mut tick = ticker(LATENCY_RATE, MissedTickBehavior::Delay);
    for seq in 1..=total {
        tick.tick().await;
        tx.write_all(&pipe_frame(&data, now_us(), seq)).await?;
    }
    let samples = timeout(Duration::from_secs(10), reader)
        .await
        .context("baseline receiver stalled")??;
    Ok(samples)
}

// ---------------------------------------------------------------------------------------
// fan-out

/// Viewers in the fan-out scenario (the last one is the slow one).
const FANOUT_VIEWERS: usize = 10;
/// 1920×1080×4 / 20: a compressed full-frame update.
const FANOUT_FRAME: usize = 1920 * 1080 * 4 / 20;
const FANOUT_FPS: u64 = 60;
const FANOUT_RUN: Duration = Duration::from_secs(10);

struct FastStats {
    sequences: Vec<u64>,
    latency: Vec<u64>,
    closed: bool,
}

async fn fast_viewer(mut viewer: Viewer, done: Arc<AtomicU64>) -> FastStats {
    let mut stats = FastStats {
        sequences: Vec::new(),
        latency: Vec::new(),
        closed: false,
    };
    loop {
        match timeout(Duration::from_millis(500), viewer.rx.recv_raw()).await {
            Ok(Ok(bytes)) => {
                let now = now_us();
                if let Some(frame) = as_video(bytes) {
                    stats.sequences.push(frame.sequence);
                    stats
                        .latency
                        .push(now.saturating_sub(frame.capture_timestamp_us));
                    let last = done.load(Ordering::Acquire);
                    if last != 0 && frame.sequence >= last {
                        break;
                    }
                }
            }
            Ok(Err(_)) => {
                stats.closed = true;
                break;
            }
            Err(_) => {
                if done.load(Ordering::Acquire) != 0 {
                    break;
                }
            }
        }
    }
    stats
}

/// Returns (video frames delivered, keyframes among them, whether the relay closed it).
async fn slow_viewer(mut viewer: Viewer, stop: Arc<AtomicBool>) -> (u64, u64, bool) {
    let (mut delivered, mut keyframes) = (0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        sleep(Duration::from_millis(200)).await;
        match timeout(Duration::from_millis(100), viewer.rx.recv_raw()).await {
            Ok(Ok(bytes)) => {
                if let Some(frame) = as_video(bytes) {
                    delivered += 1;
                    keyframes += u64::from(frame.keyframe);
                }
            }
            Ok(Err(_)) => return (delivered, keyframes, true),
            Err(_) => {}
        }
    }
    (delivered, keyframes, false)
}

/// 1 agent → 10 viewers (one slow), ~405 KiB frames at 60 fps for 10 s.
pub async fn fanout(target: &Target) -> Result<Vec<Row>> {
    let api = Api::login(&target.base, &target.admin_password).await?;
    let mut agent = Agent::connect(&api, &target.base).await?;
    let mut viewers = Vec::new();
    for _ in 0..FANOUT_VIEWERS {
        viewers.push(Viewer::join(&api, &target.base, &agent.session_id).await?);
    }
    agent.wait_streaming().await?;
    // Joins asked for refreshes; the first frame is a keyframe anyway.
    agent.refresh.store(false, Ordering::Relaxed);

    let done = Arc::new(AtomicU64::new(0));
    let stop_slow = Arc::new(AtomicBool::new(false));
    let slow = viewers
        .pop()
        .ok_or_else(|| anyhow!("no viewers"))
        .map(|v| tokio::spawn(slow_viewer(v, stop_slow.clone())))?;
    let fast: Vec<_> = viewers
        .into_iter()
        .map(|v| tokio::spawn(fast_viewer(v, done.clone())))
        .collect();

    let data = payload(FANOUT_FRAME);
    let mut tick = ticker(FANOUT_FPS, MissedTickBehavior::Skip);
    let start = Instant::now();
    let (mut seq, mut keyframes) = (0u64, 0u64);
    let mut stalls = Vec::new();
    while start.elapsed() < FANOUT_RUN {
        tick.tick().await;
        seq += 1;
        // Like a real agent: a keyframe first and whenever the relay asks for a refresh.
        let keyframe = seq == 1 || agent.refresh.swap(false, Ordering::Relaxed);
        keyframes += u64::from(keyframe);
        let frame = video_frame(&data, seq, now_us(), keyframe);
        let t0 = Instant::now();
        agent.tx.send_raw(frame).await?;
        stalls.push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let elapsed = start.elapsed().as_secs_f64();
    done.store(seq, Ordering::Release);

    let mut lost_total = 0u64;
    let mut lost_max = 0u64;
    let mut closed = 0usize;
    let mut latency = Vec::new();
    for task in fast {
        let stats = timeout(Duration::from_secs(30), task)
            .await
            .context("a fast viewer did not finish")??;
        let mut seqs = stats.sequences;
        seqs.sort_unstable();
        seqs.dedup();
        let lost = seq.saturating_sub(seqs.len() as u64);
        lost_total += lost;
        lost_max = lost_max.max(lost);
        closed += usize::from(stats.closed);
        latency.extend(stats.latency);
    }
    stop_slow.store(true, Ordering::Release);
    let (slow_frames, slow_keys, slow_closed) = slow.await?;
    agent.close().await;

    let blocked_ms = stalls.iter().sum::<u64>() / 1000;
    let st = summarize(&mut stalls);
    let over_16ms = stalls.iter().filter(|&&d| d > 16_000).count();
    let lat = summarize(&mut latency);
    let fps = seq as f64 / elapsed;
    let expected = FANOUT_FPS * FANOUT_RUN.as_secs();
    Ok(vec![
        Row::info(
            "Setup",
            format!(
                "1 agent → {FANOUT_VIEWERS} viewers ({} fast, 1 reading one message per 200 ms); \
                 {FANOUT_FRAME} B payload (1920×1080×4/20) at {FANOUT_FPS} fps for {} s; \
                 keyframe first and on each relay RefreshRequest",
                FANOUT_VIEWERS - 1,
                FANOUT_RUN.as_secs()
            ),
        ),
        Row::check(
            "Frames lost by the fast viewers (total / worst viewer)",
            format!("**{lost_total}** / {lost_max} of {seq} each"),
            "0",
            lost_total == 0 && closed == 0,
        ),
        Row::info(
            "Fast viewers: frame latency p50 / p99 / max",
            format!("{} / {} / {} µs", lat.p50, lat.p99, lat.max),
        ),
        Row::info(
            "Frames delivered to the slow viewer",
            format!(
                "{slow_frames} ({slow_keys} keyframes){}",
                if slow_closed {
                    "; the relay closed it"
                } else {
                    "; still connected"
                }
            ),
        ),
        Row::check(
            "Agent frame rate",
            format!("{fps:.1} fps ({seq} of {expected} frames; {keyframes} keyframes)"),
            "60 fps",
            seq + 1 >= expected,
        ),
        Row::check(
            "Agent send_raw stalls p50 / p99 / max",
            format!("{} / {} / **{}** µs", st.p50, st.p99, st.max),
            "no send > 16 ms",
            over_16ms == 0,
        ),
        Row::info("Sends longer than 16 ms", over_16ms.to_string()),
        Row::info(
            "Agent time blocked in send_raw (rest of a missed tick is scheduling delay)",
            format!("{blocked_ms} ms of {elapsed:.1} s"),
        ),
    ])
}

// ---------------------------------------------------------------------------------------
// idle memory

/// Keeps an idle agent connected (reading answers the relay's pings); counts live ones.
async fn keep(mut conn: Connection, alive: Arc<AtomicUsize>) {
    alive.fetch_add(1, Ordering::Relaxed);
    while conn.recv().await.is_ok() {}
    alive.fetch_sub(1, Ordering::Relaxed);
}

fn explain_connect_error(e: &anyhow::Error, connected: usize) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Too many open files") || text.contains("os error 24") {
        anyhow!(
            "connecting agent #{} failed with EMFILE (too many open files): raise the limit \
             before running the bench, e.g. `ulimit -n 65536` (the spawned server inherits \
             it); error: {text}",
            connected + 1
        )
    } else {
        anyhow!("connecting agent #{} failed: {text}", connected + 1)
    }
}

/// The idle agents: how to connect more, and the tasks keeping them connected.
struct Fleet {
    base: String,
    key: String,
    run: String,
    concurrency: usize,
    alive: Arc<AtomicUsize>,
    keepers: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Connects `count` more idle agents, at most `concurrency` at a time; `on_progress`
    /// is called after each with the number connected in this call so far.
    async fn grow(
        &mut self,
        count: usize,
        mut on_progress: impl FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        let first = self.keepers.len();
        let mut set = JoinSet::new();
        let (mut next, mut done) = (0usize, 0usize);
        while done < count {
            while next < count && set.len() < self.concurrency.max(1) {
                let (base, key) = (self.base.clone(), self.key.clone());
                let uid = format!("relay-bench-{}-{}", self.run, first + next);
                set.spawn(async move {
                    timeout(Duration::from_secs(60), hello(&base, &key, &uid))
                        .await
                        .map_err(|_| {
                            anyhow!(
                                "no answer within 60 s (is the server out of file \
                                 descriptors? check `ulimit -n`)"
                            )
                        })?
                });
                next += 1;
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let (conn, _) = joined?.map_err(|e| explain_connect_error(&e, first + done))?;
            self.keepers
                .push(tokio::spawn(keep(conn, self.alive.clone())));
            done += 1;
            on_progress(done)?;
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for keeper in &self.keepers {
            keeper.abort();
        }
    }
}

/// N idle agents on the shared key; server RSS delta / N.
pub async fn idle(target: &Target, agents: usize, concurrency: usize) -> Result<Vec<Row>> {
    const WARMUP: usize = 100;
    let pid = target
        .pid
        .ok_or_else(|| anyhow!("the idle scenario needs the server's pid (--server-pid)"))?;
    let key = target
        .shared_key
        .clone()
        .ok_or_else(|| anyhow!("the idle scenario needs the shared agent key (--shared-key)"))?;
    if agents == 0 {
        bail!("--agents must be positive");
    }
    let needed = (agents + WARMUP + 256) as u64;
    if let Some(limit) = open_files_limit()
        && limit < needed
    {
        bail!(
            "the open-files limit is {limit}, but {agents} agents need about {needed} \
             descriptors (and the server as many): run `ulimit -n 65536` (or up to the hard \
             limit, `ulimit -Hn`) in this shell first"
        );
    }
    let alive = Arc::new(AtomicUsize::new(0));
    let mut fleet = Fleet {
        base: target.base.clone(),
        key,
        run: uuid::Uuid::new_v4().simple().to_string(),
        concurrency,
        alive: alive.clone(),
        keepers: Vec::new(),
    };
    let self_before = rss_kib(std::process::id())?;

    fleet.grow(WARMUP, |_| Ok(())).await?;
    sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;

    let half = agents / 2;
    let mut at_half = before;
    let started = Instant::now();
    fleet
        .grow(agents, |n| {
            if n == half {
                at_half = rss_kib(pid)?;
            }
            Ok(())
        })
        .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid)?;
    let live = alive.load(Ordering::Relaxed);
    let self_after = rss_kib(std::process::id())?;
    drop(fleet);

    let delta = after.saturating_sub(before);
    let per_kib = delta as f64 / agents as f64;
    let per_kb = per_kib * 1.024;
    let slope = after.saturating_sub(at_half) as f64 / (agents - half).max(1) as f64 * 1.024;
    Ok(vec![
        Row::info(
            "Agents",
            format!(
                "{agents} idle (shared key, distinct machine_uid) after {WARMUP} warm-up; \
                 {live} still connected at the end; connected in {connect_secs:.1} s \
                 ({:.0}/s, {concurrency} at a time)",
                agents as f64 / connect_secs
            ),
        ),
        Row::info(
            "Server RSS before / after",
            format!("{before} KiB / {after} KiB (+{delta} KiB)"),
        ),
        Row::check(
            "Server memory per idle agent",
            format!("**{per_kb:.1} KB** ({per_kib:.1} KiB)"),
            "≤ 30 KB",
            per_kb <= 30.0 && live == agents + WARMUP,
        ),
        Row::info(
            "Marginal cost, second half of the agents",
            format!("{slope:.1} KB per agent"),
        ),
        Row::info(
            "Bench (client) RSS per agent, for comparison",
            format!(
                "{:.1} KB",
                self_after.saturating_sub(self_before) as f64 / (agents + WARMUP) as f64 * 1.024
            ),
        ),
    ])
}

// ---------------------------------------------------------------------------------------
// soak: idle agents with periodic fan-out bursts

/// Holds `agents` idle agents on the server for `bursts` rounds; each round waits
/// `every`, then runs the fan-out scenario once. Server RSS is printed every `sample` as
/// `rss t_s=… rss_kib=… phase=…` (so an interrupted run still leaves its series) and
/// summarized per burst: whether memory keeps growing with each burst (a leak) or stops
/// after the first (retained peak).
pub async fn soak(
    target: &Target,
    agents: usize,
    concurrency: usize,
    bursts: usize,
    every: Duration,
    sample: Duration,
) -> Result<Vec<Row>> {
    let pid = target
        .pid
        .ok_or_else(|| anyhow!("the soak scenario needs the server's pid (--server-pid)"))?;
    let key = target
        .shared_key
        .clone()
        .ok_or_else(|| anyhow!("the soak scenario needs the shared agent key (--shared-key)"))?;
    let mut fleet = Fleet {
        base: target.base.clone(),
        key,
        run: uuid::Uuid::new_v4().simple().to_string(),
        concurrency,
        alive: Arc::new(AtomicUsize::new(0)),
        keepers: Vec::new(),
    };
    let started = Instant::now();
    fleet.grow(agents, |_| Ok(())).await?;
    let phase = Arc::new(std::sync::Mutex::new("idle".to_owned()));
    let sampler = {
        let phase = phase.clone();
        tokio::spawn(async move {
            let mut tick = interval(sample);
            loop {
                tick.tick().await;
                let Ok(rss) = rss_kib(pid) else { break };
                let phase = phase.lock().map(|p| p.clone()).unwrap_or_default();
                println!(
                    "rss t_s={:.0} rss_kib={rss} phase={phase}",
                    started.elapsed().as_secs_f64()
                );
            }
        })
    };
    sleep(Duration::from_secs(3)).await;
    let baseline = rss_kib(pid)?;
    let mut rows = vec![Row::info(
        "Before the first burst",
        format!("{baseline} KiB with {agents} idle agents"),
    )];
    for burst in 1..=bursts {
        sleep(every).await;
        set_phase(&phase, &format!("burst{burst}"));
        let peak_before = rss_kib(pid)?;
        fanout(target).await?;
        set_phase(&phase, "idle");
        // Let closed connections and their tasks go before reading.
        sleep(Duration::from_secs(5)).await;
        let after = rss_kib(pid)?;
        rows.push(Row::info(
            format!("After burst {burst}"),
            format!(
                "{after} KiB ({:+} KiB since the burst began, {:+} KiB since the first \
                 reading); {} agents connected",
                after as i64 - peak_before as i64,
                after as i64 - baseline as i64,
                fleet.alive.load(Ordering::Relaxed)
            ),
        ));
    }
    sleep(every).await;
    let end = rss_kib(pid)?;
    rows.push(Row::info(
        "End",
        format!("{end} KiB after {:.0} s", started.elapsed().as_secs_f64()),
    ));
    sampler.abort();
    drop(fleet);
    Ok(rows)
}

fn set_phase(phase: &std::sync::Mutex<String>, to: &str) {
    if let Ok(mut p) = phase.lock() {
        to.clone_into(&mut p);
    }
}
