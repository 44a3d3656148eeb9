// Machines: online state, last seen, labels, the server's field-scoped search, Join.

import { api, ApiError } from '../api';
import * as session from '../session';
import type { PageContext } from '../router';
import { ago, dateTime, h, icon, mount, dataTable } from '../ui/dom';
import { errorBox, loading, showError } from '../ui/feedback';
import { joinLink, machineLabels, osText, statusPill } from '../ui/machine';
import type { Machine, Page } from '../types';

/** Most rows one page shows (the server's maximum). */
const LIMIT = 1000;
/** Typing pause before a search goes to the server. */
const DEBOUNCE_MS = 300;

export function machinesPage({ root, signal }: PageContext): () => void {
  const search = h('input', {
    type: 'search',
    class: 'search-input',
    placeholder: 'Search, e.g. site:"Head Office" tag:front-desk',
    'aria-label': 'Search machines',
    'aria-describedby': 'machine-search-help',
    'data-testid': 'machine-search',
  });
  search.value = sessionStorage.getItem('gc.machines.q') ?? '';
  const count = h('span', { class: 'muted', 'data-testid': 'machine-count' });
  const help = h(
    'p',
    { class: 'muted small', id: 'machine-search-help' },
    'Words match any attribute; narrow with ',
    ['host:', 'os:', 'user:', 'ip:', 'site:', 'tag:', 'company:', 'version:', 'status:online'].flatMap((f, i) => [i ? ', ' : '', h('code', {}, f)]),
    '. Quote values with spaces.',
  );
  const body = h('div', {}, loading());
  // Only the newest request may draw: an older, slower answer is dropped.
  let inflight: AbortController | null = null;
  let debounce = 0;

  const table = (machines: Machine[], total: number, q: string) => {
    const shown = machines.length < total ? `${machines.length} of ${total}` : String(total);
    count.textContent = q ? `${shown} matching` : `${shown} machine${total === 1 ? '' : 's'}`;
    if (!machines.length && !q) {
      return h(
        'div',
        { class: 'empty' },
        h('h2', {}, 'No machines yet'),
        h('p', {}, 'Machines appear here when an agent connects: give a customer a support code, or install a managed agent with a per-machine key.'),
        session.can('manage_codes') ? h('a', { class: 'btn btn-primary', href: '#/codes' }, 'Create a support code') : null,
      );
    }
    if (!machines.length) return h('div', { class: 'empty', 'data-testid': 'no-match' }, h('p', {}, `No machine matches “${q}”.`));
    return dataTable('machines-table', ['Status', 'Machine', 'OS', 'Labels', 'Agent', 'Last seen', ''], machines.map((m) =>
      h(
        'tr',
        { 'data-agent-id': m.agent_id },
        h('td', {}, statusPill(m)),
        h(
          'td',
          {},
          h('a', { class: 'strong', href: `#/machines/${encodeURIComponent(m.agent_id)}`, 'data-testid': 'machine-link' }, m.hostname || '(unnamed)'),
          h('div', { class: 'muted small mono' }, m.external_ip ?? m.agent_id.slice(0, 8)),
        ),
        h('td', { 'data-testid': 'os' }, osText(m)),
        h('td', {}, machineLabels(m).length ? h('div', { class: 'chips' }, machineLabels(m).map((l) => h('span', { class: 'chip' }, l))) : h('span', { class: 'muted' }, '—')),
        h('td', { class: 'mono small' }, m.agent_version || '—'),
        h('td', { title: dateTime(m.last_seen) }, m.online ? 'now' : ago(m.last_seen)),
        h(
          'td',
          { class: 'actions' },
          joinLink(m),
          session.isAdmin() ? h('a', { class: 'btn btn-ghost btn-sm', href: `#/keys/${m.agent_id}`, title: 'Agent keys' }, icon('keys'), h('span', { class: 'sr-only' }, 'Keys')) : null,
        ),
      ),
    ));
  };

  const load = async () => {
    inflight?.abort();
    const mine = new AbortController();
    inflight = mine;
    const stop = () => mine.abort();
    signal.addEventListener('abort', stop);
    const q = search.value.trim();
    try {
      const page = await api.get<Page<Machine>>('/api/machines', { q, limit: LIMIT }, mine.signal);
      if (inflight !== mine) return;
      mount(body, table(page.items, page.total, q));
      body.dataset.query = q;
    } catch (e) {
      if (mine.signal.aborted || inflight !== mine) return;
      if (e instanceof ApiError && !e.handled && (e.status === 400 || e.status === 422)) {
        // A query the server refuses: its message, in place of the table.
        count.textContent = '';
        mount(body, h('div', { 'data-testid': 'search-error' }, errorBox(e)));
        body.dataset.query = q;
        return;
      }
      showError(body, e);
    } finally {
      signal.removeEventListener('abort', stop);
    }
  };

  search.addEventListener('input', () => {
    sessionStorage.setItem('gc.machines.q', search.value);
    window.clearTimeout(debounce);
    debounce = window.setTimeout(() => void load(), DEBOUNCE_MS);
  });
  mount(
    root,
    h('div', { class: 'toolbar' }, h('label', { class: 'search search-wide' }, icon('search'), search), count, h('span', { class: 'spacer' }), h('span', { class: 'muted small' }, 'Refreshes every 10 s')),
    help,
    body,
  );
  void load();
  const timer = window.setInterval(() => void load(), 10_000);
  return () => {
    window.clearInterval(timer);
    window.clearTimeout(debounce);
    inflight?.abort();
  };
}
