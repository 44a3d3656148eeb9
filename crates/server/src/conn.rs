//! Accepting and serving TCP connections, with the limits that keep idle and slow
//! clients from holding file descriptors:
//!
//! - a header-read deadline: a request head (the first, or the next one on a kept-alive
//!   connection) must arrive complete within `header_read_timeout_secs`, so silent
//!   connections, slowloris header drips and idle keep-alive connections (such as one
//!   left open after a refused upgrade) are closed;
//! - a cap on plain-HTTP connections per source address
//!   (`max_connections_per_address`; trusted proxies are exempt). A connection leaves
//!   the count when it ends or becomes a WebSocket, which only an authenticated
//!   request achieves, so agents behind one NAT are not limited;
//! - `EMFILE`/`ENFILE` on accept is logged once a second and retried after a short
//!   pause instead of spinning;
//! - a request the HTTP parser rejects (malformed request line, bad header, head too
//!   large) never reaches the router, so it is logged here, with a fresh request id.
//!
//! [`raise_open_file_limit`] lifts the soft descriptor limit to the hard one at start.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connection limits, from the configuration.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Deadline for a complete request head.
    pub header_read_timeout: Duration,
    /// Plain-HTTP connections allowed per source address (0: no cap).
    pub max_per_address: usize,
    /// Addresses exempt from the cap (reverse proxies).
    pub exempt: Vec<IpNet>,
}

/// Open plain-HTTP connections per source address.
#[derive(Debug, Default)]
struct Counts(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; leaves the count when dropped.
struct Slot {
    ip: IpAddr,
    counts: Arc<Counts>,
}

impl Counts {
    fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            ip,
            counts: Arc::clone(self),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `cancel` fires, then stops accepting, lets open
/// requests finish and waits for their connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let counts = Arc::new(Counts::default());
    let tracker = TaskTracker::new();
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    on_accept_error(&e, &mut last_accept_error).await;
                    continue;
                }
            },
        };
        let exempt = limits.exempt.iter().any(|net| net.contains(&peer.ip()));
        let slot = if exempt {
            None
        } else {
            match counts.admit(peer.ip(), limits.max_per_address) {
                Some(slot) => Some(slot),
                None => {
                    // Dropping the stream closes it: no descriptor is held for it.
                    tracing::debug!(peer = %peer.ip(), "connection refused: too many from this address");
                    continue;
                }
            }
        };
        // Small relay messages (input, cursor) must not wait for delayed ACKs (Nagle).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        tracker.spawn(serve_connection(
            tcp,
            peer,
            app.clone(),
            limits.header_read_timeout,
            slot,
            cancel.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    header_read_timeout: Duration,
    slot: Option<Slot>,
    cancel: CancellationToken,
) {
    let service = app.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.map(axum::body::Body::new)
    });
    let service = TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => log_end(result, peer),
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            log_end(conn.await, peer);
        }
    }
    // An upgraded connection lives on in its WebSocket task, no longer counted.
    drop(slot);
}

fn log_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            // Same id format as the request middleware's correlation ids.
            let request_id = uuid::Uuid::new_v4().simple().to_string();
            let reason = if e.is_parse_too_large() {
                "request head too large"
            } else {
                "malformed request head"
            };
            tracing::info!(%request_id, client_ip = %peer.ip(), reason, error = %e, "request rejected by the HTTP parser");
        } else if e.is_timeout() {
            tracing::debug!("connection closed: request head not received in time");
        } else {
            tracing::trace!(error = %e, "connection ended with an error");
        }
    }
}

/// Out of descriptors (or another resource): pause briefly so the process does not
/// spin, and log at most once a second.
async fn on_accept_error(e: &std::io::Error, last: &mut Option<Instant>) {
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
        tracing::warn!(error = %e, "accept failed");
        *last = Some(now);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Raises the soft open-file limit to the hard limit (each connection is a descriptor)
/// and logs both; failures are logged, never fatal.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        tracing::info!(hard = ?limit.maximum, "open-file limit: soft limit unlimited");
        return;
    };
    // An unlimited hard limit is not a valid soft value for RLIMIT_NOFILE; stay bounded.
    let target = hard.unwrap_or(1 << 20);
    if target <= soft {
        tracing::info!(soft, hard = target, "open-file limit");
        return;
    }
    let mut raised = limit;
    raised.current = Some(target);
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            soft_before = soft,
            soft = target,
            hard = target,
            "open-file limit raised to the hard limit"
        ),
        Err(e) => {
            tracing::warn!(soft, hard = target, error = %e, "could not raise the open-file limit")
        }
    }
}
