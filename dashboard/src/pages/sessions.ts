// Live sessions: machine, kind, phase, viewers, duration; admins can end one.

import { api } from '../api';
import * as session from '../session';
import type { PageContext } from '../router';
import { dateTime, duration, h, mount, pill, dataTable } from '../ui/dom';
import { busy, confirmAction, loading, showError, toast, toastError } from '../ui/feedback';
import { viewerLink } from '../ui/machine';
import type { Session } from '../types';

function phasePill(s: Session): HTMLElement {
  const phase = s.live?.phase ?? s.status;
  if (!s.live) return pill('agent offline', 'muted');
  if (phase === 'waiting_consent') return pill('waiting for consent', 'warn');
  if (phase === 'active') return pill('active', 'ok');
  return pill(phase, 'muted');
}

/** A Terminal link: a shell on the machine, in a new tab (permission `terminal`). */
function terminalLink(sessionId: string, hostname: string): HTMLAnchorElement {
  return h('a', { class: 'btn btn-sm', href: `#/terminal/${encodeURIComponent(sessionId)}`, target: '_blank', rel: 'noopener', 'aria-label': `Terminal on ${hostname}`, 'data-testid': 'terminal-link' }, 'Terminal');
}

/** A select for one filter; `values` are the choices after "all". */
function filterSelect(id: string, label: string, values: [string, string][]): HTMLSelectElement {
  return h('select', { id, 'aria-label': label, 'data-testid': id }, h('option', { value: '' }, `${label}: all`), ...values.map(([v, text]) => h('option', { value: v }, text)));
}

export function sessionsPage({ root, signal }: PageContext): () => void {
  let sessions: Session[] = [];
  const body = h('div', {}, loading());
  const filters = h('div', { class: 'session-filters', style: 'display:flex;gap:8px;flex-wrap:wrap' });
  const chosen = { kind: '', company: '', site: '', watched: '' };
  let choices = '';
  /** Rebuilds the company and site choices when what is listed changes them. */
  const drawFilters = () => {
    const distinct = (pick: (s: Session) => string | null | undefined) =>
      [...new Set(sessions.map(pick).filter((x): x is string => !!x))].sort().map((v): [string, string] => [v, v]);
    const companies = distinct((s) => s.machine?.company);
    const sites = distinct((s) => s.machine?.site);
    const now = JSON.stringify([companies, sites]);
    // Rebuilding would close a select the user has open.
    if (now === choices) return;
    choices = now;
    const selects = [
      filterSelect('filter-kind', 'Kind', [['attended', 'attended'], ['managed', 'managed']]),
      filterSelect('filter-company', 'Company', companies),
      filterSelect('filter-site', 'Site', sites),
      filterSelect('filter-watched', 'Watched', [['yes', 'watched'], ['no', 'nobody watching']]),
    ];
    const keys = ['kind', 'company', 'site', 'watched'] as const;
    selects.forEach((select, i) => {
      const key = keys[i];
      select.value = chosen[key];
      if (select.value !== chosen[key]) chosen[key] = '';
      select.addEventListener('change', () => {
        chosen[key] = select.value;
        draw();
      });
    });
    mount(filters, ...selects);
  };
  const shown = () =>
    sessions.filter((s) => {
      const watched = (s.live?.viewers.length ?? 0) > 0;
      return (
        (!chosen.kind || s.kind === chosen.kind) &&
        (!chosen.company || s.machine?.company === chosen.company) &&
        (!chosen.site || s.machine?.site === chosen.site) &&
        (!chosen.watched || (chosen.watched === 'yes') === watched)
      );
    });
  const draw = () => {
    if (!sessions.length) {
      mount(body, h('div', { class: 'empty' }, h('h2', {}, 'No live sessions'), h('p', {}, 'Sessions appear when an agent connects with a support code or a machine key.')));
      return;
    }
    const rows = shown();
    if (!rows.length) {
      mount(body, h('div', { class: 'empty' }, h('p', {}, 'No live session matches these filters.')));
      return;
    }
    mount(
      body,
      dataTable('sessions-table', ['Machine', 'Customer', 'Kind', 'State', 'Watching', 'Duration', ''], rows.map((s) => {
        const viewers = s.live?.viewers ?? [];
        const started = s.live?.started_at ?? s.created_at;
        const end = h('button', { class: 'btn btn-danger btn-sm', type: 'button' }, 'End');
        end.addEventListener('click', () => {
          void confirmAction('End session', `End the session with ${s.live?.hostname ?? s.agent_id}? Everyone watching is disconnected.`, 'End session').then((ok) => {
            if (!ok) return;
            void busy(end, () => api.del(`/api/sessions/${s.id}`))
              .then(() => {
                toast('Session ended', 'ok');
                void load();
              })
              .catch(toastError);
          });
        });
        return h(
          'tr',
          { 'data-session-id': s.id },
          h('td', {}, h('div', { class: 'strong' }, s.live?.hostname ?? s.machine?.hostname ?? '—'), h('div', { class: 'muted small mono' }, s.id.slice(0, 8))),
          h(
            'td',
            { 'data-testid': 'session-customer' },
            s.customer ? h('div', {}, s.customer) : null,
            [s.machine?.company, s.machine?.site].some(Boolean) ? h('div', { class: 'muted small' }, [s.machine?.company, s.machine?.site].filter(Boolean).join(' · ')) : null,
            !s.customer && !s.machine?.company && !s.machine?.site ? h('span', { class: 'muted' }, '—') : null,
          ),
          h('td', {}, s.kind === 'attended' ? pill(`attended${s.code ? ' · ' + s.code : ''}`, 'info') : pill('managed', 'muted')),
          h('td', {}, phasePill(s)),
          h(
            'td',
            {},
            viewers.length
              ? h('div', { class: 'chips' }, viewers.map((v) => h('span', { class: 'chip', title: v.access_mode }, `${v.username}${v.access_mode === 'view_only' ? ' (view)' : ''}`)))
              : h('span', { class: 'muted' }, 'nobody'),
          ),
          h('td', { class: 'mono', title: `started ${dateTime(started)}`, 'data-started': String(started) }, duration(Date.now() - started)),
          h(
            'td',
            { class: 'actions' },
            s.live ? viewerLink(s.id, s.live.hostname) : null,
            s.live && session.can('terminal') ? terminalLink(s.id, s.live.hostname) : null,
            session.isAdmin() ? end : null,
          ),
        );
      })),
    );
  };
  const load = async () => {
    try {
      sessions = await api.get<Session[]>('/api/sessions', undefined, signal);
      drawFilters();
      draw();
    } catch (e) {
      if (!signal.aborted) showError(body, e);
    }
  };
  mount(root, h('div', { class: 'toolbar' }, filters, h('span', { class: 'spacer' }), h('span', { class: 'muted small' }, 'Refreshes every 5 s')), body);
  void load();
  const poll = window.setInterval(() => void load(), 5000);
  // Durations tick every second without refetching.
  const tick = window.setInterval(() => {
    body.querySelectorAll<HTMLElement>('td[data-started]').forEach((td) => {
      td.textContent = duration(Date.now() - Number(td.dataset.started));
    });
  }, 1000);
  return () => {
    window.clearInterval(poll);
    window.clearInterval(tick);
  };
}
