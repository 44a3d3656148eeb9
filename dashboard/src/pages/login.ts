// Sign-in page.

import { api, ApiError } from '../api';
import * as session from '../session';
import { navigate, type PageContext } from '../router';
import { h, mount } from '../ui/dom';
import { errorBox } from '../ui/feedback';
import { brand, themeButton } from '../ui/shell';
import type { LoginResponse } from '../types';

export function loginPage({ root }: PageContext): void {
  const flash = session.takeFlash();
  const username = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const password = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const errorSlot = h('div', { class: 'form-error', 'data-testid': 'login-error' });
  const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    { class: 'login-card', 'aria-labelledby': 'login-title' },
    brand(),
    h('h1', { id: 'login-title' }, 'Sign in to your console'),
    flash ? h('div', { class: 'alert alert-info', role: 'status', 'data-testid': 'login-flash' }, flash) : null,
    errorSlot,
    h('label', { for: 'username' }, 'Username'),
    username,
    h('label', { for: 'password' }, 'Password'),
    password,
    submit,
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    errorSlot.replaceChildren();
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    api
      .post<LoginResponse>('/api/auth/login', { username: username.value.trim(), password: password.value }, { anonymous: true })
      .then((res) => {
        session.signedIn(res.token, res.user);
        const after = sessionStorage.getItem('gc.after-login');
        sessionStorage.removeItem('gc.after-login');
        navigate(after ?? '/machines');
      })
      .catch((err: unknown) => {
        mount(errorSlot, errorBox(err));
        password.value = '';
        password.focus();
        if (err instanceof ApiError && err.status === 0) username.focus();
      })
      .finally(() => {
        submit.disabled = false;
        submit.textContent = 'Sign in';
      });
  });
  mount(
    root,
    h(
      'div',
      { class: 'login-wrap' },
      form,
      h('div', { class: 'login-foot' }, h('span', {}, 'GuruConnect remote support'), themeButton()),
    ),
  );
  username.focus();
}
