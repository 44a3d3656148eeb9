// Machines: online state, last seen, labels, the agent's version (outdated ones marked),
// the server's field-scoped search, Join, and (admins) updating selected machines.

import { api, ApiError } from '../api';
import * as session from '../session';
import type { PageContext } from '../router';
import { ago, dateTime, h, icon, mount, dataTable } from '../ui/dom';
import { busy, errorBox, loading, showError, toast } from '../ui/feedback';
import { joinLink, machineLabels, osText, outdatedPill, statusPill, updateStatePill, type ReleaseInfo } from '../ui/machine';
import type { BulkUpdateResult, ChangelogEntry, Machine, Page, ReleaseList, Site } from '../types';

/** Most rows one page shows (the server's maximum). */
const LIMIT = 1000;
/** Typing pause before a search goes to the server. */
const DEBOUNCE_MS = 300;
/** A finished update stays on the list this long. */
const UPDATE_SHOWN_MS = 24 * 3600 * 1000;

/** The releases the machines are judged against: all of them with their files for admins,
 * the changelog's stable versions for everyone else; null when neither loads. */
async function releaseInfo(signal: AbortSignal): Promise<ReleaseInfo | null> {
  try {
    if (session.isAdmin()) {
      const [l, sites] = await Promise.all([api.get<ReleaseList>('/api/releases', undefined, signal), api.get<Site[]>('/api/sites', undefined, signal)]);
      return { releases: l.items, withArtifacts: true, siteChannels: new Map(sites.map((x) => [x.id, x.update_channel ?? null])) };
    }
    const log = await api.get<{ items: ChangelogEntry[] }>('/api/changelog', undefined, signal);
    return { releases: log.items.map((c) => ({ version: c.version, channel: 'stable', artifacts: [] })), withArtifacts: false, siteChannels: new Map() };
  } catch {
    return null;
  }
}

/** The agent's update step, while it runs and for a day after. */
function recentUpdate(m: Machine): HTMLElement | null {
  const st = m.update_status;
  if (!st || st.state === 'up_to_date') return null;
  if (['done', 'rolled_back', 'failed'].includes(st.state) && st.at && Date.now() - st.at > UPDATE_SHOWN_MS) return null;
  const el = updateStatePill(st.state);
  el.title = [st.version, st.detail].filter(Boolean).join(' · ');
  return el;
}

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
  const admin = session.isAdmin();
  /** Selected agent ids (admins): kept across the 10 s refresh. */
  const selected = new Set<string>();
  let shown: Machine[] = [];
  const selCount = h('span', { class: 'muted', 'data-testid': 'selected-count' });
  const updateSelected = h('button', { class: 'btn btn-sm btn-primary', type: 'button', 'data-testid': 'update-selected', disabled: true }, 'Update selected');
  const clearSelection = h('button', { class: 'btn btn-sm btn-ghost', type: 'button' }, 'Clear selection');
  const bulkResults = h('div', { 'data-testid': 'bulk-results' });
  const bulkBar = h('div', { class: 'bulk-bar', hidden: !admin }, selCount, updateSelected, clearSelection);
  const syncSelection = () => {
    selCount.textContent = selected.size ? `${selected.size} selected` : 'Select machines to update them';
    updateSelected.disabled = selected.size === 0;
    clearSelection.hidden = selected.size === 0;
    const all = body.querySelector<HTMLInputElement>('input[data-testid=select-all]');
    if (all) {
      const n = shown.filter((m) => selected.has(m.agent_id)).length;
      all.checked = n > 0 && n === shown.length;
      all.indeterminate = n > 0 && n < shown.length;
    }
  };
  clearSelection.addEventListener('click', () => {
    selected.clear();
    body.querySelectorAll<HTMLInputElement>('input[data-action=select]').forEach((c) => (c.checked = false));
    syncSelection();
  });
  updateSelected.addEventListener('click', () => {
    const ids = [...selected];
    const names = new Map(shown.map((m) => [m.agent_id, m.hostname || m.agent_id]));
    bulkResults.replaceChildren();
    void busy(updateSelected, () => api.post<BulkUpdateResult>('/api/machines/update', { agent_ids: ids }))
      .then((r) => {
        const queued = r.items.filter((i) => i.state === 'queued').length;
        toast(`Update queued on ${queued} of ${r.items.length} machine${r.items.length === 1 ? '' : 's'}`, queued ? 'ok' : 'info');
        mount(
          bulkResults,
          h('h2', { class: 'section-title' }, 'Update requests'),
          dataTable('bulk-results-table', ['Machine', 'Result'], r.items.map((i) =>
            h('tr', { 'data-agent-id': i.agent_id }, h('td', {}, names.get(i.agent_id) ?? i.agent_id), h('td', {}, updateStatePill(i.state))),
          )),
          h('p', { class: 'muted small' }, 'Offline machines check for updates when they reconnect. Progress shows in the Agent column.'),
        );
        void load();
      })
      .catch((err: unknown) => showError(bulkResults, err));
  });
  // Only the newest request may draw: an older, slower answer is dropped.
  let inflight: AbortController | null = null;
  let debounce = 0;

  const table = (machines: Machine[], total: number, q: string, info: ReleaseInfo | null) => {
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
    const selectAll = h('input', { type: 'checkbox', 'aria-label': 'Select all shown machines', 'data-testid': 'select-all' });
    selectAll.addEventListener('change', () => {
      for (const m of machines) {
        if (selectAll.checked) selected.add(m.agent_id);
        else selected.delete(m.agent_id);
      }
      body.querySelectorAll<HTMLInputElement>('input[data-action=select]').forEach((c) => (c.checked = selectAll.checked));
      syncSelection();
    });
    const selectBox = (m: Machine) => {
      const box = h('input', { type: 'checkbox', 'data-action': 'select', 'aria-label': `Select ${m.hostname || m.agent_id}` });
      box.checked = selected.has(m.agent_id);
      box.addEventListener('change', () => {
        if (box.checked) selected.add(m.agent_id);
        else selected.delete(m.agent_id);
        syncSelection();
      });
      return box;
    };
    const heads: (string | Node)[] = ['Status', 'Machine', 'OS', 'Labels', 'Agent', 'Last seen', ''];
    return dataTable('machines-table', admin ? [selectAll, ...heads] : heads, machines.map((m) =>
      h(
        'tr',
        { 'data-agent-id': m.agent_id },
        admin ? h('td', {}, selectBox(m)) : null,
        h('td', {}, statusPill(m)),
        h(
          'td',
          {},
          h('a', { class: 'strong', href: `#/machines/${encodeURIComponent(m.agent_id)}`, 'data-testid': 'machine-link' }, m.hostname || '(unnamed)'),
          h('div', { class: 'muted small mono' }, m.external_ip ?? m.agent_id.slice(0, 8)),
        ),
        h('td', { 'data-testid': 'os' }, osText(m)),
        h('td', {}, machineLabels(m).length ? h('div', { class: 'chips' }, machineLabels(m).map((l) => h('span', { class: 'chip' }, l))) : h('span', { class: 'muted' }, '—')),
        h('td', { 'data-testid': 'agent' }, h('div', { class: 'agent-cell' }, h('span', { class: 'mono small', 'data-testid': 'agent-version' }, m.agent_version || '—'), outdatedPill(m, info), recentUpdate(m))),
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
      const [page, info] = await Promise.all([api.get<Page<Machine>>('/api/machines', { q, limit: LIMIT }, mine.signal), releaseInfo(mine.signal)]);
      if (inflight !== mine) return;
      shown = page.items;
      // A machine that left the list (search, removal) leaves the selection.
      const ids = new Set(shown.map((m) => m.agent_id));
      for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
      mount(body, table(page.items, page.total, q, info));
      body.dataset.query = q;
      syncSelection();
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
    admin ? bulkBar : null,
    body,
    bulkResults,
  );
  void load();
  const timer = window.setInterval(() => void load(), 10_000);
  return () => {
    window.clearInterval(timer);
    window.clearTimeout(debounce);
    inflight?.abort();
  };
}
