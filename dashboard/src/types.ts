// JSON shapes of the server's REST API (crates/server/src/api/*.rs).

export interface User {
  id: string;
  username: string;
  role: 'admin' | 'technician' | 'viewer' | string;
  permissions: string[];
  disabled: boolean;
  /** Sign-in asks for a TOTP code after the password. */
  totp_enabled: boolean;
  created_at: number;
}

/** Signed in; `totp_enrollment_required` marks a sign-in that may only enrol a second factor. */
export interface LoginOk {
  token: string;
  expires_at: number;
  user: User;
  totp_enrollment_required?: boolean;
  /** The account still has the password the server generated at first start. */
  password_change_required?: boolean;
}

/** The password was right; the second factor is still to come. */
export interface MfaRequired {
  mfa_required: true;
  mfa_token: string;
  expires_at: number;
}

export type LoginResponse = LoginOk | MfaRequired;

export function isMfaRequired(r: LoginResponse): r is MfaRequired {
  return 'mfa_required' in r && r.mfa_required;
}

/** `GET /api/auth/me`. */
export interface Me extends User {
  totp_required: boolean;
  totp_enrollment_required: boolean;
  password_change_required: boolean;
}

/** `POST /api/auth/totp/setup`: shown once. */
export interface TotpSetup {
  secret: string;
  otpauth_uri: string;
  qr_svg_data_url: string;
}

/** `POST /api/auth/totp/confirm`: recovery codes shown once; an enrol-only sign-in also gets a full one. */
export interface TotpConfirmed {
  recovery_codes: string[];
  token?: string;
  user?: User;
}

export interface Machine {
  agent_id: string;
  tenant_id: string;
  machine_uid: string | null;
  hostname: string;
  os: string;
  os_version: string;
  agent_version: string;
  company: string | null;
  site: string | null;
  department: string | null;
  device_type: string | null;
  tags: string[];
  inventory: Inventory | null;
  external_ip: string | null;
  status: string;
  /** Why the machine is pending (e.g. `machine_uid_collision`). */
  pending_reason?: string | null;
  last_seen: number | null;
  created_at: number;
  /** Technicians' notes (free text). */
  notes: string | null;
  online: boolean;
  session_id: string | null;
  /** Enrollment site the machine belongs to. */
  site_id?: string | null;
  /** `stable` or `beta`; null inherits the site's (else stable). */
  update_channel?: UpdateChannel | null;
  /** The agent's last reported update step. */
  update_status?: UpdateStatus | null;
}

export type UpdateChannel = 'stable' | 'beta';

/** An agent's update progress (`UpdateStatus`, crates/server/src/api/releases.rs). */
export interface UpdateStatus {
  state: 'queued' | 'checking' | 'up_to_date' | 'downloading' | 'verifying' | 'restarting' | 'done' | 'rolled_back' | 'failed' | string;
  version?: string | null;
  detail?: string | null;
  request_id?: string | null;
  at?: number | null;
}

/** One platform's file of a release. */
export interface ReleaseArtifact {
  platform: string;
  file: string;
  size: number;
  sha256: string;
  min_version: string | null;
  /** The file is on the server (agents are offered only uploaded ones). */
  uploaded: boolean;
  url: string;
}

export interface Release {
  version: string;
  channel: UpdateChannel | string;
  notes: string;
  rollout_percent: number;
  created_by: string;
  created_at: number;
  artifacts: ReleaseArtifact[];
}

/** `GET /api/releases`. */
export interface ReleaseList {
  items: Release[];
  updates_enabled: boolean;
  key_fingerprint: string | null;
  /** Why updates are off. */
  reason: string | null;
}

/** What `guruconnect-release sign` writes and `POST /api/releases` takes. */
export interface SignedRelease {
  manifest: string;
  signature: string;
}

/** `GET /api/changelog` item. */
export interface ChangelogEntry {
  version: string;
  date: number;
  notes: string;
}

/** `POST /api/machines/update` answer. */
export interface BulkUpdateResult {
  items: { agent_id: string; state: 'queued' | 'offline' | string }[];
}

/** What the agent last reported (`AgentStatus`, crates/server/src/relay/agent.rs). */
export interface Inventory {
  hostname?: string;
  os?: string;
  os_version?: string;
  agent_version?: string;
  cpu_model?: string;
  cpu_count?: number;
  ram_bytes?: number;
  serial?: string;
  interfaces?: { name: string; mac: string; addresses: string[] }[];
  logged_on_user?: string;
  idle_seconds?: number;
  time_zone?: string;
  uptime_seconds?: number;
}

export interface Page<T> {
  items: T[];
  total: number;
  limit: number;
  offset: number;
}

export interface ViewerSnapshot {
  viewer_id: string;
  username: string;
  access_mode: 'control' | 'view_only';
}

export interface LiveSnapshot {
  id: string;
  agent_id: string;
  hostname: string;
  kind: 'attended' | 'managed';
  phase: 'waiting_consent' | 'active' | 'ended' | string;
  started_at: number;
  viewers: ViewerSnapshot[];
}

export interface Session {
  id: string;
  tenant_id: string;
  agent_id: string;
  kind: 'attended' | 'managed' | string;
  code: string | null;
  status: 'waiting_consent' | 'active' | 'ended' | string;
  created_at: number;
  ended_at: number | null;
  end_reason: string | null;
  live: LiveSnapshot | null;
  /** The support code's note: who the session is for. */
  customer: string | null;
  /** The machine's name and labels (null when the machine was removed). */
  machine: { hostname: string; company: string | null; site: string | null } | null;
}

export interface SupportCode {
  /** Stable id; the full code is only in the creation response. */
  id: string;
  /** Full code on creation, masked (•••-•••-XYZ) in lists. */
  code: string;
  status: 'pending' | 'consumed' | 'cancelled' | 'ended' | 'denied' | 'expired' | string;
  note: string | null;
  /** The name the customer gave on the join page. */
  customer_name: string | null;
  created_by: string;
  created_at: number;
  expires_at: number;
  session_id: string | null;
}

export interface AgentKey {
  id: string;
  agent_id: string;
  prefix: string;
  label: string | null;
  created_by: string | null;
  created_at: number;
  last_used_at: number | null;
  revoked_at: number | null;
}

export interface CreatedKey extends AgentKey {
  agent_key: string;
}

/** A site (SPEC §4.13): machines installed with its enrollment key enroll into it. */
export interface Site {
  id: string;
  name: string;
  /** Short public code used by installers (`HQ`, `NEW-YORK`). */
  code: string;
  key_version: number;
  /** `vN (XXXX)`: key version and the first four hex digits of the key's SHA-256. */
  key_fingerprint: string;
  created_at: number;
  rotated_at: number | null;
  /** Channel of its machines that have none of their own (list only; null: stable). */
  update_channel?: UpdateChannel | null;
}

/** A platform a site installer is made for. */
export type InstallerPlatform = 'linux' | 'windows';

/** `GET /api/installers`: what this server can serve, and what to configure otherwise. */
export type InstallerAvailability = Record<
  InstallerPlatform,
  { available: boolean; agent_served: boolean; hint?: string; signed?: boolean }
>;

/** Creation and rotation answers: the only ones that carry the enrollment key. */
export interface SiteWithKey extends Site {
  enrollment_key: string;
}

export interface ViewerToken {
  token: string;
  session_id: string;
  access_mode: 'control' | 'view_only';
  expires_at: number;
  ws_path: string;
}

export interface AuditEvent {
  id: number;
  created_at: number;
  event_type: string;
  user_id: string | null;
  username: string | null;
  agent_id: string | null;
  /** Host name of the machine the event names, when the server knows it. */
  hostname?: string;
  session_id: string | null;
  client_ip: string | null;
  details: unknown;
}

export interface EventPage {
  items: AuditEvent[];
  next_before_id: number | null;
}

/** The server's error envelope (SPEC §4.11). */
export interface ErrorEnvelope {
  detail: string;
  error_code: string;
  status_code: number;
  correlation_id: string;
}

/** A session recording (docs/recordings.md). */
export interface Recording {
  /** The recorded session's id. */
  id: string;
  session_id: string;
  agent_id: string;
  hostname: string;
  kind: 'managed' | 'attended' | string;
  started_at: number;
  ended_at: number | null;
  bytes: number;
  duration_ms: number;
  sha256: string | null;
  status: 'recording' | 'complete' | 'failed' | string;
  error: string | null;
}

/** A timeline event of a recording's index. */
export interface RecordingEvent {
  t: number;
  type: 'chat' | 'viewer_joined' | 'viewer_left' | 'input' | 'consent' | string;
  user?: string;
  mode?: string;
  from?: string;
  text?: string;
  granted?: boolean;
}

/** `GET /api/recordings/{id}`: the recording and the index built from its file. */
export interface RecordingDetail extends Recording {
  keyframes: { t: number; offset: number }[];
  events: RecordingEvent[];
  end_t: number;
}

/** `GET/PUT /api/settings/recording`. */
export interface RecordingPolicy {
  mode: 'off' | 'all' | 'sites';
  /** Site ids, for mode `sites`. */
  sites: string[];
  retention_days: number;
}
