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

export function sessionsPage({ root, signal }: PageContext): () => void {
  let sessions: Session[] = [];
  const body = h('div', {}, loading());
  const draw = () => {
    if (!sessions.length) {
      mount(body, h('div', { class: 'empty' }, h('h2', {}, 'No live sessions'), h('p', {}, 'Sessions appear when an agent connects with a support code or a machine key.')));
      return;
    }
    mount(
      body,
      dataTable('sessions-table', ['Machine', 'Kind', 'State', 'Watching', 'Duration', ''], sessions.map((s) => {
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
          h('td', {}, h('div', { class: 'strong' }, s.live?.hostname ?? '—'), h('div', { class: 'muted small mono' }, s.id.slice(0, 8))),
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
            session.isAdmin() ? end : null,
          ),
        );
      })),
    );
  };
  const load = async () => {
    try {
      sessions = await api.get<Session[]>('/api/sessions', undefined, signal);
      draw();
    } catch (e) {
      if (!signal.aborted) showError(body, e);
    }
  };
  mount(root, h('div', { class: 'toolbar' }, h('span', { class: 'muted' }, 'Connected agents and who is watching them.'), h('span', { class: 'spacer' }), h('span', { class: 'muted small' }, 'Refreshes every 5 s')), body);
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
