// Machine bits shared by the Machines list and the machine page.

import { dateTime, h, pill } from './dom';
import { isOutdated, newestVersion } from '../version';
import type { Machine, Release, UpdateChannel, UpdateStatus } from '../types';

/** The OS as people name it: the agent reports `os` = "linux" and `os_version` =
 * "Debian GNU/Linux 12"; the version already says it all. */
export function osText(m: Pick<Machine, 'os' | 'os_version'>): string {
  return m.os_version?.trim() || m.os?.trim() || '—';
}

export function machineLabels(m: Machine): string[] {
  return [m.company, m.site, m.department, m.device_type, ...(m.tags ?? [])].filter((x): x is string => !!x);
}

export function statusPill(m: Machine): HTMLElement {
  if (m.status === 'pending') return pill('pending approval', 'warn');
  return m.online ? pill('online', 'ok') : pill('offline', 'muted');
}

/** A Join link: the viewer opens in a new tab (the sign-in is shared by every tab). */
export function viewerLink(sessionId: string, hostname: string): HTMLAnchorElement {
  return h(
    'a',
    {
      class: 'btn btn-primary btn-sm',
      href: `#/view/${encodeURIComponent(sessionId)}`,
      target: '_blank',
      rel: 'noopener',
      'aria-label': `Join ${hostname}`,
      'data-testid': 'join',
    },
    'Join',
  );
}

/** Join for a machine, or a disabled button when it is offline or pending approval. */
export function joinLink(m: Machine): HTMLElement {
  if (m.online && m.session_id && m.status !== 'pending') return viewerLink(m.session_id, m.hostname);
  return h('button', { class: 'btn btn-sm', type: 'button', disabled: true, title: m.status === 'pending' ? 'The machine is pending approval' : 'The machine is offline' }, 'Join');
}

/** What the console knows about the releases when it judges an agent's version. */
export interface ReleaseInfo {
  /** Every release (admins), or only the stable versions of the changelog. */
  releases: Pick<Release, 'version' | 'channel' | 'artifacts'>[];
  /** Whether `releases` carries artifacts (from `/api/releases`) or only versions. */
  withArtifacts: boolean;
  /** Each site's update channel, by site id. */
  siteChannels: Map<string, UpdateChannel | null>;
}

/** The machine's channel: its own, else its site's, else stable (as the server decides). */
export function effectiveChannel(m: Machine, info: Pick<ReleaseInfo, 'siteChannels'>): UpdateChannel {
  return m.update_channel ?? (m.site_id ? info.siteChannels.get(m.site_id) : null) ?? 'stable';
}

/** The newest release this machine could install: on its channel (beta also takes stable),
 * with an uploaded file for its OS when the artifacts are known. */
export function newestFor(m: Machine, info: ReleaseInfo): string | null {
  const channel = effectiveChannel(m, info);
  const os = (m.os ?? '').trim().toLowerCase();
  const candidates = info.releases.filter((r) => {
    if (r.channel !== 'stable' && !(channel === 'beta' && r.channel === 'beta')) return false;
    if (!info.withArtifacts) return true;
    return r.artifacts.some((a) => a.uploaded && (!os || a.platform === os || a.platform.startsWith(`${os}-`)));
  });
  return newestVersion(candidates.map((r) => r.version));
}

/** "outdated" pill when the agent is older than the newest release it could get. */
export function outdatedPill(m: Machine, info: ReleaseInfo | null): HTMLElement | null {
  if (!info) return null;
  const newest = newestFor(m, info);
  if (!isOutdated(m.agent_version, newest)) return null;
  const el = pill('outdated', 'warn');
  el.title = `${newest} is available on the ${effectiveChannel(m, info)} channel`;
  el.dataset.testid = 'outdated';
  return el;
}

const UPDATE_STATES: Record<string, { text: string; tone: 'ok' | 'warn' | 'bad' | 'info' | 'muted' }> = {
  queued: { text: 'update queued', tone: 'info' },
  checking: { text: 'checking for update', tone: 'info' },
  up_to_date: { text: 'up to date', tone: 'muted' },
  downloading: { text: 'downloading update', tone: 'info' },
  verifying: { text: 'verifying update', tone: 'info' },
  restarting: { text: 'restarting', tone: 'info' },
  done: { text: 'updated', tone: 'ok' },
  rolled_back: { text: 'update rolled back', tone: 'bad' },
  failed: { text: 'update failed', tone: 'bad' },
  offline: { text: 'offline: not queued', tone: 'muted' },
};

/** A pill for an update state (`queued`, `downloading`, … and the bulk answer's `offline`). */
export function updateStatePill(state: string): HTMLElement {
  const s = UPDATE_STATES[state] ?? { text: state.replace(/_/g, ' '), tone: 'muted' as const };
  const el = pill(s.text, s.tone);
  el.dataset.state = state;
  return el;
}

/** `downloading update · 1.4.0 · detail · 12:03`: the agent's last update report. */
export function updateStatusLine(st: UpdateStatus | null | undefined): HTMLElement {
  if (!st) return h('span', { class: 'muted', 'data-testid': 'update-status' }, 'No update reported yet.');
  return h(
    'span',
    { class: 'update-line', 'data-testid': 'update-status', 'data-state': st.state },
    updateStatePill(st.state),
    st.version ? h('span', { class: 'mono' }, st.version) : null,
    st.detail ? h('span', {}, st.detail) : null,
    st.at ? h('span', { class: 'muted small' }, dateTime(st.at)) : null,
  );
}
