//! The `cluster` scenario: three `guruconnect-server` processes on one fresh PostgreSQL
//! schema and one NATS server (issue 11). The same measurements run with agent and viewer
//! on instance A (same-instance) and with the viewer on B (tunnelled over NATS), so the
//! cost of the tunnel is the difference between two figures of one run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sqlx::Connection;
use tokio::time::{MissedTickBehavior, sleep, timeout};

use crate::peers::{Agent, Api, Viewer, as_video, now_us, payload, video_frame};
use crate::report::{Row, summarize};
use crate::scenarios::{MIB, count_frames, mb_per_s, ticker};
use crate::target::{BENCH_ADMIN_PASSWORD, ChildOptions, Target, rss_kib};

/// Signing secret shared by the bench's instances (every member needs the same one).
const SECRET: &str = "relay-bench-cluster-signing-secret-0123456789";

/// Where the cluster's instances meet.
pub struct ClusterParams {
    /// PostgreSQL URL; a fresh schema is created in it for the run and dropped after.
    pub database_url: String,
    /// NATS URL.
    pub nats_url: String,
}

/// Three running instances and the schema they share.
struct Cluster {
    /// A, B, C.
    nodes: Vec<Node>,
    base_url: String,
    schema: String,
}

struct Node {
    name: &'static str,
    target: Target,
    api: Api,
}

impl Cluster {
    /// Creates the schema, starts A (it migrates and creates the admin), then B and C,
    /// and waits until each hears the other two.
    async fn start(server_bin: Option<&Path>, params: &ClusterParams) -> Result<Self> {
        let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let schema = format!("bench_{run}");
        let mut conn = sqlx::PgConnection::connect(&params.database_url)
            .await
            .with_context(|| format!("cannot connect to {}", params.database_url))?;
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        let sep = if params.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        let db = format!(
            "{}{sep}options=-c%20search_path%3D{schema}",
            params.database_url
        );
        let mut cluster = Self {
            nodes: Vec::new(),
            base_url: params.database_url.clone(),
            schema,
        };
        for name in ["a", "b", "c"] {
            let options = ChildOptions {
                env: vec![
                    ("GURUCONNECT_DATABASE_URL".into(), db.clone()),
                    ("GURUCONNECT_SIGNING_SECRET".into(), SECRET.into()),
                    (
                        "GURUCONNECT_CLUSTER__NATS_URL".into(),
                        params.nats_url.clone(),
                    ),
                    // Unique per run, so runs one after another never mistake each other's
                    // instances for their own.
                    (
                        "GURUCONNECT_CLUSTER__INSTANCE_ID".into(),
                        format!("bench-{run}-{name}"),
                    ),
                ],
                ..ChildOptions::default()
            };
            let target = match Target::child_with(server_bin, &options).await {
                Ok(target) => target,
                Err(e) => {
                    cluster.stop().await;
                    return Err(e.context(format!("instance {name} did not start")));
                }
            };
            let api = match Api::login(&target.base, BENCH_ADMIN_PASSWORD).await {
                Ok(api) => api,
                Err(e) => {
                    target.stop();
                    cluster.stop().await;
                    return Err(e.context(format!("sign-in on instance {name} failed")));
                }
            };
            cluster.nodes.push(Node {
                name: match name {
                    "a" => "A",
                    "b" => "B",
                    _ => "C",
                },
                target,
                api,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut deaf = None;
        'wait: for node in &cluster.nodes {
            while peers(&node.target.base).await < 2.0 {
                if Instant::now() > deadline {
                    deaf = Some(format!(
                        "instance {} never heard its two peers:\n{}",
                        node.name,
                        node.target.log()
                    ));
                    break 'wait;
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
        if let Some(why) = deaf {
            cluster.stop().await;
            bail!(why);
        }
        Ok(cluster)
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// RSS of each instance, `A 1234 / B … KiB`.
    fn rss(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let kib = n.target.pid.and_then(|p| rss_kib(p).ok()).unwrap_or(0);
                format!("{} {} MiB", n.name, kib / 1024)
            })
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// Stops every instance and drops the schema.
    async fn stop(self) {
        for node in self.nodes {
            node.target.stop();
        }
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.base_url).await {
            let _ = sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.schema))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

/// `guruconnect_cluster_peers` of an instance (0 when unreadable).
async fn peers(base: &str) -> f64 {
    let Ok(resp) = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    resp.text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("guruconnect_cluster_peers") && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs the whole scenario; the instances are stopped and the schema dropped even when a
/// measurement fails.
pub async fn cluster(server_bin: Option<&Path>, params: &ClusterParams) -> Result<Vec<Row>> {
    let cluster = Cluster::start(server_bin, params).await?;
    let result = measure(&cluster).await;
    cluster.stop().await;
    result
}

async fn measure(cluster: &Cluster) -> Result<Vec<Row>> {
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut rows = vec![
        Row::info("RSS at the start", cluster.rss()),
        Row::info(
            "Setup",
            "3 `guruconnect-server` processes (A, B, C) on one fresh PostgreSQL schema and \
         NATS, all on this machine; agent always on A; \"same\" = viewer on A, \"cross\" = \
         viewer on B (tunnelled A → NATS → B)"
                .to_owned(),
        ),
    ];
    for size in [MIB, 64 * 1024] {
        let label = size_label(size);
        for (viewer, how) in [(a, "same"), (b, "cross")] {
            let t = throughput(a, viewer, size).await?;
            rows.push(Row::info(
                format!("{label} back to back for 5 s, {how}: received"),
                format!(
                    "**{:.0} MB/s** ({:.0} frames/s); {} of {} frames not delivered; RSS \
                     after: {}",
                    t.mb_per_s,
                    t.frames_per_s,
                    t.lost,
                    t.sent,
                    cluster.rss()
                ),
            ));
        }
    }
    for (size, rate) in [(MIB, 30u64), (64 * 1024, 200)] {
        let label = size_label(size);
        let mut p50 = [0u64; 2];
        for (i, (viewer, how)) in [(a, "same"), (b, "cross")].into_iter().enumerate() {
            let l = latency(a, viewer, size, rate).await?;
            p50[i] = l.p50;
            rows.push(Row::info(
                format!("{label} at {rate}/s for 10 s, {how}: p50 / p99 / max"),
                format!(
                    "{} / **{}** / {} µs ({} samples; {} of {} frames lost)",
                    l.p50, l.p99, l.max, l.count, l.lost, l.total
                ),
            ));
        }
        rows.push(Row::info(
            format!("{label}: added by the tunnel (p50 cross − same)"),
            format!("{} µs", p50[1].saturating_sub(p50[0])),
        ));
    }
    // The slow viewer next to the agent, then behind a tunnel: the same run otherwise.
    rows.extend(fanout(cluster, 0).await?);
    rows.extend(fanout(cluster, 1).await?);
    rows.push(Row::info("RSS at the end", cluster.rss()));
    Ok(rows)
}

fn size_label(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB frames", size / MIB)
    } else {
        format!("{} KiB frames", size / 1024)
    }
}

struct Throughput {
    mb_per_s: f64,
    frames_per_s: f64,
    sent: u64,
    lost: u64,
}

/// Agent on `agent`, viewer on `viewer`: keyframes of `size` back to back for 5 s.
async fn throughput(agent: &Node, viewer: &Node, size: usize) -> Result<Throughput> {
    const RUN: Duration = Duration::from_secs(5);
    let mut source = Agent::connect(&agent.api, &agent.target.base).await?;
    let sink = Viewer::join(&viewer.api, &viewer.target.base, &source.session_id).await?;
    source.wait_streaming().await?;
    let frame = video_frame(&payload(size), 1, 0, true);
    let start = Instant::now();
    let counter = tokio::spawn(count_frames(sink, start));
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        source.tx.send_raw(frame.clone()).await?;
        sent += 1;
    }
    let got = counter.await??;
    source.close().await;
    let secs = got.last.as_secs_f64();
    Ok(Throughput {
        mb_per_s: mb_per_s(got.bytes, secs),
        frames_per_s: got.frames as f64 / secs.max(1e-9),
        sent,
        lost: sent.saturating_sub(got.frames),
    })
}

struct Latency {
    p50: u64,
    p99: u64,
    max: u64,
    count: usize,
    total: u64,
    lost: u64,
}

/// Agent on `agent`, viewer on `viewer`: frames of `size` at `rate`/s for 10 s (the first
/// second not counted); latency = viewer receive − agent send on one process clock.
async fn latency(agent: &Node, viewer: &Node, size: usize, rate: u64) -> Result<Latency> {
    let warmup = rate;
    let total = rate * 10 + warmup;
    let mut source = Agent::connect(&agent.api, &agent.target.base).await?;
    let mut sink = Viewer::join(&viewer.api, &viewer.target.base, &source.session_id).await?;
    source.wait_streaming().await?;
    let collector = tokio::spawn(async move {
        let (mut samples, mut received) = (Vec::new(), 0u64);
        while let Ok(Ok(bytes)) = timeout(Duration::from_secs(2), sink.rx.recv_raw()).await {
            let now = now_us();
            if let Some(frame) = as_video(bytes) {
                received += 1;
                if frame.sequence > warmup {
                    samples.push(now.saturating_sub(frame.capture_timestamp_us));
                }
                if frame.sequence >= total {
                    break;
                }
            }
        }
        (samples, received)
    });
    let data = payload(size);
    let mut tick = ticker(rate, MissedTickBehavior::Delay);
    for seq in 1..=total {
        tick.tick().await;
        source
            .tx
            .send_raw(video_frame(&data, seq, now_us(), true))
            .await?;
    }
    let (mut samples, received) = collector.await?;
    source.close().await;
    let s = summarize(&mut samples);
    Ok(Latency {
        p50: s.p50,
        p99: s.p99,
        max: s.max,
        count: s.count,
        total,
        lost: total.saturating_sub(received),
    })
}

/// Viewers in the fan-out (the last one is the slow one).
const FANOUT_VIEWERS: usize = 10;
/// 1920×1080×4 / 20: a compressed full-frame update, as in the single-server fan-out.
const FANOUT_FRAME: usize = 1920 * 1080 * 4 / 20;
const FANOUT_FPS: u64 = 60;
const FANOUT_RUN: Duration = Duration::from_secs(10);
/// The slow viewer stops reading from this point of the run …
const PAUSE_FROM: Duration = Duration::from_secs(2);
/// … for this long, then reads as fast as it can again.
const PAUSE: Duration = Duration::from_secs(5);

/// Sequence numbers a viewer received, and whether the relay closed it.
async fn fast_viewer(viewer: Viewer, done: Arc<AtomicU64>) -> (Vec<u64>, bool) {
    read_frames(viewer, done, None).await
}

/// Reads like a fast viewer but stops for [`PAUSE`] after [`PAUSE_FROM`]; returns the
/// sequences received and whether the relay closed it.
async fn paused_viewer(
    viewer: Viewer,
    start: Instant,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (Vec<u64>, bool) {
    read_frames(viewer, done, Some((start, stop))).await
}

/// Reads frames until the last one (`done`) arrived; with `pause` (run start, stop flag) it
/// sleeps [`PAUSE`] once at [`PAUSE_FROM`] and gives up when the flag is set.
async fn read_frames(
    mut viewer: Viewer,
    done: Arc<AtomicU64>,
    pause: Option<(Instant, Arc<AtomicBool>)>,
) -> (Vec<u64>, bool) {
    let mut seqs = Vec::new();
    let mut paused = false;
    while !pause
        .as_ref()
        .is_some_and(|(_, stop)| stop.load(Ordering::Acquire))
    {
        if let Some((start, _)) = &pause
            && !paused
            && start.elapsed() >= PAUSE_FROM
        {
            paused = true;
            sleep(PAUSE).await;
        }
        match timeout(Duration::from_millis(500), viewer.rx.recv_raw()).await {
            Ok(Ok(bytes)) => {
                if let Some(frame) = as_video(bytes) {
                    seqs.push(frame.sequence);
                    let last = done.load(Ordering::Acquire);
                    if last != 0 && frame.sequence >= last {
                        break;
                    }
                }
            }
            Ok(Err(_)) => return (seqs, true),
            Err(_) => {
                if done.load(Ordering::Acquire) != 0 {
                    break;
                }
            }
        }
    }
    (seqs, false)
}

/// 1 agent on A → 10 viewers: 3 fast ones on each instance and the slow one on instance
/// `slow_on`.
async fn fanout(cluster: &Cluster, slow_on: usize) -> Result<Vec<Row>> {
    let a = cluster.node(0);
    let mut agent = Agent::connect(&a.api, &a.target.base).await?;
    let mut viewers = Vec::new();
    for i in 0..FANOUT_VIEWERS - 1 {
        let node = cluster.node(i % 3);
        let v = Viewer::join(&node.api, &node.target.base, &agent.session_id).await?;
        viewers.push((node.name, v));
    }
    let s = cluster.node(slow_on);
    let slow = Viewer::join(&s.api, &s.target.base, &agent.session_id).await?;
    let tag = format!("Fan-out, slow viewer on {}", s.name);
    agent.wait_streaming().await?;
    agent.refresh.store(false, Ordering::Relaxed);

    let done = Arc::new(AtomicU64::new(0));
    let stop_slow = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let slow = tokio::spawn(paused_viewer(slow, start, done.clone(), stop_slow.clone()));
    let fast: Vec<_> = viewers
        .into_iter()
        .map(|(name, v)| (name, tokio::spawn(fast_viewer(v, done.clone()))))
        .collect();

    let data = payload(FANOUT_FRAME);
    let mut tick = ticker(FANOUT_FPS, MissedTickBehavior::Skip);
    let (mut seq, mut keyframes) = (0u64, 0u64);
    while start.elapsed() < FANOUT_RUN {
        tick.tick().await;
        seq += 1;
        let keyframe = seq == 1 || agent.refresh.swap(false, Ordering::Relaxed);
        keyframes += u64::from(keyframe);
        agent
            .tx
            .send_raw(video_frame(&data, seq, now_us(), keyframe))
            .await?;
    }
    done.store(seq, Ordering::Release);

    let mut per_viewer = Vec::new();
    let (mut lost_total, mut closed) = (0u64, 0usize);
    for (name, task) in fast {
        let (mut seqs, was_closed) = timeout(Duration::from_secs(30), task)
            .await
            .map_err(|_| anyhow!("a fast viewer did not finish"))??;
        seqs.sort_unstable();
        seqs.dedup();
        let got = seqs.len() as u64;
        lost_total += seq.saturating_sub(got);
        closed += usize::from(was_closed);
        per_viewer.push(format!("{name} {got}"));
    }
    // The slow one may still be draining; give it the fast ones' grace, then stop it.
    let slow_result = timeout(Duration::from_secs(5), slow).await;
    stop_slow.store(true, Ordering::Release);
    let (mut slow_seqs, slow_closed) = match slow_result {
        Ok(joined) => joined?,
        Err(_) => bail!("the slow viewer did not finish"),
    };
    agent.close().await;
    slow_seqs.sort_unstable();
    slow_seqs.dedup();
    let slow_got = slow_seqs.len() as u64;
    // Frames sent before, during and after the pause, by the agent's 60 fps clock.
    let pause_first = PAUSE_FROM.as_secs() * FANOUT_FPS + 1;
    let pause_last = (PAUSE_FROM + PAUSE).as_secs() * FANOUT_FPS;
    let window = |from: u64, to: u64| {
        let got = slow_seqs
            .iter()
            .filter(|s| (from..=to).contains(*s))
            .count() as u64;
        (to + 1).saturating_sub(from).saturating_sub(got)
    };
    let lost = [
        window(1, pause_first - 1),
        window(pause_first, pause_last),
        window(pause_last + 1, seq),
    ];

    Ok(vec![
        Row::info(
            format!("{tag}: setup"),
            format!(
                "agent on A → {} viewers: 9 fast (A ×3, B ×3, C ×3) and 1 on {} that stops \
                 reading for {} s after {} s; {FANOUT_FRAME} B payload at {FANOUT_FPS} fps \
                 for {} s; keyframe first and on each RefreshRequest",
                FANOUT_VIEWERS,
                s.name,
                PAUSE.as_secs(),
                PAUSE_FROM.as_secs(),
                FANOUT_RUN.as_secs()
            ),
        ),
        Row::info(
            format!("{tag}: frames sent by the agent"),
            format!("{seq} ({keyframes} keyframes)"),
        ),
        Row::info(
            format!("{tag}: frames delivered to each fast viewer"),
            per_viewer.join(", "),
        ),
        Row::check(
            format!("{tag}: frames lost by the fast viewers (total)"),
            format!(
                "**{lost_total}**{}",
                if closed > 0 {
                    format!("; {closed} closed")
                } else {
                    String::new()
                }
            ),
            "0",
            lost_total == 0 && closed == 0,
        ),
        Row::info(
            format!("{tag}: the slow viewer"),
            format!(
                "{slow_got} delivered, {} lost (before / during / after the pause: {} / {} / \
                 {}); {}",
                seq.saturating_sub(slow_got),
                lost[0],
                lost[1],
                lost[2],
                if slow_closed {
                    "the relay closed it"
                } else {
                    "still connected"
                }
            ),
        ),
    ])
}
