// Machines: online state, last seen, labels, client-side search, Join.

import { api } from '../api';
import * as session from '../session';
import { navigate, type PageContext } from '../router';
import { ago, dateTime, h, icon, mount, pill, dataTable } from '../ui/dom';
import { loading, showError } from '../ui/feedback';
import type { Machine, Page } from '../types';

function labels(m: Machine): string[] {
  return [m.company, m.site, m.department, m.device_type, ...(m.tags ?? [])].filter((x): x is string => !!x);
}

/** Case-insensitive substring match of every term against the machine's attributes. */
export function matches(m: Machine, query: string): boolean {
  const terms = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!terms.length) return true;
  const hay = [m.hostname, m.os, m.os_version, m.agent_version, m.external_ip, m.agent_id, m.online ? 'online' : 'offline', ...labels(m)]
    .filter(Boolean)
    .join(' ')
    .toLowerCase();
  return terms.every((t) => hay.includes(t));
}

export function machinesPage({ root, signal }: PageContext): () => void {
  let machines: Machine[] = [];
  let total = 0;
  const search = h('input', {
    type: 'search',
    class: 'search-input',
    placeholder: 'Search host name, OS, label, IP…',
    'aria-label': 'Search machines',
    'data-testid': 'machine-search',
  });
  search.value = sessionStorage.getItem('gc.machines.q') ?? '';
  const count = h('span', { class: 'muted' });
  const body = h('div', {}, loading());
  const table = () => {
    const rows = machines.filter((m) => matches(m, search.value));
    count.textContent = `${rows.length} of ${total} machine${total === 1 ? '' : 's'}`;
    if (!machines.length) {
      return h(
        'div',
        { class: 'empty' },
        h('h2', {}, 'No machines yet'),
        h('p', {}, 'Machines appear here when an agent connects: give a customer a support code, or install a managed agent with a per-machine key.'),
        session.can('manage_codes') ? h('a', { class: 'btn btn-primary', href: '#/codes' }, 'Create a support code') : null,
      );
    }
    if (!rows.length) return h('div', { class: 'empty' }, h('p', {}, `No machine matches “${search.value}”.`));
    return dataTable('machines-table', ['Status', 'Machine', 'OS', 'Labels', 'Agent', 'Last seen', ''], rows.map((m) =>
      h(
        'tr',
        { 'data-agent-id': m.agent_id },
        h('td', {}, m.status === 'pending' ? pill('pending approval', 'warn') : m.online ? pill('online', 'ok') : pill('offline', 'muted')),
        h('td', {}, h('div', { class: 'strong' }, m.hostname || '(unnamed)'), h('div', { class: 'muted small mono' }, m.external_ip ?? m.agent_id.slice(0, 8))),
        h('td', {}, [m.os, m.os_version].filter(Boolean).join(' ') || '—'),
        h('td', {}, labels(m).length ? h('div', { class: 'chips' }, labels(m).map((l) => h('span', { class: 'chip' }, l))) : h('span', { class: 'muted' }, '—')),
        h('td', { class: 'mono small' }, m.agent_version || '—'),
        h('td', { title: dateTime(m.last_seen) }, m.online ? 'now' : ago(m.last_seen)),
        h(
          'td',
          { class: 'actions' },
          m.online && m.session_id
            ? h('button', { class: 'btn btn-primary btn-sm', type: 'button', onclick: () => navigate(`/view/${m.session_id}`), 'aria-label': `Join ${m.hostname}` }, 'Join')
            : h('button', { class: 'btn btn-sm', type: 'button', disabled: true, title: 'The machine is offline' }, 'Join'),
          session.isAdmin() ? h('a', { class: 'btn btn-ghost btn-sm', href: `#/keys/${m.agent_id}`, title: 'Agent keys' }, icon('keys'), h('span', { class: 'sr-only' }, 'Keys')) : null,
        ),
      ),
    ));
  };
  const draw = () => mount(body, table());
  search.addEventListener('input', () => {
    sessionStorage.setItem('gc.machines.q', search.value);
    if (machines.length) draw();
  });
  const load = async () => {
    try {
      const page = await api.get<Page<Machine>>('/api/machines', { limit: 1000 }, signal);
      machines = page.items;
      total = page.total;
      draw();
    } catch (e) {
      if (!signal.aborted) showError(body, e);
    }
  };
  mount(
    root,
    h('div', { class: 'toolbar' }, h('label', { class: 'search' }, icon('search'), search), count, h('span', { class: 'spacer' }), h('span', { class: 'muted small' }, 'Refreshes every 10 s')),
    body,
  );
  void load();
  const timer = window.setInterval(() => void load(), 10_000);
  return () => window.clearInterval(timer);
}
