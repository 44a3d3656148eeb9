// Audit log (admin): filters, newest first, "load more" pagination by before_id.

import { api, ApiError } from '../api';
import type { PageContext } from '../router';
import { dateTime, h, mount, dataTable } from '../ui/dom';
import { busy, loading, showError } from '../ui/feedback';
import type { AuditEvent, EventPage } from '../types';

const TYPES = [
  'auth.login_success', 'auth.login_failure', 'auth.logout', 'auth.password_changed',
  'user.created', 'user.updated', 'user.deleted',
  'code.created', 'code.consumed', 'code.cancelled',
  'session.created', 'session.ended', 'session.removed', 'session.viewer_token_minted',
  'viewer.joined', 'viewer.left',
  'consent.requested', 'consent.granted', 'consent.denied',
  'key.issued', 'key.revoked', 'machine.removed',
];

function toMillis(local: string): number | null {
  if (!local) return null;
  const t = new Date(local).getTime();
  return Number.isFinite(t) ? t : null;
}

function details(d: unknown): string {
  if (d === null || d === undefined) return '';
  if (typeof d === 'object' && Object.keys(d as object).length === 0) return '';
  return JSON.stringify(d);
}

export function auditPage({ root, signal }: PageContext): void {
  const type = h('select', { id: 'f-type' }, h('option', { value: '' }, 'All events'), TYPES.map((t) => h('option', { value: t }, t)));
  const user = h('input', { id: 'f-user', placeholder: 'user name or id' });
  const agent = h('input', { id: 'f-agent', placeholder: 'agent id' });
  const since = h('input', { id: 'f-since', type: 'datetime-local' });
  const until = h('input', { id: 'f-until', type: 'datetime-local' });
  const apply = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Apply');
  const more = h('button', { class: 'btn', type: 'button', 'data-testid': 'load-more' }, 'Load more');
  const tbody = h('tbody', {});
  const status = h('div', {});
  const footer = h('div', { class: 'table-foot' });
  let nextBefore: number | null = null;
  let shown = 0;

  const row = (e: AuditEvent) =>
    h(
      'tr',
      {},
      h('td', { class: 'nowrap' }, dateTime(e.created_at)),
      h('td', {}, h('code', {}, e.event_type)),
      h('td', {}, e.username ?? (e.user_id ? e.user_id.slice(0, 8) : h('span', { class: 'muted' }, '—'))),
      h(
        'td',
        { class: 'small', title: e.agent_id ?? '' },
        e.agent_id ? (e.hostname ? h('span', { class: 'strong' }, e.hostname) : h('span', { class: 'mono' }, e.agent_id.slice(0, 8))) : '—',
        e.session_id ? h('div', { class: 'muted mono' }, `session ${e.session_id.slice(0, 8)}`) : null,
      ),
      h('td', { class: 'mono small' }, e.client_ip ?? '—'),
      h('td', { class: 'details small mono', title: details(e.details) }, details(e.details)),
    );

  const fetchPage = async (before: number | null) => {
    const page = await api.get<EventPage>(
      '/api/events',
      {
        type: type.value,
        user: user.value.trim(),
        agent_id: agent.value.trim(),
        since: toMillis(since.value),
        until: toMillis(until.value),
        before_id: before,
        limit: 50,
      },
      signal,
    );
    tbody.append(...page.items.map(row));
    shown += page.items.length;
    nextBefore = page.next_before_id ?? null;
    mount(footer, h('span', { class: 'muted' }, `${shown} event${shown === 1 ? '' : 's'} shown`), nextBefore !== null ? more : null);
  };

  const reload = async () => {
    tbody.replaceChildren();
    shown = 0;
    mount(status, loading('Loading events…'));
    try {
      await fetchPage(null);
      status.replaceChildren();
      if (!shown) mount(status, h('div', { class: 'empty' }, h('p', {}, 'No events match these filters.')));
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status === 404) {
        mount(status, h('div', { class: 'alert alert-warn', role: 'status' }, 'This server does not provide the audit log API yet (GET /api/events).'));
        footer.replaceChildren();
      } else showError(status, e);
    }
  };

  more.addEventListener('click', () => {
    if (nextBefore === null) return;
    void busy(more, () => fetchPage(nextBefore)).catch((e: unknown) => showError(status, e));
  });
  const form = h(
    'form',
    { class: 'card form-inline filters', 'aria-label': 'Filter events' },
    h('div', { class: 'field' }, h('label', { for: 'f-type' }, 'Type'), type),
    h('div', { class: 'field' }, h('label', { for: 'f-user' }, 'User'), user),
    h('div', { class: 'field' }, h('label', { for: 'f-agent' }, 'Machine'), agent),
    h('div', { class: 'field' }, h('label', { for: 'f-since' }, 'Since'), since),
    h('div', { class: 'field' }, h('label', { for: 'f-until' }, 'Until'), until),
    h('div', { class: 'field' }, apply),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void busy(apply, reload);
  });
  mount(
    root,
    form,
    dataTable('events-table', ['Time', 'Event', 'User', 'Machine', 'IP', 'Details'], tbody),
    status,
    footer,
  );
  void reload();
}
