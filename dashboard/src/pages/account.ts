// Account: who am I, change password, sign out.

import { api } from '../api';
import * as session from '../session';
import type { PageContext } from '../router';
import { h, mount, pill } from '../ui/dom';
import { busy, errorBox, toast } from '../ui/feedback';
import { signOut } from '../ui/shell';
import type { User } from '../types';

export function accountPage({ root, signal }: PageContext): void {
  const info = h('div', { class: 'card' });
  const drawInfo = (u: User | null) => {
    if (!u) return;
    mount(
      info,
      h('dl', { class: 'facts' },
        h('dt', {}, 'Username'), h('dd', { class: 'strong' }, u.username),
        h('dt', {}, 'Role'), h('dd', {}, pill(u.role, 'info')),
        h('dt', {}, 'Permissions'), h('dd', {}, h('div', { class: 'chips' }, u.permissions.map((p) => h('span', { class: 'chip' }, p.replace(/_/g, ' '))))),
      ),
    );
  };
  drawInfo(session.currentUser());
  api
    .get<User>('/api/auth/me', undefined, signal)
    .then((u) => {
      session.setUser(u);
      drawInfo(u);
    })
    .catch(() => {});

  const current = h('input', { id: 'current-password', type: 'password', autocomplete: 'current-password', required: true });
  const next = h('input', { id: 'new-password', type: 'password', autocomplete: 'new-password', required: true });
  const confirm = h('input', { id: 'confirm-password', type: 'password', autocomplete: 'new-password', required: true });
  const submit = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Change password');
  const result = h('div', {});
  const form = h(
    'form',
    { class: 'card form-stack', 'aria-label': 'Change password' },
    h('h2', {}, 'Change password'),
    result,
    h('label', { for: 'current-password' }, 'Current password'), current,
    h('label', { for: 'new-password' }, 'New password'), next,
    h('label', { for: 'confirm-password' }, 'Repeat the new password'), confirm,
    h('p', { class: 'muted small' }, 'Changing your password signs out your other sessions.'),
    h('div', {}, submit),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    result.replaceChildren();
    if (next.value !== confirm.value) {
      mount(result, h('div', { class: 'alert alert-bad', role: 'alert' }, 'The new passwords do not match.'));
      return;
    }
    void busy(submit, () =>
      api.post<{ other_tokens_revoked: number }>('/api/auth/change-password', { current_password: current.value, new_password: next.value }, { expected401: 'current password is wrong' }),
    )
      .then((r) => {
        form.reset();
        toast('Password changed', 'ok');
        mount(result, h('div', { class: 'alert alert-ok', role: 'status' }, `Password changed. ${r?.other_tokens_revoked ?? 0} other session(s) signed out.`));
      })
      .catch((err: unknown) => mount(result, errorBox(err)));
  });
  const out = h('button', { class: 'btn', type: 'button' }, 'Sign out');
  out.addEventListener('click', () => void busy(out, signOut));
  mount(root, h('div', { class: 'grid-2' }, h('div', {}, info, h('div', { class: 'card' }, h('h2', {}, 'Session'), h('p', { class: 'muted' }, 'Your sign-in lasts 24 hours in this browser tab.'), out)), form));
}
