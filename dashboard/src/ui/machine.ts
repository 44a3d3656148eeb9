// Machine bits shared by the Machines list and the machine page.

import { h, pill } from './dom';
import type { Machine } from '../types';

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
