// Per-machine agent keys (admin): pick a machine, issue a key (shown once), list, revoke.

import { api } from '../api';
import { navigate, type PageContext } from '../router';
import { ago, dateTime, h, mount, pill, dataTable } from '../ui/dom';
import { busy, confirmAction, copyButton, errorBox, loading, showError, toast, toastError } from '../ui/feedback';
import type { AgentKey, CreatedKey, Machine, Page } from '../types';

export async function keysPage({ root, params, signal }: PageContext): Promise<void> {
  const agentId = params[0] ?? null;
  const picker = h('select', { id: 'key-machine', 'aria-label': 'Machine' }, h('option', { value: '' }, 'Loading machines…'));
  const provision = h('button', { class: 'btn', type: 'button' }, 'New machine…');
  const body = h('div', {});
  mount(
    root,
    h(
      'div',
      { class: 'card form-inline' },
      h('div', { class: 'field grow' }, h('label', { for: 'key-machine' }, 'Machine'), picker),
      h('div', { class: 'field' }, provision),
    ),
    body,
  );

  provision.addEventListener('click', () => {
    const hostname = h('input', { id: 'pre-hostname', placeholder: 'host name (optional)' });
    const label = h('input', { id: 'pre-label', placeholder: 'key label (optional)' });
    const submit = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Issue key for a new machine');
    const errorSlot = h('div', {});
    const form = h(
      'form',
      { class: 'card form-inline', 'aria-label': 'Pre-provision a machine' },
      h('div', { class: 'field grow' }, h('label', { for: 'pre-hostname' }, 'Host name'), hostname),
      h('div', { class: 'field grow' }, h('label', { for: 'pre-label' }, 'Key label'), label),
      h('div', { class: 'field' }, submit),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const id = crypto.randomUUID();
      void busy(submit, () => api.post<CreatedKey>(`/api/machines/${id}/keys`, { hostname: hostname.value.trim() || undefined, label: label.value.trim() || undefined }))
        .then((k) => {
          sessionStorage.setItem('gc.fresh-key', JSON.stringify(k));
          navigate(`/keys/${id}`);
        })
        .catch((err: unknown) => mount(errorSlot, errorBox(err)));
    });
    mount(body, h('p', { class: 'muted' }, 'Pre-provision a machine that has not connected yet: the agent installed with this key becomes this machine.'), form, errorSlot);
    hostname.focus();
  });

  picker.addEventListener('change', () => navigate(picker.value ? `/keys/${picker.value}` : '/keys'));

  try {
    const page = await api.get<Page<Machine>>('/api/machines', { limit: 1000 }, signal);
    mount(
      picker,
      h('option', { value: '' }, page.items.length ? 'Choose a machine…' : 'No machines yet'),
      page.items.map((m) => h('option', { value: m.agent_id, selected: m.agent_id === agentId }, `${m.hostname || '(unnamed)'} — ${m.agent_id.slice(0, 8)}${m.online ? ' (online)' : ''}`)),
    );
  } catch (e) {
    if (!signal.aborted) showError(body, e);
    return;
  }
  if (!agentId) {
    mount(body, h('div', { class: 'empty' }, h('p', {}, 'Choose a machine to see and manage its keys. Each key belongs to one machine and can be revoked on its own.')));
    return;
  }

  mount(body, machineKeys(agentId, signal));
}

/** Issue (shown once), list and revoke one machine's keys; the keys page and the machine page. */
export function machineKeys(agentId: string, signal: AbortSignal): HTMLElement {
  const freshSlot = h('div', {});
  const list = h('div', {}, loading());
  const label = h('input', { id: 'key-label', placeholder: 'e.g. installed 2024-06 by Sam', maxlength: '100' });
  const issue = h('button', { class: 'btn btn-primary', type: 'submit', 'data-testid': 'issue-key' }, 'Issue key');
  const form = h(
    'form',
    { class: 'card form-inline', 'aria-label': 'Issue a key' },
    h('div', { class: 'field grow' }, h('label', { for: 'key-label' }, 'Label'), label),
    h('div', { class: 'field' }, issue),
  );

  const showFresh = (k: CreatedKey) => {
    mount(
      freshSlot,
      h(
        'section',
        { class: 'code-card', 'aria-label': 'New agent key' },
        h('div', { class: 'code-card-label' }, 'Agent key — shown only once. Store it now.'),
        h('div', { class: 'key-big mono', 'data-testid': 'key-plain' }, k.agent_key),
        h('div', { class: 'code-card-meta' }, copyButton(() => k.agent_key, 'Copy key'), h('span', { class: 'muted' }, 'The server keeps only a hash; it cannot show this key again.')),
      ),
    );
  };
  const stored = sessionStorage.getItem('gc.fresh-key');
  sessionStorage.removeItem('gc.fresh-key');
  if (stored) {
    try {
      const k = JSON.parse(stored) as CreatedKey;
      if (k.agent_id === agentId) showFresh(k);
    } catch {
      // ignore a damaged value
    }
  }

  const load = async () => {
    try {
      const keys = await api.get<AgentKey[]>(`/api/machines/${agentId}/keys`, undefined, signal);
      if (!keys.length) {
        mount(list, h('div', { class: 'empty' }, h('p', {}, 'This machine has no keys.')));
        return;
      }
      mount(
        list,
        dataTable('keys-table', ['Key', 'Label', 'Status', 'Created', 'Last used', ''], keys.map((k) => {
          const revoke = h('button', { class: 'btn btn-sm btn-danger', type: 'button' }, 'Revoke');
          revoke.addEventListener('click', () => {
            void confirmAction('Revoke key', `Revoke ${k.prefix}…? An agent using it is disconnected and can no longer connect with it.`, 'Revoke key').then((ok) => {
              if (!ok) return;
              void busy(revoke, () => api.del(`/api/machines/${agentId}/keys/${k.id}`))
                .then(() => {
                  toast('Key revoked', 'ok');
                  void load();
                })
                .catch(toastError);
            });
          });
          return h(
            'tr',
            { 'data-key-id': k.id },
            h('td', { class: 'mono' }, `${k.prefix}…`),
            h('td', {}, k.label ?? h('span', { class: 'muted' }, '—')),
            h('td', {}, k.revoked_at ? pill('revoked', 'bad') : pill('active', 'ok')),
            h('td', {}, dateTime(k.created_at)),
            h('td', { title: dateTime(k.last_used_at) }, ago(k.last_used_at)),
            h('td', { class: 'actions' }, k.revoked_at ? null : revoke),
          );
        })),
      );
    } catch (e) {
      if (!signal.aborted) showError(list, e);
    }
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void busy(issue, () => api.post<CreatedKey>(`/api/machines/${agentId}/keys`, { label: label.value.trim() || undefined }))
      .then((k) => {
        label.value = '';
        showFresh(k);
        void load();
      })
      .catch((err: unknown) => mount(freshSlot, errorBox(err)));
  });
  const root = h('div', { 'data-testid': 'machine-keys' }, form, freshSlot, h('h2', { class: 'section-title' }, 'Keys of this machine'), list);
  void load();
  return root;
}
