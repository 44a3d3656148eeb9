//! GuruConnect relay server.
//!
//! Layout: [`config`] (layered settings), [`api`] (REST resources, one router each),
//! [`auth`] (passwords, tokens, extractors), [`relay`] (WebSocket planes and the live
//! session registry), [`error`] (the one error envelope), [`middleware`] (correlation id,
//! client IP, request log), [`conn`] (accepting connections, their deadlines and caps), [`rate_limit`], [`metrics`] and [`audit`]. Durable state lives
//! in `guruconnect-store`.
//!
//! The test seam is [`serve`]: it runs the whole server on a given listener until the
//! shutdown future completes.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod conn;
pub mod console;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod middleware;
pub mod rate_limit;
pub mod recording;
pub mod relay;
pub mod secrets;
pub mod sessions;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use guruconnect_store::Store;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use metrics::Metrics;
use rate_limit::RateLimits;

/// Shared state of every handler and socket task.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Durable state.
    pub store: Store,
    /// Token signing and verification.
    pub tokens: Arc<auth::tokens::TokenService>,
    /// Per-IP rate limits (in the database when clustered).
    pub limits: Arc<RateLimits>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Every socket task (agents, viewers, tunnels): waited for at shutdown, so sessions
    /// are recorded as ended before the server exits.
    pub tasks: tokio_util::task::TaskTracker,
    /// Live sessions: this instance's registry and the bus to the others.
    pub sessions: Arc<sessions::Sessions>,
    /// Wall clock for expiries.
    pub clock: clock::Clock,
    /// Outbound HTTP (alert webhooks).
    pub http: reqwest::Client,
}

/// Opens the store named by the configuration (embedded SQLite by default).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    match config.database_url() {
        Some(url) => Store::connect(url)
            .await
            .context("cannot open the database at database_url"),
        None => Store::open_sqlite_in(&config.data_dir)
            .await
            .with_context(|| {
                format!(
                    "cannot open the embedded database in {}",
                    config.data_dir.display()
                )
            }),
    }
}

/// Builds the application state: store, migrations, signing secret, first admin.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    config.validate()?;
    let bus = sessions::bus::SessionBus::connect(&config).await?;
    let store = open_store(&config).await?;
    let secret = bootstrap::signing_secret(&config, &store).await?;
    // Sessions of a previous run cannot be live any more (in a cluster: only this
    // instance's; the others end those of instances that died).
    let now = auth::tokens::now_millis();
    let stale = match bus.instance() {
        None => store.end_open_sessions("server restarted", now).await?,
        Some(instance) => {
            store
                .end_open_sessions_of_instance(instance, "server restarted", now)
                .await?
        }
    };
    if stale > 0 {
        tracing::info!(
            sessions = stale,
            "closed sessions left open by the previous run"
        );
    }
    if let Some(password) = bootstrap::first_admin(&config, &store).await? {
        // Printed once, on stdout only, never through the logger.
        println!(
            "\n  GuruConnect first start: sign in as `admin` with password: {}\n  \
             (shown once; change it after signing in)\n",
            password.expose_secret()
        );
    }
    let clock = clock::Clock::default();
    // Instances of a cluster count every limit together, in the shared database.
    let limits = if config.cluster.enabled() {
        RateLimits::shared(store.clone(), clock.clone())
    } else {
        RateLimits::new()
    };
    Ok(AppState {
        tokens: Arc::new(auth::tokens::TokenService::new(&secret)),
        config: Arc::new(config),
        store,
        limits: Arc::new(limits),
        metrics: Arc::new(Metrics::new()),
        shutdown: CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        sessions: Arc::new(sessions::Sessions::new(bus)),
        clock,
        http: reqwest::Client::new(),
    })
}

/// The console's address for the start message: `public_url` when set, else the bound
/// address (loopback when bound to every interface).
fn console_url(config: &Config, addr: std::net::SocketAddr) -> String {
    if let Some(url) = &config.public_url {
        return format!("{}/", url.trim_end_matches('/'));
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/", std::net::SocketAddr::new(ip, addr.port()))
}

/// The full HTTP router for a state.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    api::router()
        .fallback(console::serve)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}

/// Runs the server on `listener` until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build_state(config).await?;
    serve_state(state, listener, shutdown).await
}

/// Runs the server for an already built state (tests use this to reach the state).
pub async fn serve_state(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "GuruConnect server listening");
    match state.config.release_public_key.as_deref() {
        Some(key) => match guruconnect_release::parse_public_key(key) {
            Ok(key) => tracing::info!(
                fingerprint = %guruconnect_release::key_fingerprint(&key),
                "agent updates are enabled with this release key"
            ),
            Err(e) => tracing::error!(error = %e, "release_public_key is unusable"),
        },
        None => tracing::info!("{}", api::releases::UPDATES_DISABLED),
    }
    // Stdout, for whoever started it by hand: where to point a browser.
    println!(
        "  GuruConnect is running: open {} in a browser",
        console_url(&state.config, addr)
    );
    let cancel = state.shutdown.clone();
    // Before any connection is served: recordings that started earlier are a previous run's.
    let serving_since = state.clock.now_millis();
    let housekeeping = tokio::spawn(housekeeping(state.clone(), serving_since));
    if let Some(bus) = state.sessions.bus().nats() {
        bus.start(state.clone()).await?;
    }
    let limits = conn::ConnLimits {
        header_read_timeout: Duration::from_secs(state.config.header_read_timeout_secs),
        max_per_address: state.config.max_connections_per_address,
        exempt: state.config.trusted_proxies.clone(),
    };
    let state_tasks = state.tasks.clone();
    let app = router(state);
    let signal = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = cancel.cancelled() => {}
            }
            cancel.cancel();
        }
    });
    let tasks = state_tasks;
    let served = conn::serve(listener, app, limits, cancel).await;
    // Sockets ended their sessions when the shutdown fired; let them record it.
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            "socket tasks still running 10 s after shutdown"
        );
    }
    signal.abort();
    housekeeping.abort();
    served?;
    tracing::info!("GuruConnect server stopped");
    Ok(())
}

/// Deletes support codes finished longer than `code_retention_secs` ago; returns how
/// many. Called periodically; tests call it directly.
pub async fn prune_codes(state: &AppState) -> u64 {
    let retention_ms =
        i64::try_from(state.config.code_retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let cutoff = state.clock.now_millis().saturating_sub(retention_ms);
    match state.store.prune_codes(cutoff).await {
        Ok(pruned) => {
            if pruned > 0 {
                tracing::info!(codes = pruned, "pruned finished support codes");
            }
            pruned
        }
        Err(e) => {
            tracing::warn!(error = ?e, "pruning support codes failed");
            0
        }
    }
}

/// Periodic pruning: expired token records, finished support codes, idle rate-limit
/// state and recordings past their retention.
async fn housekeeping(state: AppState, serving_since: i64) {
    recording::recover(&state, serving_since, i64::MAX).await;
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        if state.config.cluster.enabled() {
            // Recordings of an instance that died: its sessions were ended by the sweep.
            let now = state.clock.now_millis();
            recording::recover(&state, now, now - 60_000).await;
        }
        state.limits.prune().await;
        sessions::reap_offline(&state).await;
        if let Err(e) = state
            .store
            .prune_expired_tokens(auth::tokens::now_millis())
            .await
        {
            tracing::warn!(error = ?e, "pruning expired tokens failed");
        }
        prune_codes(&state).await;
        let expired = recording::expire(&state).await;
        if expired > 0 {
            tracing::info!(
                recordings = expired,
                "removed recordings past their retention"
            );
        }
    }
}
