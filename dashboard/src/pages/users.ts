// Users (admin): create, change role, reset password, reset two-factor sign-in,
// disable/enable, delete.

import { api } from '../api';
import * as session from '../session';
import type { PageContext } from '../router';
import { dateTime, h, mount, pill, dataTable } from '../ui/dom';
import { busy, confirmAction, errorBox, loading, modal, showError, toast, toastError } from '../ui/feedback';
import type { User } from '../types';

const ROLES = ['admin', 'technician', 'viewer'];

function roleSelect(value: string, attrs: Record<string, string> = {}): HTMLSelectElement {
  return h('select', attrs, ROLES.map((r) => h('option', { value: r, selected: r === value }, r)));
}

async function askPassword(username: string): Promise<string | null> {
  const input = h('input', { type: 'password', id: 'reset-password', autocomplete: 'new-password', minlength: '8' });
  const body = h('div', {}, h('label', { for: 'reset-password' }, `New password for ${username}`), input, h('p', { class: 'muted small' }, 'Their current sessions are signed out.'));
  setTimeout(() => input.focus(), 0);
  const v = await modal({ title: 'Reset password', body, actions: [{ label: 'Cancel', value: 'no', tone: 'plain' }, { label: 'Reset password', value: 'yes', tone: 'primary' }] });
  return v === 'yes' && input.value ? input.value : null;
}

export function usersPage({ root, signal }: PageContext): void {
  let users: User[] = [];
  const list = h('div', {}, loading());
  const me = session.currentUser();

  const act = (btn: HTMLButtonElement, work: () => Promise<unknown>, done: string) =>
    void busy(btn, work)
      .then(() => {
        toast(done, 'ok');
        void load();
      })
      .catch((e: unknown) => {
        toastError(e);
        void load();
      });

  const draw = () => {
    mount(
      list,
      dataTable('users-table', ['User', 'Role', 'Status', '2FA', 'Created', ''], users.map((u) => {
        const role = roleSelect(u.role, { 'aria-label': `Role of ${u.username}` });
        role.addEventListener('change', () => {
          role.disabled = true;
          api
            .patch<User>(`/api/users/${u.id}`, { role: role.value })
            .then(() => toast(`${u.username} is now ${role.value}`, 'ok'))
            .catch(toastError)
            .finally(() => void load());
        });
        const reset = h('button', { class: 'btn btn-sm', type: 'button' }, 'Reset password');
        reset.addEventListener('click', () => {
          void askPassword(u.username).then((pw) => {
            if (pw) act(reset, () => api.patch(`/api/users/${u.id}`, { password: pw }), `Password of ${u.username} reset`);
          });
        });
        let resetTotp: HTMLButtonElement | null = null;
        if (u.totp_enabled) {
          const btn = h('button', { class: 'btn btn-sm', type: 'button', 'aria-label': `Reset 2FA of ${u.username}` }, 'Reset 2FA');
          btn.addEventListener('click', () => {
            void confirmAction('Reset two-factor sign-in', `Remove ${u.username}'s authenticator and recovery codes? They sign in with their password only until they set it up again (at once, if their role requires it).`, 'Reset 2FA').then((ok) => {
              if (ok) act(btn, () => api.post(`/api/users/${u.id}/totp/reset`), `Two-factor sign-in of ${u.username} reset`);
            });
          });
          resetTotp = btn;
        }
        const disable = h('button', { class: 'btn btn-sm', type: 'button' }, u.disabled ? 'Enable' : 'Disable');
        disable.addEventListener('click', () => act(disable, () => api.patch(`/api/users/${u.id}`, { disabled: !u.disabled }), `${u.username} ${u.disabled ? 'enabled' : 'disabled'}`));
        const del = h('button', { class: 'btn btn-sm btn-danger', type: 'button', 'aria-label': `Delete ${u.username}` }, 'Delete');
        del.addEventListener('click', () => {
          void confirmAction('Delete user', `Delete ${u.username}? This cannot be undone.`, 'Delete user').then((ok) => {
            if (ok) act(del, () => api.del(`/api/users/${u.id}`), `${u.username} deleted`);
          });
        });
        const self = u.id === me?.id;
        return h(
          'tr',
          { 'data-username': u.username },
          h('td', { class: 'strong' }, u.username, self ? h('span', { class: 'muted small' }, ' (you)') : null),
          h('td', {}, role),
          h('td', {}, u.disabled ? pill('disabled', 'bad') : pill('active', 'ok')),
          h('td', {}, u.totp_enabled ? pill('on', 'ok') : pill('off', 'muted')),
          h('td', {}, dateTime(u.created_at)),
          h('td', { class: 'actions' }, reset, resetTotp, self ? null : disable, self ? null : del),
        );
      })),
    );
  };

  const load = async () => {
    try {
      users = await api.get<User[]>('/api/users', undefined, signal);
      draw();
    } catch (e) {
      if (!signal.aborted) showError(list, e);
    }
  };

  const username = h('input', { id: 'new-username', autocomplete: 'off', required: true, minlength: '2', maxlength: '64', pattern: '[A-Za-z0-9._@\\-]+' });
  const password = h('input', { id: 'new-password', type: 'password', autocomplete: 'new-password', required: true });
  const role = roleSelect('technician', { id: 'new-role' });
  const submit = h('button', { class: 'btn btn-primary', type: 'submit', 'data-testid': 'create-user' }, 'Create user');
  const formError = h('div', {});
  const form = h(
    'form',
    { class: 'card form-inline', 'aria-label': 'Create a user' },
    h('div', { class: 'field grow' }, h('label', { for: 'new-username' }, 'Username'), username),
    h('div', { class: 'field grow' }, h('label', { for: 'new-password' }, 'Password'), password),
    h('div', { class: 'field' }, h('label', { for: 'new-role' }, 'Role'), role),
    h('div', { class: 'field' }, submit),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    formError.replaceChildren();
    void busy(submit, () => api.post<User>('/api/users', { username: username.value.trim(), password: password.value, role: role.value }))
      .then((u) => {
        toast(`User ${u.username} created`, 'ok');
        username.value = '';
        password.value = '';
        void load();
      })
      .catch((err: unknown) => mount(formError, errorBox(err)));
  });
  mount(root, form, formError, h('h2', { class: 'section-title' }, 'All users'), list);
  void load();
}
