// Account: who am I, two-factor sign-in, change password, sign out.

import { api } from '../api';
import * as session from '../session';
import type { PageContext } from '../router';
import { h, mount, pill } from '../ui/dom';
import { busy, copyButton, errorBox, toast } from '../ui/feedback';
import { signOut } from '../ui/shell';
import { navigate } from '../router';
import type { Me, TotpConfirmed, TotpSetup, User } from '../types';

/** The two-factor card: enrol (QR code, secret, confirm, recovery codes once) or disable. */
function twoFactorCard(): { card: HTMLElement; draw: (me: Me | User | null) => void } {
  const card = h('section', { class: 'card form-stack', 'aria-label': 'Two-factor sign-in', 'data-testid': 'totp-card' });
  const draw = (me: Me | User | null) => {
    if (!me) return;
    const required = 'totp_required' in me && me.totp_required;
    if (me.totp_enabled) drawEnabled(me, required);
    else drawOff(required);
  };

  const drawOff = (required: boolean) => {
    const start = h('button', { class: 'btn btn-primary', type: 'button', 'data-testid': 'totp-start' }, 'Set up two-factor sign-in');
    const result = h('div', {});
    start.addEventListener('click', () => {
      result.replaceChildren();
      void busy(start, () => api.post<TotpSetup>('/api/auth/totp/setup'))
        .then((setup) => drawSetup(setup))
        .catch((err: unknown) => mount(result, errorBox(err)));
    });
    mount(
      card,
      h('h2', {}, 'Two-factor sign-in'),
      required
        ? h('div', { class: 'alert alert-warn', role: 'alert', 'data-testid': 'totp-required' }, 'Your role requires two-factor sign-in. Set it up to continue.')
        : h('p', { class: 'muted' }, 'Off. With it on, signing in also asks for a code from an authenticator app.'),
      result,
      h('div', {}, start),
    );
  };

  const drawSetup = (setup: TotpSetup) => {
    const code = h('input', { id: 'totp-confirm-code', autocomplete: 'one-time-code', inputmode: 'numeric', required: true });
    const submit = h('button', { class: 'btn btn-primary', type: 'submit' }, 'Turn on');
    const result = h('div', {});
    const form = h(
      'form',
      { class: 'form-stack', 'aria-label': 'Confirm two-factor sign-in' },
      h('label', { for: 'totp-confirm-code' }, 'Code shown by the app'),
      code,
      h('div', {}, submit),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      result.replaceChildren();
      void busy(submit, () => api.post<TotpConfirmed>('/api/auth/totp/confirm', { code: code.value.trim() }))
        .then((done) => {
          if (done.token && done.user) session.signedIn(done.token, done.user);
          const me = session.currentUser();
          if (me) session.setUser({ ...me, totp_enabled: true });
          toast('Two-factor sign-in is on', 'ok');
          drawRecovery(done.recovery_codes);
        })
        .catch((err: unknown) => {
          mount(result, errorBox(err));
          code.value = '';
          code.focus();
        });
    });
    mount(
      card,
      h('h2', {}, 'Two-factor sign-in'),
      h('p', {}, 'Scan this QR code with an authenticator app, or type the key in by hand, then enter the code it shows.'),
      h('img', { src: setup.qr_svg_data_url, alt: 'QR code for your authenticator app', width: 200, height: 200, 'data-testid': 'totp-qr' }),
      h('p', { class: 'small' }, 'Key: ', h('code', { 'data-testid': 'totp-secret' }, setup.secret)),
      result,
      form,
    );
    code.focus();
  };

  const drawRecovery = (codes: string[]) => {
    const cont = h('button', { class: 'btn btn-primary', type: 'button', 'data-testid': 'totp-done' }, 'I have saved them');
    cont.addEventListener('click', () => {
      draw(session.currentUser());
      navigate('/machines');
    });
    const text = () => codes.join('\n');
    mount(
      card,
      h('h2', {}, 'Two-factor sign-in is on'),
      h('div', { class: 'alert alert-warn', role: 'status' }, 'Save these recovery codes now; they are shown only once. Each signs you in once if you lose your authenticator app.'),
      h('ul', { class: 'recovery-codes', 'data-testid': 'recovery-codes' }, codes.map((c) => h('li', {}, h('code', {}, c)))),
      h('div', { class: 'actions' }, copyButton(text, 'Copy codes'), cont),
    );
  };

  const drawEnabled = (me: Me | User, required: boolean) => {
    const password = h('input', { id: 'totp-disable-password', type: 'password', autocomplete: 'current-password', required: true });
    const code = h('input', { id: 'totp-disable-code', autocomplete: 'one-time-code', required: true });
    const submit = h('button', { class: 'btn btn-danger', type: 'submit' }, 'Turn off');
    const result = h('div', {});
    const form = h(
      'form',
      { class: 'form-stack', 'aria-label': 'Turn off two-factor sign-in' },
      h('label', { for: 'totp-disable-password' }, 'Current password'), password,
      h('label', { for: 'totp-disable-code' }, 'Code from the app (or a recovery code)'), code,
      h('div', {}, submit),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      result.replaceChildren();
      void busy(submit, () =>
        api.post('/api/auth/totp/disable', { password: password.value, code: code.value.trim() }, { expected401: 'current password is wrong' }),
      )
        .then(() => {
          session.setUser({ ...me, totp_enabled: false });
          toast('Two-factor sign-in is off', 'ok');
          draw(session.currentUser());
        })
        .catch((err: unknown) => mount(result, errorBox(err)));
    });
    mount(
      card,
      h('h2', {}, 'Two-factor sign-in'),
      h('p', {}, pill('on', 'ok'), ' Signing in asks for a code from your authenticator app.'),
      result,
      required ? h('p', { class: 'muted small' }, 'Your role requires it; an administrator can reset it if you lose your app.') : form,
    );
  };
  return { card, draw };
}

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
  const twoFactor = twoFactorCard();
  drawInfo(session.currentUser());
  twoFactor.draw(session.currentUser());
  api
    .get<Me>('/api/auth/me', undefined, signal)
    .then((u) => {
      session.setUser(u);
      if (!u.password_change_required && session.passwordChangeRequired()) {
        // Changed elsewhere (another tab, the API): nothing left to ask.
        session.setPasswordChangeRequired(false);
        navigate('/machines');
        return;
      }
      drawInfo(u);
      twoFactor.draw(u);
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
        if (session.passwordChangeRequired()) {
          session.setPasswordChangeRequired(false);
          navigate('/machines');
          return;
        }
        mount(result, h('div', { class: 'alert alert-ok', role: 'status' }, `Password changed. ${r?.other_tokens_revoked ?? 0} other session(s) signed out.`));
      })
      .catch((err: unknown) => mount(result, errorBox(err)));
  });
  const out = h('button', { class: 'btn', type: 'button' }, 'Sign out');
  out.addEventListener('click', () => void busy(out, signOut));
  const sessionCard = h('div', { class: 'card' }, h('h2', {}, 'Session'), h('p', { class: 'muted' }, 'Your sign-in lasts 24 hours in this browser tab.'), out);
  if (session.passwordChangeRequired() && !session.enrolOnly()) {
    // Signed in with the password printed at first start: choose one first.
    mount(
      root,
      h(
        'div',
        { class: 'grid-2' },
        h(
          'div',
          {},
          h('div', { class: 'alert alert-warn', role: 'alert', 'data-testid': 'password-change-required' }, 'You signed in with the password the server generated at first start. Choose your own password to continue.'),
          info,
        ),
        form,
      ),
    );
    current.focus();
    return;
  }
  if (session.enrolOnly()) {
    // Until the required second factor is enrolled, nothing else is allowed.
    mount(root, h('div', { class: 'grid-2' }, h('div', {}, info, sessionCard), twoFactor.card));
    return;
  }
  mount(root, h('div', { class: 'grid-2' }, h('div', {}, info, twoFactor.card, sessionCard), form));
}
