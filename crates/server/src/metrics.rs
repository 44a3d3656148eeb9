//! Prometheus metrics served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaneLabel {
    plane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// All server metrics; cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    auth_failures: Family<PlaneLabel, Counter>,
    rate_limited: Family<LimitLabel, Counter>,
    /// Live sessions.
    pub sessions: Gauge,
    /// Connected viewers.
    pub viewers: Gauge,
    /// Connected agents.
    pub agents: Gauge,
    /// Frames relayed agent → viewers (counted per viewer delivery).
    pub frames_relayed: Counter,
    /// Bytes relayed agent → viewers (counted per viewer delivery).
    pub bytes_relayed: Counter,
    /// Frames dropped for slow viewers.
    pub frames_dropped: Counter,
    /// Input events dropped by access mode or throttle.
    pub input_dropped: Counter,
    unknown_messages: Family<KindLabel, Counter>,
    /// Messages from the session bus that did not decode (dropped).
    pub bus_dropped: Counter,
    /// Other server instances this one hears on the session bus.
    pub cluster_peers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("guruconnect");
        let requests = Family::<StatusLabel, Counter>::default();
        registry.register("http_requests", "HTTP requests by status", requests.clone());
        let auth_failures = Family::<PlaneLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Authentication failures by plane (user, agent, viewer)",
            auth_failures.clone(),
        );
        let rate_limited = Family::<LimitLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit",
            rate_limited.clone(),
        );
        let sessions = Gauge::default();
        registry.register("sessions", "Live relay sessions", sessions.clone());
        let bus_dropped = Counter::default();
        registry.register(
            "bus_dropped",
            "Session-bus messages that did not decode and were dropped",
            bus_dropped.clone(),
        );
        let cluster_peers = Gauge::default();
        registry.register(
            "cluster_peers",
            "Other server instances heard on the session bus",
            cluster_peers.clone(),
        );
        let viewers = Gauge::default();
        registry.register("viewers", "Connected viewers", viewers.clone());
        let agents = Gauge::default();
        registry.register("agents", "Connected agents", agents.clone());
        let frames_relayed = Counter::default();
        registry.register(
            "frames_relayed",
            "Frames delivered to viewers",
            frames_relayed.clone(),
        );
        let bytes_relayed = Counter::default();
        registry.register(
            "bytes_relayed",
            "Bytes delivered to viewers",
            bytes_relayed.clone(),
        );
        let frames_dropped = Counter::default();
        registry.register(
            "frames_dropped",
            "Frames dropped for slow viewers",
            frames_dropped.clone(),
        );
        let input_dropped = Counter::default();
        registry.register(
            "input_dropped",
            "Viewer input dropped by access mode or throttle",
            input_dropped.clone(),
        );
        let unknown_messages = Family::<KindLabel, Counter>::default();
        registry.register(
            "ignored_messages",
            "WebSocket messages ignored (unknown or not allowed) by kind",
            unknown_messages.clone(),
        );
        Self {
            registry,
            requests,
            auth_failures,
            rate_limited,
            sessions,
            viewers,
            agents,
            frames_relayed,
            bytes_relayed,
            frames_dropped,
            input_dropped,
            unknown_messages,
            bus_dropped,
            cluster_peers,
        }
    }

    /// Counts one finished HTTP request.
    pub fn record_request(&self, status: u16) {
        self.requests
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }

    /// Counts an authentication failure on `plane` (`user`, `agent`, `viewer`).
    pub fn auth_failure(&self, plane: &str) {
        self.auth_failures
            .get_or_create(&PlaneLabel {
                plane: plane.to_owned(),
            })
            .inc();
    }

    /// Counts a rate-limit refusal.
    pub fn rate_limited(&self, limit: &str) {
        self.rate_limited
            .get_or_create(&LimitLabel {
                limit: limit.to_owned(),
            })
            .inc();
    }

    /// Counts an ignored WebSocket message.
    pub fn ignored_message(&self, kind: &str) {
        self.unknown_messages
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
