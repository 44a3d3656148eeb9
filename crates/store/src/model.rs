//! Domain records the store reads and writes. Timestamps are Unix milliseconds (`i64`) on
//! both backends, so the two can never disagree about time zones or precision.
//!
//! States (a session's status and kind, a machine's or a code's status, …) are enums
//! whose `as_str` names are what the columns hold and what the API's JSON shows; a
//! stored name no variant has is read as an error, so a newer binary's rows cannot be
//! misread.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The only tenant until multi-tenancy lands; every row carries a tenant id already.
pub const DEFAULT_TENANT: &str = "default";

/// A console user. `password_hash` is an Argon2id PHC string, never serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// UUID (text).
    pub id: String,
    /// Tenant the user belongs to.
    pub tenant_id: String,
    /// Unique per tenant, compared case-insensitively.
    pub username: String,
    /// Argon2id PHC string.
    #[serde(skip)]
    pub password_hash: String,
    /// `admin`, `technician` or `viewer`.
    pub role: String,
    /// Disabled users cannot sign in.
    pub disabled: bool,
    /// A confirmed TOTP second factor is required at sign-in.
    pub totp_enabled: bool,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// Fields for creating a user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// UUID (text), chosen by the caller.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Username.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Role name.
    pub role: String,
}

/// A partial update of a user; `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New role.
    pub role: Option<String>,
    /// New password hash.
    pub password_hash: Option<String>,
    /// Enable or disable.
    pub disabled: Option<bool>,
}

/// A user's TOTP second factor. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpRecord {
    /// Owner.
    pub user_id: String,
    /// Base32 shared secret.
    pub secret: String,
    /// Confirmed by a code; until then the secret is only pending.
    pub enabled: bool,
    /// Newest accepted 30-second step (replay guard).
    pub last_step: i64,
}

impl std::fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("user_id", &self.user_id)
            .field("enabled", &self.enabled)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

/// Kind of an issued token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// 24 h console sign-in token.
    Login,
    /// 5 min token for one session's viewer socket.
    Viewer,
}

impl TokenKind {
    /// Stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Login => "login",
            TokenKind::Viewer => "viewer",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "login" => Some(TokenKind::Login),
            "viewer" => Some(TokenKind::Viewer),
            _ => None,
        }
    }
}

/// A record of an issued JWT (by `jti`); revocation sets `revoked_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token's `jti`.
    pub jti: String,
    /// Owner.
    pub user_id: String,
    /// Login or viewer.
    pub kind: TokenKind,
    /// For viewer tokens, the login token that minted it.
    pub parent_jti: Option<String>,
    /// Issue time.
    pub issued_at: Millis,
    /// Expiry time.
    pub expires_at: Millis,
    /// Revocation time, if revoked.
    pub revoked_at: Option<Millis>,
}

/// An audit event to record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NewEvent {
    /// Tenant.
    pub tenant_id: String,
    /// Dotted type, e.g. `auth.login_success`.
    pub event_type: String,
    /// Acting user id, if any.
    pub user_id: Option<String>,
    /// Acting username, if any.
    pub username: Option<String>,
    /// Machine (agent id), if any.
    pub agent_id: Option<String>,
    /// Session id, if any.
    pub session_id: Option<String>,
    /// Client IP as seen by the server.
    pub client_ip: Option<String>,
    /// Free-form JSON details; never secrets.
    pub details: serde_json::Value,
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Monotonic id (cursor for pagination).
    pub id: i64,
    /// Record time.
    pub created_at: Millis,
    /// The event itself.
    #[serde(flatten)]
    pub event: NewEvent,
}

/// Filter for listing audit events; newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Tenant.
    pub tenant_id: String,
    /// Exact event type, or a prefix ending in `.` (e.g. `auth.`).
    pub event_type: Option<String>,
    /// Case-insensitive username or exact user id.
    pub user: Option<String>,
    /// Exact agent id.
    pub agent_id: Option<String>,
    /// Exact session id.
    pub session_id: Option<String>,
    /// Inclusive lower bound.
    pub since: Option<Millis>,
    /// Exclusive upper bound.
    pub until: Option<Millis>,
    /// Only events with `id < before_id` (cursor).
    pub before_id: Option<i64>,
    /// Page size (the store caps it at 500).
    pub limit: i64,
}

/// Whether a machine may be used: a collided endpoint waits for an admin's approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineStatus {
    /// Approved (the column's default); its sessions may be viewed.
    #[default]
    Active,
    /// Waiting for an admin's approval (see [`Machine::pending_reason`]).
    Pending,
}

impl MachineStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineStatus::Active => "active",
            MachineStatus::Pending => "pending",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "active" => Some(MachineStatus::Active),
            "pending" => Some(MachineStatus::Pending),
            _ => None,
        }
    }
}

/// Where a support code stands. "Expired" is not stored: it is a pending code past
/// [`SupportCode::expires_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeStatus {
    /// Created, not used yet.
    Pending,
    /// Bound to a session by an agent.
    Consumed,
    /// Withdrawn by a technician before use.
    Cancelled,
    /// Its session finished.
    Ended,
    /// The customer refused consent.
    Denied,
}

impl CodeStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeStatus::Pending => "pending",
            CodeStatus::Consumed => "consumed",
            CodeStatus::Cancelled => "cancelled",
            CodeStatus::Ended => "ended",
            CodeStatus::Denied => "denied",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(CodeStatus::Pending),
            "consumed" => Some(CodeStatus::Consumed),
            "cancelled" => Some(CodeStatus::Cancelled),
            "ended" => Some(CodeStatus::Ended),
            "denied" => Some(CodeStatus::Denied),
            _ => None,
        }
    }
}

/// Attended (support code) or managed (per-agent key) session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// Started from a support code; needs consent.
    Attended,
    /// Unattended, permanently installed agent.
    Managed,
}

impl SessionKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Attended => "attended",
            SessionKind::Managed => "managed",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "attended" => Some(SessionKind::Attended),
            "managed" => Some(SessionKind::Managed),
            _ => None,
        }
    }
}

/// Where a session's durable record stands (the live state is the relay's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Attended, waiting for the customer's consent.
    WaitingConsent,
    /// Live: frames and input flow.
    Active,
    /// Managed, its agent dropped; waiting for it to return.
    Offline,
    /// Over (`ended_at` and `end_reason` are set).
    Ended,
}

impl SessionStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::WaitingConsent => "waiting_consent",
            SessionStatus::Active => "active",
            SessionStatus::Offline => "offline",
            SessionStatus::Ended => "ended",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "waiting_consent" => Some(SessionStatus::WaitingConsent),
            "active" => Some(SessionStatus::Active),
            "offline" => Some(SessionStatus::Offline),
            "ended" => Some(SessionStatus::Ended),
            _ => None,
        }
    }
}

/// A machine (endpoint) known to the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// Stable agent id (UUID text).
    pub agent_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Hardware-derived id reported by the agent (dedup key with the tenant).
    pub machine_uid: Option<String>,
    /// Host name.
    pub hostname: String,
    /// OS family.
    pub os: String,
    /// OS version.
    pub os_version: String,
    /// Agent version.
    pub agent_version: String,
    /// Labels.
    pub company: Option<String>,
    /// Site label.
    pub site: Option<String>,
    /// Department label.
    pub department: Option<String>,
    /// Device type label.
    pub device_type: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Last reported inventory (JSON object).
    pub inventory: serde_json::Value,
    /// External IP the server saw.
    pub external_ip: Option<String>,
    /// Active, or pending (a collided endpoint waiting for an admin's approval).
    pub status: MachineStatus,
    /// Why the machine is pending (e.g. `machine_uid_collision`); `None` when active.
    pub pending_reason: Option<String>,
    /// The `machine_uid` a collided endpoint claimed while another live machine of the
    /// tenant owns it. Such a machine keeps `machine_uid = None` (the uid stays unique
    /// per tenant) and is told apart by its agent id and per-agent key.
    pub claimed_machine_uid: Option<String>,
    /// Enrollment site ([`Site::id`]) the machine belongs to, if any.
    pub site_id: Option<String>,
    /// Last time the agent was connected.
    pub last_seen: Option<Millis>,
    /// Creation time.
    pub created_at: Millis,
    /// The technicians' notes about the machine (free text, not searched).
    pub notes: Option<String>,
    /// Update channel set for this machine (`stable`, `beta`); `None` inherits the site's.
    pub update_channel: Option<String>,
    /// The agent's last reported update step (JSON object), if any.
    pub update_status: Option<serde_json::Value>,
}

/// Label changes for [`crate::Store::update_machine_labels`]: `None` leaves a field as
/// it is, `Some(None)` clears it, `Some(Some(v))` sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineLabels {
    /// Company / organization.
    pub company: Option<Option<String>>,
    /// Site label (free text; distinct from the enrollment [`Machine::site_id`]).
    pub site: Option<Option<String>>,
    /// Department.
    pub department: Option<Option<String>>,
    /// Device type.
    pub device_type: Option<Option<String>>,
    /// Replaces the whole tag list.
    pub tags: Option<Vec<String>>,
    /// The technicians' notes about the machine.
    pub notes: Option<Option<String>>,
    /// Update channel (`stable`, `beta`; `Some(None)`: inherit the site's).
    pub update_channel: Option<Option<String>>,
}

/// A machine created explicitly (enrollment, or a collided endpoint's pending row) by
/// [`crate::Store::create_machine`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMachine {
    /// Agent id (UUID text), chosen by the caller.
    pub agent_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Hardware uid; unique among the tenant's live machines. `None` for a collided
    /// endpoint (put the uid it claimed into `claimed_machine_uid`).
    pub machine_uid: Option<String>,
    /// For a collided endpoint: the uid it claimed, owned by another machine.
    pub claimed_machine_uid: Option<String>,
    /// Host name.
    pub hostname: String,
    /// OS family.
    pub os: String,
    /// OS version.
    pub os_version: String,
    /// Agent version.
    pub agent_version: String,
    /// External IP the server saw.
    pub external_ip: Option<String>,
    /// Enrollment site.
    pub site_id: Option<String>,
    /// Active, or pending with `pending_reason`.
    pub status: MachineStatus,
    /// Why it is pending.
    pub pending_reason: Option<String>,
    /// Company label.
    pub company: Option<String>,
    /// Site label.
    pub site: Option<String>,
    /// Department label.
    pub department: Option<String>,
    /// Device type label.
    pub device_type: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Last connection, if the endpoint is connected right now.
    pub last_seen: Option<Millis>,
    /// Creation time.
    pub created_at: Millis,
}

/// The writes of one enrollment, committed together by [`crate::Store::enroll`].
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The machine row to create, or `None` to re-enroll the live machine
    /// `key.agent_id`.
    pub new_machine: Option<NewMachine>,
    /// Enrollment site the machine is put into.
    pub site_id: String,
    /// Label changes applied to the machine.
    pub labels: MachineLabels,
    /// The machine's new key; `created_at` is the time of every write.
    pub key: AgentKey,
    /// Recorded with the key (`machine.enrolled`).
    pub event: NewEvent,
}

/// A fleet search for [`crate::Store::search_machines`].
///
/// `query` is whitespace-separated terms, all of which must match (AND):
/// - a bare term matches a case-insensitive substring of any attribute (agent id, uids,
///   hostname, OS and version, agent version, labels, tags, external IP, and from the
///   inventory: logged-on user, serial, CPU model, time zone, interface addresses and
///   MACs);
/// - `field:value` restricts the substring match to one field: `host:` (hostname),
///   `os:` (OS or OS version), `user:` (logged-on user), `ip:` (external IP or any
///   interface address), `site:` (site label), `tag:` (any tag), `company:`,
///   `version:` (agent version); field names are case-insensitive;
/// - `status:online` / `status:offline` (by `online_ids`), `status:pending` /
///   `status:active` (by the status column); any other status value matches nothing;
/// - a value may be double-quoted to include spaces (`site:"New York"`, `"john doe"`);
/// - `unknown:value` is a bare term for the whole text `unknown:value`;
/// - an empty value (`os:`, `""`) is ignored; `%`, `_` and `\` are literal characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineSearch {
    /// Tenant.
    pub tenant_id: String,
    /// The query text (may be empty: every live machine).
    pub query: String,
    /// Page size, clamped to `0..=1000`.
    pub limit: i64,
    /// Rows to skip; negative counts as 0.
    pub offset: i64,
    /// Agent ids connected right now (the store does not know live state); `None` is
    /// treated as "none online".
    pub online_ids: Option<Vec<String>>,
}

/// An enrollment site: installers built for it carry its code and enrollment key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    /// UUID text.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Short code agents present at enrollment; unique per tenant, compared
    /// case-insensitively.
    pub code: String,
    /// Argon2id PHC string of the enrollment key (computed by the caller); never
    /// serialized.
    #[serde(skip)]
    pub key_hash: String,
    /// Version of the enrollment key, bumped by each rotation (starts at 1).
    pub key_version: i64,
    /// Public fingerprint `vN (XXXX)`.
    pub key_fingerprint: String,
    /// Creation time.
    pub created_at: Millis,
    /// Last key rotation.
    pub rotated_at: Option<Millis>,
}

/// What an agent reports on connect; upserted by `agent_id`.
#[derive(Debug, Clone, Default)]
pub struct MachineUpsert {
    /// Agent id.
    pub agent_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Claimed machine uid (ignored by the caller for key-authenticated agents).
    pub machine_uid: Option<String>,
    /// Host name.
    pub hostname: String,
    /// OS family.
    pub os: String,
    /// OS version.
    pub os_version: String,
    /// Agent version.
    pub agent_version: String,
    /// External IP the server saw.
    pub external_ip: Option<String>,
    /// Time of the connect.
    pub seen_at: Millis,
}

/// A per-agent key (hash only; the plaintext is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentKey {
    /// UUID text.
    pub id: String,
    /// Machine the key belongs to.
    pub agent_id: String,
    /// Lowercase hex SHA-256 of the plaintext key.
    #[serde(skip)]
    pub key_hash: String,
    /// First characters of the key, for recognising it (`cak_ab12…`).
    pub prefix: String,
    /// Optional label.
    pub label: Option<String>,
    /// Issuing user id.
    pub created_by: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Last successful use.
    pub last_used_at: Option<Millis>,
    /// Revocation time.
    pub revoked_at: Option<Millis>,
}

/// A support code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupportCode {
    /// `XXX-XXX-XXX`.
    pub code: String,
    /// Tenant.
    pub tenant_id: String,
    /// Where it stands.
    pub status: CodeStatus,
    /// Creating user id.
    pub created_by: String,
    /// Creating username (display).
    pub created_by_name: String,
    /// Free-text note (customer name, ticket).
    pub note: Option<String>,
    /// Creation time.
    pub created_at: Millis,
    /// Expiry of the unused code.
    pub expires_at: Millis,
    /// When an agent bound to it.
    pub consumed_at: Option<Millis>,
    /// Session created from it.
    pub session_id: Option<String>,
    /// The name the customer gave on the join page, if any.
    pub customer_name: Option<String>,
}

/// A session row (durable record; live state is in the relay's registry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    /// UUID text.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Machine.
    pub agent_id: String,
    /// Attended or managed.
    pub kind: SessionKind,
    /// Support code for attended sessions.
    pub code: Option<String>,
    /// Where it stands.
    pub status: SessionStatus,
    /// Creation time.
    pub created_at: Millis,
    /// End time.
    pub ended_at: Option<Millis>,
    /// Why it ended.
    pub end_reason: Option<String>,
}

/// A published release: its signed manifest as uploaded, and what queries need from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    /// Semantic version (unique).
    pub version: String,
    /// `stable` or `beta`.
    pub channel: String,
    /// The manifest's JSON text, byte for byte as signed.
    pub manifest: String,
    /// Base64 Ed25519 signature over `manifest`.
    pub signature: String,
    /// Release notes (from the manifest).
    pub notes: String,
    /// Share of stable agents offered this release, 0–100 (staged rollout).
    pub rollout_percent: i64,
    /// Publishing user's name.
    pub created_by: String,
    /// Publication time.
    pub created_at: Millis,
}

/// Where a session recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    /// Being written.
    Recording,
    /// Closed normally; `sha256` is set.
    Complete,
    /// Stopped by an error (a full disk); the file is playable up to where it stops.
    Failed,
}

impl RecordingStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingStatus::Recording => "recording",
            RecordingStatus::Complete => "complete",
            RecordingStatus::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "recording" => Some(RecordingStatus::Recording),
            "complete" => Some(RecordingStatus::Complete),
            "failed" => Some(RecordingStatus::Failed),
            _ => None,
        }
    }
}

/// A session recording's row (its frames are in a file under the recordings directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recording {
    /// The recorded session's id (one recording per session).
    pub id: String,
    /// Tenant.
    #[serde(skip)]
    pub tenant_id: String,
    /// Session.
    pub session_id: String,
    /// Machine.
    pub agent_id: String,
    /// Machine host name when the session started.
    pub hostname: String,
    /// The recorded session's kind.
    pub kind: SessionKind,
    /// Where it stands.
    pub status: RecordingStatus,
    /// Start time.
    pub started_at: Millis,
    /// Close time.
    pub ended_at: Option<Millis>,
    /// File size.
    pub bytes: i64,
    /// Recorded time.
    pub duration_ms: i64,
    /// The file's SHA-256 (hex), once closed.
    pub sha256: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// How a recording ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingEnd {
    /// `Complete` or `Failed`.
    pub status: RecordingStatus,
    /// Close time.
    pub ended_at: Millis,
    /// File size.
    pub bytes: i64,
    /// Recorded time.
    pub duration_ms: i64,
    /// The file's SHA-256 (hex).
    pub sha256: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored name, the JSON name and `parse` agree for every variant.
    fn round_trips<T>(all: &[T], as_str: fn(T) -> &'static str, parse: fn(&str) -> Option<T>)
    where
        T: Copy + PartialEq + std::fmt::Debug + Serialize,
    {
        for &v in all {
            assert_eq!(parse(as_str(v)), Some(v));
            assert_eq!(
                serde_json::to_value(v).expect("json"),
                serde_json::Value::from(as_str(v))
            );
        }
        assert_eq!(parse("bogus"), None);
    }

    #[test]
    fn state_names_round_trip() {
        use CodeStatus as C;
        use SessionStatus as S;
        round_trips(
            &[MachineStatus::Active, MachineStatus::Pending],
            MachineStatus::as_str,
            MachineStatus::parse,
        );
        round_trips(
            &[C::Pending, C::Consumed, C::Cancelled, C::Ended, C::Denied],
            C::as_str,
            C::parse,
        );
        round_trips(
            &[SessionKind::Attended, SessionKind::Managed],
            SessionKind::as_str,
            SessionKind::parse,
        );
        round_trips(
            &[S::WaitingConsent, S::Active, S::Offline, S::Ended],
            S::as_str,
            S::parse,
        );
        round_trips(
            &[TokenKind::Login, TokenKind::Viewer],
            TokenKind::as_str,
            TokenKind::parse,
        );
        let recording = [
            RecordingStatus::Recording,
            RecordingStatus::Complete,
            RecordingStatus::Failed,
        ];
        round_trips(&recording, RecordingStatus::as_str, RecordingStatus::parse);
    }
}
