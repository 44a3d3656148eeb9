// Sign-in page: password, then (when the account has one) the second factor.

import { api, ApiError } from '../api';
import * as session from '../session';
import { navigate, type PageContext } from '../router';
import { h, mount } from '../ui/dom';
import { errorBox } from '../ui/feedback';
import { brand, themeButton } from '../ui/shell';
import { isMfaRequired, type LoginOk, type LoginResponse } from '../types';

/** Stores a finished sign-in and goes where the user was headed (or to enrolment). */
function finish(res: LoginOk): void {
  const enrolOnly = res.totp_enrollment_required === true;
  session.signedIn(res.token, res.user, enrolOnly);
  session.setPasswordChangeRequired(res.password_change_required === true);
  if (enrolOnly || res.password_change_required) {
    navigate('/account');
    return;
  }
  const after = sessionStorage.getItem('gc.after-login');
  sessionStorage.removeItem('gc.after-login');
  navigate(after ?? '/machines');
}

/** The second step: a code from the authenticator app, or a recovery code. */
function secondStep(passwordForm: HTMLFormElement, mfaToken: string): void {
  let recovery = false;
  const label = h('label', { for: 'totp-code' }, 'Code from your authenticator app');
  const code = h('input', { id: 'totp-code', name: 'code', autocomplete: 'one-time-code', inputmode: 'numeric', required: true, autofocus: true });
  const errorSlot = h('div', { class: 'form-error', 'data-testid': 'totp-error' });
  const submit = h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Verify');
  const toggle = h('button', { class: 'btn btn-sm', type: 'button', 'data-testid': 'use-recovery-code' }, 'Use a recovery code');
  toggle.addEventListener('click', () => {
    recovery = !recovery;
    label.textContent = recovery ? 'Recovery code' : 'Code from your authenticator app';
    code.setAttribute('inputmode', recovery ? 'text' : 'numeric');
    code.setAttribute('autocomplete', recovery ? 'off' : 'one-time-code');
    toggle.textContent = recovery ? 'Use the authenticator app' : 'Use a recovery code';
    code.value = '';
    code.focus();
  });
  const card = h(
    'form',
    { class: 'login-card', 'aria-labelledby': 'login-title', 'data-testid': 'totp-form' },
    brand(),
    h('h1', { id: 'login-title' }, 'Two-factor sign-in'),
    h('p', { class: 'muted small' }, 'Enter the 6-digit code your authenticator app shows for GuruConnect.'),
    errorSlot,
    label,
    code,
    submit,
    h('div', {}, toggle),
  );
  passwordForm.replaceWith(card);
  card.addEventListener('submit', (e) => {
    e.preventDefault();
    errorSlot.replaceChildren();
    submit.disabled = true;
    const body = recovery ? { mfa_token: mfaToken, recovery_code: code.value.trim() } : { mfa_token: mfaToken, code: code.value.trim() };
    api
      .post<LoginOk>('/api/auth/login/totp', body, { anonymous: true })
      .then(finish)
      .catch((err: unknown) => {
        mount(errorSlot, errorBox(err));
        code.value = '';
        code.focus();
      })
      .finally(() => {
        submit.disabled = false;
      });
  });
  code.focus();
}

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
        if (isMfaRequired(res)) secondStep(form, res.mfa_token);
        else finish(res);
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
