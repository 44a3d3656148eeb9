//! The connection flood (issue 15): silent TCP connections, slowloris header drips,
//! half-sent upgrades and refused-then-idle upgrades against the server; how soon it
//! closes them, and how fast sign-in and `/health` answer meanwhile.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

use crate::report::{Row, summarize};
use crate::target::{Target, open_fds, open_files_limit_of, rss_kib};

/// What the flood is made of.
pub struct FloodParams {
    /// Silent connections.
    pub connections: usize,
    /// Silent connections per source address (kept under the server's per-address cap,
    /// so the header deadline, not the cap, is what closes them).
    pub per_address: usize,
    /// Connections of each other kind (drips, half-sent, refused upgrades).
    pub extras: usize,
    /// Connects in flight at once.
    pub concurrency: usize,
    /// How long to wait for the server to close everything.
    pub wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Silent,
    Drip,
    HalfUpgrade,
    RefusedUpgrade,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Silent => "Silent connections",
            Kind::Drip => "Slowloris (a header line every second)",
            Kind::HalfUpgrade => "Half-sent upgrades (head never ends)",
            Kind::RefusedUpgrade => "Refused upgrades (401), then idle",
        }
    }
}

enum Outcome {
    /// connect() failed; the error text.
    ConnectFailed(String),
    /// Closed by the server (EOF or reset) `after` the connect completed, `at` after the
    /// flood began.
    Closed { after: Duration, at: Duration },
    /// Still open when the wait ended.
    Open,
    /// Refused upgrade answered with something other than 401.
    Unexpected(String),
}

const HALF_UPGRADE: &[u8] = b"GET /ws/agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
const REFUSED_UPGRADE: &[u8] = b"GET /ws/agent HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn ip(base: Ipv4Addr, offset: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(base) + u32::try_from(offset).unwrap_or(u32::MAX),
    ))
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Reads (and discards) until the server closes the stream; drips a header line every
/// second meanwhile if `drip`. Ok when closed, Err when `wait` ran out first.
async fn until_closed(stream: &mut TcpStream, drip: bool, wait: Duration) -> Result<(), ()> {
    let mut buf = [0u8; 1024];
    let mut line = 0u64;
    let closed = async {
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = sleep(Duration::from_secs(1)), if drip => {
                    line += 1;
                    if stream.write_all(format!("X-Drip-{line}: y\r\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    timeout(wait, closed).await.map_err(|_| ())
}

/// One flood connection, from connect to the server closing it.
async fn one(
    kind: Kind,
    from: IpAddr,
    to: SocketAddr,
    (connects, last_connect): (Arc<Semaphore>, Arc<AtomicU64>),
    flood_start: Instant,
    wait: Duration,
) -> (Kind, Outcome) {
    let permit = connects.acquire_owned().await;
    let connected = timeout(Duration::from_secs(10), connect_from(from, to)).await;
    drop(permit);
    last_connect.fetch_max(micros(flood_start.elapsed()), Ordering::AcqRel);
    let mut stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return (kind, Outcome::ConnectFailed(e.to_string())),
        Err(_) => {
            return (
                kind,
                Outcome::ConnectFailed("connect timed out (10 s)".into()),
            );
        }
    };
    let opened = Instant::now();
    let first = match kind {
        Kind::Silent => None,
        Kind::Drip => Some(&b"GET /health HTTP/1.1\r\nHost: x\r\n"[..]),
        Kind::HalfUpgrade => Some(HALF_UPGRADE),
        Kind::RefusedUpgrade => Some(REFUSED_UPGRADE),
    };
    if let Some(bytes) = first
        && stream.write_all(bytes).await.is_err()
    {
        return (
            kind,
            Outcome::Closed {
                after: opened.elapsed(),
                at: flood_start.elapsed(),
            },
        );
    }
    if kind == Kind::RefusedUpgrade {
        let mut head = [0u8; 12];
        match timeout(Duration::from_secs(30), stream.read_exact(&mut head)).await {
            Ok(Ok(_)) if &head == b"HTTP/1.1 401" => {}
            Ok(Ok(_)) => {
                return (
                    kind,
                    Outcome::Unexpected(String::from_utf8_lossy(&head).into_owned()),
                );
            }
            Ok(Err(e)) => return (kind, Outcome::Unexpected(format!("no answer: {e}"))),
            Err(_) => return (kind, Outcome::Unexpected("no answer within 30 s".into())),
        }
    }
    match until_closed(&mut stream, kind == Kind::Drip, wait).await {
        Ok(()) => (
            kind,
            Outcome::Closed {
                after: opened.elapsed(),
                at: flood_start.elapsed(),
            },
        ),
        Err(()) => (kind, Outcome::Open),
    }
}

/// Sign-in (fresh client, so a fresh TCP connection) from `from`; its wall time.
async fn timed_login(base: &str, password: &str, from: IpAddr) -> Result<Duration> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let resp = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({ "username": "admin", "password": password }))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let took = started.elapsed();
    if !status.is_success() {
        bail!(
            "sign-in answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(took)
}

async fn timed_health(base: &str, from: IpAddr) -> Result<Duration> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let resp = http.get(format!("{base}/health")).send().await?;
    let status = resp.status();
    resp.bytes().await?;
    let took = started.elapsed();
    if !status.is_success() {
        bail!("/health answered {status}");
    }
    Ok(took)
}

/// Sign-ins come from 127.1.0.1, 127.1.0.2, … one address each: the server allows 8
/// sign-ins per minute per address.
struct Probes {
    base: String,
    password: String,
    to: SocketAddr,
    next: u32,
}

impl Probes {
    fn next_addr(&mut self) -> IpAddr {
        self.next += 1;
        IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(127, 1, 0, 0)) + self.next,
        ))
    }

    /// `n` rounds, 200 ms apart, of: a bare TCP connect, a sign-in, a `/health`.
    async fn series(&mut self, n: usize) -> Probed {
        let mut probed = Probed::default();
        for _ in 0..n {
            let from = self.next_addr();
            // Shows whether a slow sign-in waited for the handshake (a full accept queue
            // costs a 1 s SYN retransmit) or for the server.
            let started = Instant::now();
            match connect_from(from, self.to).await {
                Ok(_) => probed.connects.push(micros(started.elapsed())),
                Err(e) => probed.errors.push(format!("connect: {e}")),
            }
            match timed_login(&self.base, &self.password, from).await {
                Ok(d) => probed.logins.push(micros(d)),
                Err(e) => probed.errors.push(format!("sign-in: {e:#}")),
            }
            match timed_health(&self.base, from).await {
                Ok(d) => probed.healths.push(micros(d)),
                Err(e) => probed.errors.push(format!("/health: {e:#}")),
            }
            sleep(Duration::from_millis(200)).await;
        }
        probed
    }
}

/// Wall times (µs) of the probes, and their errors.
#[derive(Default)]
struct Probed {
    connects: Vec<u64>,
    logins: Vec<u64>,
    healths: Vec<u64>,
    errors: Vec<String>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn secs(us: u64) -> String {
    format!("{:.1}", us as f64 / 1e6)
}

/// Peak server RSS and descriptor count, sampled every 200 ms until `stop`.
async fn sample_peaks(pid: u32, stop: Arc<AtomicBool>) -> (u64, usize) {
    let (mut rss, mut fds) = (0u64, 0usize);
    while !stop.load(Ordering::Acquire) {
        rss = rss.max(rss_kib(pid).unwrap_or(0));
        fds = fds.max(open_fds(pid).unwrap_or(0));
        sleep(Duration::from_millis(200)).await;
    }
    (rss, fds)
}

/// The flood; see the module docs. Needs the server's address to be a loopback one (the
/// connections come from other 127.0.0.0/8 addresses).
pub async fn flood(target: &Target, params: &FloodParams) -> Result<Vec<Row>> {
    let to: SocketAddr = target
        .base
        .trim_start_matches("http://")
        .parse()
        .context("the flood needs an http://IP:port server address")?;
    if !to.ip().is_loopback() {
        bail!("the flood comes from 127.0.0.2 and up: run it against a loopback server");
    }
    let per_address = params.per_address.max(1);
    let silent_addresses = params.connections.div_ceil(per_address);
    let first = Ipv4Addr::new(127, 0, 0, 2);
    if silent_addresses + 3 > 250 {
        bail!("too many source addresses: raise --per-address");
    }
    let mut probes = Probes {
        base: target.base.clone(),
        password: target.admin_password.clone(),
        to,
        next: 0,
    };
    let rss_start = target.pid.and_then(|p| rss_kib(p).ok());
    // Warm-up (first query, caches), not counted.
    let _ = probes.series(1).await;
    let Probed {
        connects: mut quiet_connects,
        logins: mut quiet_logins,
        healths: mut quiet_health,
        mut errors,
    } = probes.series(5).await;
    let pid = target.pid;
    let rss_before = pid.and_then(|p| rss_kib(p).ok());
    let fds_before = pid.and_then(open_fds);

    let kernel_before = tcp_ext_counters();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|p| tokio::spawn(sample_peaks(p, stop.clone())));
    let connects = Arc::new(Semaphore::new(params.concurrency.max(1)));
    let last_connect = Arc::new(AtomicU64::new(0));
    let flood_start = Instant::now();
    let mut set = JoinSet::new();
    // Extras first, so their clocks start with the flood, each kind from its own address.
    for (k, kind) in [Kind::Drip, Kind::HalfUpgrade, Kind::RefusedUpgrade]
        .into_iter()
        .enumerate()
    {
        let from = ip(first, silent_addresses + k);
        for _ in 0..params.extras {
            set.spawn(one(
                kind,
                from,
                to,
                (connects.clone(), last_connect.clone()),
                flood_start,
                params.wait,
            ));
        }
    }
    for i in 0..params.connections {
        set.spawn(one(
            Kind::Silent,
            ip(first, i / per_address),
            to,
            (connects.clone(), last_connect.clone()),
            flood_start,
            params.wait,
        ));
    }
    // Probes during the flood, one round a second, until every connection has ended.
    let flood_over = Arc::new(AtomicBool::new(false));
    let prober = {
        let flood_over = flood_over.clone();
        let mut probes = Probes {
            base: probes.base.clone(),
            password: probes.password.clone(),
            to,
            next: probes.next,
        };
        tokio::spawn(async move {
            let (mut logins, mut all) = (Vec::new(), Probed::default());
            while !flood_over.load(Ordering::Acquire) {
                let at = micros(flood_start.elapsed());
                let round = probes.series(1).await;
                logins.extend(round.logins.into_iter().map(|took| (at, took)));
                all.connects.extend(round.connects);
                all.healths.extend(round.healths);
                all.errors.extend(round.errors);
                sleep(Duration::from_millis(800)).await;
            }
            (logins, all, probes.next)
        })
    };
    let mut outcomes: BTreeMap<Kind, Vec<Outcome>> = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        let (kind, outcome) = joined.map_err(|e| anyhow!("a flood task failed: {e}"))?;
        outcomes.entry(kind).or_default().push(outcome);
    }
    let flood_secs = flood_start.elapsed();
    // Sockets the server still has on its port (not counting the listener and TIME_WAIT,
    // which hold no descriptor), and what the kernel dropped.
    let server_side = server_side_sockets(to.port());
    let kernel_after = tcp_ext_counters();
    flood_over.store(true, Ordering::Release);
    let opened_within = Duration::from_micros(last_connect.load(Ordering::Acquire));
    let (
        flood_logins,
        Probed {
            connects: mut flood_connects,
            healths: flood_health,
            errors: flood_errors,
            ..
        },
        next,
    ) = prober.await?;
    stop.store(true, Ordering::Release);
    let peaks = match sampler {
        Some(task) => Some(task.await?),
        None => None,
    };
    let server_soft_limit = pid.and_then(|p| open_files_limit_of(&p.to_string()));

    sleep(Duration::from_secs(5)).await;
    let rss_after = pid.and_then(|p| rss_kib(p).ok());
    let fds_after = pid.and_then(open_fds);
    probes.next = next;
    let Probed {
        connects: mut after_connects,
        logins: mut after_logins,
        healths: mut after_health,
        errors: after_errors,
    } = probes.series(5).await;
    errors.extend(after_errors);

    let mut rows = vec![Row::info(
        "Setup",
        format!(
            "{} silent connections from {silent_addresses} addresses (127.0.0.2 and up, \
             ≤ {per_address} each); {} each of drips, half-sent and refused upgrades, one \
             address per kind; {} connects at a time; server soft open-file limit during \
             the flood: {}",
            params.connections,
            params.extras,
            params.concurrency,
            server_soft_limit.map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
        ),
    )];
    let mut all_closed_in_time = true;
    let mut connect_errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut slowest_at = Duration::ZERO;
    for (kind, list) in &outcomes {
        let mut after = Vec::new();
        let (mut failed, mut open, mut unexpected) = (0usize, 0usize, 0usize);
        for outcome in list {
            match outcome {
                Outcome::ConnectFailed(e) => {
                    failed += 1;
                    *connect_errors.entry(e.clone()).or_default() += 1;
                }
                Outcome::Closed { after: a, at } => {
                    after.push(micros(*a));
                    slowest_at = slowest_at.max(*at);
                }
                Outcome::Open => open += 1,
                Outcome::Unexpected(e) => {
                    unexpected += 1;
                    *connect_errors
                        .entry(format!("upgrade answer: {e}"))
                        .or_default() += 1;
                }
            }
        }
        let s = summarize(&mut after);
        // A client socket the server never accepted (accept queue overflowed, SYN cookie
        // ACK dropped) never sees a close: it is no server-side connection at all.
        let never_accepted = open > 0 && server_side.values().sum::<usize>() == 0;
        let within =
            failed == 0 && unexpected == 0 && s.max <= 30_000_000 && (open == 0 || never_accepted);
        all_closed_in_time &= within;
        rows.push(Row::check(
            format!(
                "{}: closed by the server, time after connect p50 / p100",
                kind.label()
            ),
            format!(
                "{} of {} opened ({failed} failed to open{}); **{} / {} s**; {open} still \
                 open after {} s{}",
                list.len() - failed,
                list.len(),
                if unexpected > 0 {
                    format!(", {unexpected} not answered 401")
                } else {
                    String::new()
                },
                secs(s.p50),
                secs(s.max),
                params.wait.as_secs(),
                if never_accepted {
                    " (never accepted: the server has no socket for them)"
                } else {
                    ""
                },
            ),
            "all closed ≤ 30 s",
            within,
        ));
    }
    rows.push(Row::info(
        "Wall time: all connects done / last close seen (from the flood's start)",
        format!(
            "{:.1} s / {:.1} s",
            opened_within.as_secs_f64(),
            slowest_at.as_secs_f64()
        ),
    ));
    // Phases by start time: connects still going, all open, server done closing (the
    // prober goes on while never-accepted sockets wait out the wait).
    let (opened_us, closed_us) = (micros(opened_within), micros(slowest_at));
    let phase = |from: u64, to: u64| -> Vec<u64> {
        flood_logins
            .iter()
            .filter(|&&(at, _)| at >= from && at < to)
            .map(|&(_, took)| took)
            .collect()
    };
    let mut during = phase(0, closed_us);
    let mut opening = phase(0, opened_us);
    let mut held = phase(opened_us, closed_us);
    let q = summarize(&mut quiet_logins);
    let d = summarize(&mut during);
    let (o, hd) = (summarize(&mut opening), summarize(&mut held));
    let a = summarize(&mut after_logins);
    let failed_logins = flood_errors
        .iter()
        .filter(|e| e.starts_with("sign-in"))
        .count();
    rows.push(Row::info(
        "Sign-in without the flood (before / after) p50 / max",
        format!(
            "{} / {} ms ({} sign-ins); {} / {} ms ({})",
            ms(q.p50),
            ms(q.max),
            q.count,
            ms(a.p50),
            ms(a.max),
            a.count
        ),
    ));
    rows.push(Row::check(
        "Sign-in during the flood (started before the last close) p50 / max",
        format!(
            "**{} / {} ms** ({} sign-ins, {failed_logins} failed)",
            ms(d.p50),
            ms(d.max),
            d.count
        ),
        "every sign-in OK, ≤ 1 s",
        failed_logins == 0 && d.count > 0 && d.max <= 1_000_000,
    ));
    rows.push(Row::info(
        "Sign-in started while connections were being opened / while they were held",
        format!(
            "{} / {} ms ({}); {} / {} ms ({})",
            ms(o.p50),
            ms(o.max),
            o.count,
            ms(hd.p50),
            ms(hd.max),
            hd.count
        ),
    ));
    let mut fh = flood_health;
    let h = summarize(&mut fh);
    let qh = summarize(&mut quiet_health);
    let ah = summarize(&mut after_health);
    rows.push(Row::info(
        "`/health` before / during / after p50 / max",
        format!(
            "{} / {} ms; {} / {} ms ({} requests, {} failed); {} / {} ms",
            ms(qh.p50),
            ms(qh.max),
            ms(h.p50),
            ms(h.max),
            h.count,
            flood_errors
                .iter()
                .filter(|e| e.starts_with("/health"))
                .count(),
            ms(ah.p50),
            ms(ah.max)
        ),
    ));
    if let (Some(before), Some((peak_rss, peak_fds)), Some(after)) = (rss_before, peaks, rss_after)
    {
        rows.push(Row::info(
            "Server RSS at start / before the flood (after 6 sign-ins) / peak / 5 s after",
            format!(
                "{} / {before} / {peak_rss} / {after} KiB",
                rss_start.unwrap_or(0)
            ),
        ));
        rows.push(Row::info(
            "Server open descriptors before / peak / 5 s after",
            format!(
                "{} / {peak_fds} / {}",
                fds_before.unwrap_or(0),
                fds_after.unwrap_or(0)
            ),
        ));
    }
    rows.push(Row::info(
        "Server-side sockets on the port at the end of the wait (by TCP state)",
        if server_side.is_empty() {
            "none".to_owned()
        } else {
            format!("{server_side:?}")
        },
    ));
    rows.push(Row::info(
        "Kernel during the flood: listen-queue overflows / SYN cookies sent",
        format!(
            "{} / {}",
            kernel_after.0.saturating_sub(kernel_before.0),
            kernel_after.1.saturating_sub(kernel_before.1)
        ),
    ));
    let (qc, fc, ac) = (
        summarize(&mut quiet_connects),
        summarize(&mut flood_connects),
        summarize(&mut after_connects),
    );
    rows.push(Row::info(
        "Bare TCP connect (fresh address) before / during / after p50 / max",
        format!(
            "{} / {} ms; {} / {} ms ({}); {} / {} ms",
            ms(qc.p50),
            ms(qc.max),
            ms(fc.p50),
            ms(fc.max),
            fc.count,
            ms(ac.p50),
            ms(ac.max)
        ),
    ));
    let log = target.log();
    let accept_failures = log.matches("accept failed").count();
    let limit_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("open-file limit"))
        .collect();
    rows.push(Row::info(
        "Server log: open-file limit / `accept failed` warnings (logged ≤ 1/s)",
        format!(
            "{} / {accept_failures}",
            limit_lines
                .first()
                .copied()
                .map_or_else(|| "(not logged)".to_owned(), strip_log)
        ),
    ));
    errors.extend(flood_errors);
    let mut error_text: Vec<String> = connect_errors
        .iter()
        .map(|(e, n)| format!("{n}× connect/answer: {e}"))
        .collect();
    error_text.extend(errors);
    rows.push(Row::info(
        "Bench-side errors",
        if error_text.is_empty() {
            "none".to_owned()
        } else {
            error_text.join("; ")
        },
    ));
    rows.push(Row::check(
        "Everything closed within 30 s",
        if all_closed_in_time { "yes" } else { "no" },
        "yes",
        all_closed_in_time,
    ));
    rows.push(Row::info(
        "Flood duration (first connect to last task ended)",
        format!("{:.1} s", flood_secs.as_secs_f64()),
    ));
    Ok(rows)
}

/// The message and fields of a server log line, without timestamp, level and ANSI colours.
fn strip_log(line: &str) -> String {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    match plain.find("open-file limit") {
        Some(i) => plain[i..].trim().to_owned(),
        None => plain.trim().to_owned(),
    }
}

/// `TcpExt` ListenOverflows and SyncookiesSent of this network namespace.
fn tcp_ext_counters() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let get = |name: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    (get("ListenOverflows"), get("SyncookiesSent"))
}

/// Sockets with local port `port` in `/proc/net/tcp`, by state, leaving out the
/// listener and TIME_WAIT.
fn server_side_sockets(port: u16) -> BTreeMap<&'static str, usize> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut states = BTreeMap::new();
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(state)) = (fields.nth(1), fields.nth(1)) else {
            continue;
        };
        let local_port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if local_port != Some(port) {
            continue;
        }
        let name = match state {
            "01" => "ESTABLISHED",
            "02" => "SYN_SENT",
            "03" => "SYN_RECV",
            "04" => "FIN_WAIT1",
            "05" => "FIN_WAIT2",
            "07" => "CLOSE",
            "08" => "CLOSE_WAIT",
            "09" => "LAST_ACK",
            "0B" => "CLOSING",
            _ => continue, // 06 TIME_WAIT, 0A LISTEN
        };
        *states.entry(name).or_default() += 1;
    }
    states
}
