// One machine, `#/machines/<agent_id>`: everything the server knows about it — inventory,
// labels and notes (admins edit them), agent updates (channel, Update now, the agent's
// progress), session history, its audit trail and keys (admins), and Approve / Remove.

import { api, ApiError } from '../api';
import * as session from '../session';
import { navigate, type PageContext } from '../router';
import { ago, bytes, dataTable, dateTime, duration, h, mount, pill } from '../ui/dom';
import { busy, confirmAction, errorBox, loading, showError, toast, toastError } from '../ui/feedback';
import { joinLink, machineLabels, osText, statusPill, updateStatusLine } from '../ui/machine';
import { machineKeys } from './keys';
import type { AuditEvent, EventPage, Inventory, Machine, Session, UpdateChannel } from '../types';

/** `3 d 4 h`, `2 h 5 min`, `4 min`, `12 s`. */
function seconds(n: number | undefined): string | null {
  if (n === undefined || n === null || !Number.isFinite(n)) return null;
  const s = Math.floor(n);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

const none = () => h('span', { class: 'muted' }, '—');

function fact(label: string, value: Node | string | null | undefined, testId?: string): (HTMLElement | null)[] {
  return [h('dt', {}, label), h('dd', testId ? { 'data-testid': testId } : {}, value === null || value === undefined || value === '' ? none() : value)];
}

function inventoryCard(m: Machine): HTMLElement {
  const inv: Inventory = m.inventory ?? {};
  const reported = Object.keys(inv).length > 0;
  const cpu = inv.cpu_model ? `${inv.cpu_model}${inv.cpu_count ? ` × ${inv.cpu_count}` : ''}` : inv.cpu_count ? `${inv.cpu_count} CPUs` : null;
  const interfaces = (inv.interfaces ?? []).filter((i) => i.name || i.mac || i.addresses?.length);
  return h(
    'section',
    { class: 'card', 'aria-labelledby': 'inv-title', 'data-testid': 'inventory' },
    h('h2', { id: 'inv-title' }, 'Inventory'),
    reported ? null : h('p', { class: 'muted small' }, 'The agent has not reported an inventory yet.'),
    h(
      'dl',
      { class: 'facts' },
      fact('Host name', m.hostname || inv.hostname, 'inv-hostname'),
      fact('OS', osText(m), 'inv-os'),
      fact('CPU', cpu, 'inv-cpu'),
      fact('Memory', inv.ram_bytes ? bytes(inv.ram_bytes) : null, 'inv-ram'),
      fact('Logged-on user', inv.logged_on_user, 'inv-user'),
      fact('Idle time', seconds(inv.idle_seconds), 'inv-idle'),
      fact('Uptime', seconds(inv.uptime_seconds), 'inv-uptime'),
      fact('Time zone', inv.time_zone),
      fact('Serial number', inv.serial ? h('span', { class: 'mono' }, inv.serial) : null),
      fact('Agent version', m.agent_version ? h('span', { class: 'mono' }, m.agent_version) : null, 'inv-agent'),
      fact('External IP', m.external_ip ? h('span', { class: 'mono' }, m.external_ip) : null),
      fact(
        'Interfaces',
        interfaces.length
          ? h(
              'ul',
              { class: 'plain-list', 'data-testid': 'inv-interfaces' },
              interfaces.map((i) =>
                h('li', {}, h('strong', {}, i.name || '(unnamed)'), i.mac ? h('span', { class: 'mono muted small' }, ` ${i.mac}`) : null, i.addresses?.length ? h('div', { class: 'mono small' }, i.addresses.join(', ')) : null),
              ),
            )
          : null,
      ),
      fact('Agent id', h('span', { class: 'mono small' }, m.agent_id)),
      fact('Last seen', m.online ? 'now (connected)' : m.last_seen ? `${ago(m.last_seen)} · ${dateTime(m.last_seen)}` : 'never'),
      fact('First seen', dateTime(m.created_at)),
    ),
    reported && m.last_seen ? h('p', { class: 'muted small' }, `Idle time and uptime as the agent last reported them (${ago(m.last_seen)}).`) : null,
  );
}

const LABEL_FIELDS = [
  ['company', 'Company'],
  ['site', 'Site'],
  ['department', 'Department'],
  ['device_type', 'Device type'],
] as const;

/** Labels: a form for admins, read-only for everyone else. */
function labelsCard(m: Machine, onSaved: (m: Machine) => void): HTMLElement {
  const card = h('section', { class: 'card', 'aria-labelledby': 'labels-title', 'data-testid': 'labels' }, h('h2', { id: 'labels-title' }, 'Labels and notes'));
  if (!session.isAdmin()) {
    card.append(
      h('dl', { class: 'facts' }, LABEL_FIELDS.flatMap(([k, label]) => fact(label, m[k])), fact('Tags', m.tags.length ? h('div', { class: 'chips' }, m.tags.map((t) => h('span', { class: 'chip' }, t))) : null)),
      h('h3', { class: 'small muted' }, 'Notes'),
      h('p', { class: 'notes-text', 'data-testid': 'machine-notes' }, m.notes ?? h('span', { class: 'muted' }, 'No notes.')),
    );
    return card;
  }
  const notes = h('textarea', { id: 'label-notes', name: 'notes', rows: 4, maxlength: '10000', placeholder: 'Anything the next technician should know: contacts, quirks, passwords go elsewhere.' });
  notes.value = m.notes ?? '';
  const inputs = Object.fromEntries(
    LABEL_FIELDS.map(([k]) => [k, h('input', { id: `label-${k}`, name: k, maxlength: '100', autocomplete: 'off' })]),
  ) as Record<(typeof LABEL_FIELDS)[number][0], HTMLInputElement>;
  for (const [k] of LABEL_FIELDS) inputs[k].value = m[k] ?? '';
  const tags = h('input', { id: 'label-tags', name: 'tags', autocomplete: 'off', placeholder: 'front-desk, printer' });
  tags.value = m.tags.join(', ');
  const save = h('button', { class: 'btn btn-primary', type: 'submit', 'data-testid': 'save-labels' }, 'Save labels and notes');
  const errorSlot = h('div', {});
  const form = h(
    'form',
    { class: 'form-stack', 'aria-label': 'Labels' },
    LABEL_FIELDS.flatMap(([k, label]) => [h('label', { for: `label-${k}` }, label), inputs[k]]),
    h('label', { for: 'label-tags' }, 'Tags ', h('span', { class: 'muted small' }, '(comma-separated)')),
    tags,
    h('label', { for: 'label-notes' }, 'Notes'),
    notes,
    errorSlot,
    h('div', { class: 'row', style: 'margin-top: 8px' }, save),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    errorSlot.replaceChildren();
    const body: Record<string, unknown> = {
      tags: tags.value
        .split(',')
        .map((t) => t.trim())
        .filter(Boolean),
    };
    for (const [k] of LABEL_FIELDS) body[k] = inputs[k].value.trim() || null;
    body.notes = notes.value.trim() || null;
    void busy(save, () => api.patch<Machine>(`/api/machines/${encodeURIComponent(m.agent_id)}`, body))
      .then((saved) => {
        toast('Labels and notes saved', 'ok');
        onSaved(saved);
      })
      .catch((err: unknown) => {
        if (!(err instanceof ApiError && err.handled)) mount(errorSlot, errorBox(err));
      });
  });
  card.append(form);
  return card;
}

const CHANNELS: [string, string][] = [
  ['', 'Inherit (the site’s, else the agent’s own)'],
  ['stable', 'Stable'],
  ['beta', 'Beta'],
];

/** Agent updates: the channel (admins change it), Update now (admins), and `statusSlot`,
 * which the page redraws with the agent's last report on every refresh. */
function updatesCard(m: Machine, path: string, statusSlot: HTMLElement, onChange: () => void): HTMLElement {
  const admin = session.isAdmin();
  const errorSlot = h('div', { 'data-testid': 'update-error' });
  const channel = h('select', { id: 'update-channel', class: 'select-sm', 'data-testid': 'update-channel', disabled: !admin }, CHANNELS.map(([v, label]) => h('option', { value: v }, label)));
  channel.value = m.update_channel ?? '';
  let saved = channel.value;
  channel.addEventListener('change', () => {
    errorSlot.replaceChildren();
    const value = (channel.value || null) as UpdateChannel | null;
    channel.disabled = true;
    api
      .patch<Machine>(path, { update_channel: value })
      .then((fresh) => {
        saved = fresh.update_channel ?? '';
        channel.value = saved;
        toast(`Update channel: ${value ?? 'inherited'}`, 'ok');
        onChange();
      })
      .catch((err: unknown) => {
        channel.value = saved;
        showError(errorSlot, err);
      })
      .finally(() => (channel.disabled = false));
  });
  const now = h('button', { class: 'btn btn-sm btn-primary', type: 'button', 'data-testid': 'update-now' }, 'Update now');
  now.addEventListener('click', () => {
    errorSlot.replaceChildren();
    void busy(now, () => api.post<{ request_id: string }>(`${path}/update`))
      .then(() => {
        toast('Update requested: the agent checks for a newer release now', 'ok');
        onChange();
      })
      .catch((err: unknown) => showError(errorSlot, err));
  });
  return h(
    'section',
    { class: 'card', 'aria-labelledby': 'updates-title', 'data-testid': 'updates' },
    h('h2', { id: 'updates-title' }, 'Agent updates'),
    h(
      'div',
      { class: 'form-inline' },
      h('div', { class: 'field' }, h('label', { for: 'update-channel' }, 'Update channel'), channel),
      admin ? h('div', { class: 'field' }, now) : null,
    ),
    h('dl', { class: 'facts', style: 'margin-top: 12px' }, h('dt', {}, 'Last update'), h('dd', {}, statusSlot)),
    errorSlot,
  );
}

function sessionRow(s: Session): HTMLElement {
  const end = s.ended_at ?? (s.status === 'ended' ? null : Date.now());
  return h(
    'tr',
    { 'data-session-id': s.id },
    h('td', { class: 'nowrap' }, dateTime(s.created_at)),
    h('td', {}, s.kind === 'attended' ? pill(`attended${s.code ? ' · ' + s.code : ''}`, 'info') : pill('managed', 'muted')),
    h('td', {}, s.status === 'ended' ? pill('ended', 'muted') : s.live ? pill(s.status === 'waiting_consent' ? 'waiting for consent' : 'active', s.status === 'active' ? 'ok' : 'warn') : pill('agent offline', 'muted')),
    h('td', { class: 'mono' }, end ? duration(end - s.created_at) : '—'),
    h('td', {}, s.end_reason ?? (s.live?.viewers.length ? s.live.viewers.map((v) => v.username).join(', ') : none())),
  );
}

function eventRow(e: AuditEvent): HTMLElement {
  const details = e.details && typeof e.details === 'object' && Object.keys(e.details).length ? JSON.stringify(e.details) : '';
  return h(
    'tr',
    {},
    h('td', { class: 'nowrap' }, dateTime(e.created_at)),
    h('td', {}, h('code', {}, e.event_type)),
    h('td', {}, e.username ?? (e.user_id ? e.user_id.slice(0, 8) : none())),
    h('td', { class: 'mono small' }, e.client_ip ?? '—'),
    h('td', { class: 'details small mono', title: details }, details),
  );
}

export function machinePage({ root, params, signal }: PageContext): () => void {
  const agentId = params[0] ?? '';
  const path = `/api/machines/${encodeURIComponent(agentId)}`;
  const heading = root.closest('.main-col')?.querySelector<HTMLElement>('.page-head h1') ?? null;
  const head = h('div', { class: 'toolbar' }, loading());
  const pendingSlot = h('div', {});
  const inventorySlot = h('div', {});
  const labelsSlot = h('div', {});
  const updatesSlot = h('div', {});
  const updateStatusSlot = h('span', {});
  const sessionsSlot = h('div', {}, loading('Loading sessions…'));
  const eventsSlot = h('div', {});
  const keysSlot = h('div', {});
  let machine: Machine | null = null;

  const drawHead = (m: Machine) => {
    if (heading) heading.textContent = m.hostname || '(unnamed)';
    document.title = `${m.hostname || 'Machine'} · GuruConnect`;
    const approve = h('button', { class: 'btn btn-primary btn-sm', type: 'button', 'data-testid': 'approve' }, 'Approve');
    approve.addEventListener('click', () => {
      void confirmAction('Approve machine', `Approve ${m.hostname}? Technicians can then connect to it.`, 'Approve', 'primary').then((ok) => {
        if (!ok) return;
        void busy(approve, () => api.post<Machine>(`${path}/approve`))
          .then((fresh) => {
            toast('Machine approved', 'ok');
            draw(fresh);
          })
          .catch(toastError);
      });
    });
    const remove = h('button', { class: 'btn btn-danger btn-sm', type: 'button', 'data-testid': 'remove' }, 'Remove');
    remove.addEventListener('click', () => {
      void confirmAction('Remove machine', `Remove ${m.hostname}? Its keys stop working and a live session ends. The audit trail is kept.`, 'Remove machine').then((ok) => {
        if (!ok) return;
        void busy(remove, () => api.del(path))
          .then(() => {
            toast('Machine removed', 'ok');
            navigate('/machines');
          })
          .catch(toastError);
      });
    });
    mount(
      head,
      h('a', { class: 'btn btn-ghost btn-sm', href: '#/machines' }, '← Machines'),
      h('span', { 'data-testid': 'machine-status' }, statusPill(m)),
      h('span', { class: 'muted', 'data-testid': 'machine-os' }, osText(m)),
      machineLabels(m).length ? h('div', { class: 'chips' }, machineLabels(m).map((l) => h('span', { class: 'chip' }, l))) : null,
      h('span', { class: 'spacer' }),
      joinLink(m),
      m.online && m.session_id && m.status !== 'pending' && session.can('terminal')
        ? h('a', { class: 'btn btn-sm', href: `#/terminal/${encodeURIComponent(m.session_id)}`, target: '_blank', rel: 'noopener', 'aria-label': `Terminal on ${m.hostname}`, 'data-testid': 'terminal-link' }, 'Terminal')
        : null,
      session.isAdmin() && m.status === 'pending' ? approve : null,
      session.isAdmin() ? remove : null,
    );
    mount(
      pendingSlot,
      m.status === 'pending'
        ? h('div', { class: 'alert alert-warn', role: 'status' }, `This machine is waiting for an administrator's approval${m.pending_reason ? ` (${m.pending_reason.replace(/_/g, ' ')})` : ''}: nobody can connect to it until then.`)
        : null,
    );
  };

  const draw = (m: Machine) => {
    machine = m;
    drawHead(m);
    mount(inventorySlot, inventoryCard(m));
    mount(updateStatusSlot, updateStatusLine(m.update_status));
  };

  const drawLabels = (m: Machine) =>
    mount(
      labelsSlot,
      labelsCard(m, (saved) => {
        draw(saved);
        drawLabels(saved);
        void loadEvents();
      }),
    );

  const loadSessions = async () => {
    try {
      const list = await api.get<Session[]>('/api/sessions', { agent_id: agentId, all: true, limit: 50 }, signal);
      mount(
        sessionsSlot,
        list.length
          ? dataTable('machine-sessions', ['Started', 'Kind', 'State', 'Duration', 'Ended / watching'], list.map(sessionRow))
          : h('div', { class: 'empty' }, h('p', {}, 'No sessions yet.')),
      );
    } catch (e) {
      if (!signal.aborted) showError(sessionsSlot, e);
    }
  };

  const loadEvents = async () => {
    if (!session.isAdmin()) return;
    mount(eventsSlot, loading('Loading events…'));
    try {
      const page = await api.get<EventPage>('/api/events', { agent_id: agentId, limit: 50 }, signal);
      mount(
        eventsSlot,
        page.items.length
          ? dataTable('machine-events', ['Time', 'Event', 'User', 'IP', 'Details'], page.items.map(eventRow))
          : h('div', { class: 'empty' }, h('p', {}, 'No events for this machine.')),
        page.next_before_id !== null ? h('p', { class: 'muted small' }, 'The 50 newest events; the ', h('a', { href: '#/audit' }, 'audit log'), ' has them all.') : null,
      );
    } catch (e) {
      if (!signal.aborted) showError(eventsSlot, e);
    }
  };

  const load = async (first: boolean) => {
    try {
      const m = await api.get<Machine>(path, undefined, signal);
      draw(m);
      // The form is drawn once: a refresh must not overwrite what an admin is typing.
      if (first) {
        drawLabels(m);
        mount(updatesSlot, updatesCard(m, path, updateStatusSlot, () => void load(false)));
      }
      return true;
    } catch (e) {
      if (signal.aborted) return false;
      if (e instanceof ApiError && e.status === 404) {
        if (heading) heading.textContent = 'Machine not found';
        mount(root, h('div', { class: 'empty' }, h('h2', {}, 'No such machine'), h('p', {}, 'It may have been removed.'), h('a', { class: 'btn', href: '#/machines' }, 'Back to machines')));
        return false;
      }
      if (first) showError(head, e);
      return false;
    }
  };

  mount(
    root,
    head,
    pendingSlot,
    h('div', { class: 'grid-2' }, inventorySlot, h('div', {}, labelsSlot, updatesSlot)),
    h('h2', { class: 'section-title' }, 'Sessions'),
    sessionsSlot,
    session.isAdmin() ? [h('h2', { class: 'section-title' }, 'Keys'), keysSlot, h('h2', { class: 'section-title' }, 'Audit trail'), eventsSlot] : null,
  );
  void load(true).then((ok) => {
    if (!ok) return;
    void loadSessions();
    void loadEvents();
    if (session.isAdmin()) mount(keysSlot, machineKeys(agentId, signal));
  });
  const timer = window.setInterval(() => {
    if (machine) void load(false).then((ok) => (ok ? loadSessions() : undefined));
  }, 10_000);
  return () => window.clearInterval(timer);
}
