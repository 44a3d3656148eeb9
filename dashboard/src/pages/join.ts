// The customer's join page (public, no sign-in): `/join` asks for the code, `/join/<code>`
// shows who is asking and offers the agent download with the server and code built in.
// Served at real paths (not `#/…`) so the link a technician sends reads plainly.

import { ApiError, request } from '../api';
import { duration, h, mount } from '../ui/dom';
import { loading } from '../ui/feedback';
import { brand, themeButton } from '../ui/shell';

/** One platform's download, as `GET /api/join/:code` describes it. */
interface JoinDownload {
  available: boolean;
  url?: string;
  hint?: string;
}

/** `GET /api/join/:code`. */
interface JoinInfo {
  technician: string;
  note: string | null;
  customer_name: string | null;
  expires_at: number;
  downloads: { linux: JoinDownload; windows: JoinDownload };
}

const ALPHABET = /^[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{9}$/;

/** The canonical `XXX-XXX-XXX` form of typed input, or null when it cannot be a code. */
export function normalizeCode(input: string): string | null {
  const compact = input.replace(/[\s-]/g, '').toUpperCase();
  if (!ALPHABET.test(compact)) return null;
  return `${compact.slice(0, 3)}-${compact.slice(3, 6)}-${compact.slice(6)}`;
}

/** The join route of a path, or null: `/join` → `''`, `/join/<code>` → the code. */
export function joinRoute(pathname: string): string | null {
  const m = /^\/join(?:\/([^/]*))?\/?$/.exec(pathname);
  return m ? decodeURIComponent(m[1] ?? '') : null;
}

function go(path: string): void {
  history.pushState(null, '', path);
  window.dispatchEvent(new PopStateEvent('popstate'));
}

function customerOs(): 'linux' | 'windows' | 'other' {
  const ua = navigator.userAgent;
  if (/Windows/i.test(ua)) return 'windows';
  if (/Linux|X11/i.test(ua) && !/Android/i.test(ua)) return 'linux';
  return 'other';
}

function codeForm(initial = ''): HTMLFormElement {
  const input = h('input', {
    id: 'join-code',
    name: 'code',
    placeholder: 'XXX-XXX-XXX',
    autocomplete: 'off',
    autocapitalize: 'characters',
    spellcheck: 'false',
    required: true,
    class: 'mono join-input',
    value: initial,
  });
  const error = h('div', { class: 'form-error', 'data-testid': 'join-form-error' });
  const form = h(
    'form',
    { class: 'join-form', 'aria-label': 'Enter your support code' },
    h('label', { for: 'join-code' }, 'Support code from your technician'),
    input,
    error,
    h('button', { class: 'btn btn-primary btn-block', type: 'submit', 'data-testid': 'join-continue' }, 'Continue'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const code = normalizeCode(input.value);
    if (!code) {
      mount(error, h('div', { class: 'alert alert-bad', role: 'alert' }, 'A support code has nine letters and digits, like ABC-DEF-GHJ.'));
      input.focus();
      return;
    }
    go(`/join/${code}`);
  });
  return form;
}

function downloadBlock(name: string, d: JoinDownload, mine: boolean, how: HTMLElement | null): HTMLElement {
  if (d.available && d.url) {
    return h(
      'section',
      { class: `join-download${mine ? ' is-mine' : ''}`, 'data-testid': `download-${name.toLowerCase()}` },
      h('a', { class: `btn ${mine ? 'btn-primary' : ''}`, href: d.url, download: '' }, `Download for ${name}`),
      how,
    );
  }
  return h(
    'section',
    { class: `join-download${mine ? ' is-mine' : ''}`, 'data-testid': `download-${name.toLowerCase()}` },
    h('div', { class: 'strong' }, `${name}: not available`),
    h('p', { class: 'muted small', 'data-testid': 'download-hint' }, d.hint ? d.hint[0].toUpperCase() + d.hint.slice(1) + '.' : 'This download is not available on this server.'),
  );
}

/** "Your name": tells the technician who is joining (`POST /api/join/:code/name`). */
function nameForm(code: string, initial: string | null): HTMLFormElement {
  const input = h('input', {
    id: 'join-name',
    name: 'name',
    placeholder: 'e.g. Dana at the front desk',
    autocomplete: 'name',
    maxlength: 100,
    required: true,
    value: initial ?? '',
  });
  const status = h('div', { class: 'small', 'data-testid': 'join-name-status', role: 'status' });
  const button = h('button', { class: 'btn', type: 'submit', 'data-testid': 'join-name-save' }, 'Save');
  const form = h(
    'form',
    { class: 'join-form', 'aria-label': 'Your name' },
    h('label', { for: 'join-name' }, 'Your name (optional, so your technician knows who is joining)'),
    h('div', { class: 'join-name-row' }, input, button),
    status,
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = input.value.trim();
    if (!name) {
      mount(status, h('span', { class: 'text-bad' }, 'Type your name first.'));
      return;
    }
    button.disabled = true;
    request<void>('POST', `/api/join/${encodeURIComponent(code)}/name`, { anonymous: true, body: { name } })
      .then(() => mount(status, h('span', { class: 'text-good' }, `Saved: your technician sees "${name}".`)))
      .catch((err: unknown) => mount(status, h('span', { class: 'text-bad' }, ApiError.from(err).detail || 'Could not save the name.')))
      .finally(() => {
        button.disabled = false;
      });
  });
  return form;
}

function showInfo(card: HTMLElement, code: string, info: JoinInfo): () => void {
  const os = customerOs();
  const countdown = h('span', { 'data-testid': 'join-expires' });
  const tick = () => {
    const ms = info.expires_at - Date.now();
    countdown.textContent = ms > 0 ? `This code expires in ${duration(ms)}.` : 'This code has expired. Ask your technician for a new one.';
  };
  tick();
  const timer = window.setInterval(tick, 1000);
  const linuxHow = h(
    'ol',
    { class: 'join-steps small' },
    h('li', {}, 'Save the file, then open a terminal in the folder where it was saved.'),
    h('li', {}, 'Run ', h('code', { 'data-testid': 'run-command' }, 'sh guruconnect-support.sh'), ' (no need for sudo).'),
    h('li', {}, 'A window asks whether to allow the connection. Choose Allow only if you expect this technician.'),
  );
  const windowsHow = h(
    'ol',
    { class: 'join-steps small' },
    h('li', {}, 'Open the downloaded file (its name starts with ', h('code', {}, 'GuruConnect-Support_'), '). Keep its name as it is: it tells the program where to connect.'),
    h('li', {}, 'A window asks whether to allow the connection. Choose Allow only if you expect this technician.'),
  );
  const blocks = [
    { name: 'Linux', key: 'linux' as const, how: linuxHow },
    { name: 'Windows', key: 'windows' as const, how: windowsHow },
  ].sort((a, b) => Number(b.key === os) - Number(a.key === os));
  mount(
    card,
    brand(),
    h('h1', { id: 'join-title' }, 'Join a support session'),
    h(
      'div',
      { class: 'join-who', 'data-testid': 'join-who' },
      h('div', {}, h('strong', { 'data-testid': 'join-technician' }, info.technician), ' is asking to connect to this computer.'),
      info.note ? h('div', { class: 'muted' }, 'About: ', h('span', { 'data-testid': 'join-note' }, info.note)) : null,
      h('div', { class: 'muted small' }, 'Code ', h('span', { class: 'mono' }, code), ' · ', countdown),
    ),
    nameForm(code, info.customer_name),
    ...blocks.map((b) => downloadBlock(b.name, info.downloads[b.key], b.key === os, b.how)),
    h('p', { class: 'muted small' }, 'Nobody can see or control this computer until you allow it. While a session runs, a small GuruConnect window shows who is connected; its End session button, or closing the program, ends it.'),
    h('a', { href: '/join', class: 'small', 'data-testid': 'join-other', onclick: (e: Event) => (e.preventDefault(), go('/join')) }, 'Use a different code'),
  );
  return () => window.clearInterval(timer);
}

function showError(card: HTMLElement, code: string, err: unknown): void {
  const e = ApiError.from(err);
  let message: string;
  if (e.status === 404) {
    message = `The code ${code} is not valid: it may be mistyped, expired or already used. Ask your technician for a new code.`;
  } else if (e.status === 429) {
    message = `Too many attempts from this network. ${e.message.includes('retry in') ? e.message.replace(/^.*\(retry in (\d+) s\)$/, 'Try again in $1 seconds.') : 'Try again later.'}`;
  } else {
    message = e.detail || 'The server could not be reached. Check your connection and try again.';
  }
  mount(
    card,
    brand(),
    h('h1', { id: 'join-title' }, 'Join a support session'),
    h('div', { class: 'alert alert-bad', role: 'alert', 'data-testid': 'join-error' }, message),
    codeForm(code),
  );
}

/** Renders the join page for `code` (`''`: ask for one) into `app`; returns its cleanup. */
export function renderJoin(app: HTMLElement, code: string, signal: AbortSignal): () => void {
  document.title = 'Join a support session · GuruConnect';
  const card = h('div', { class: 'login-card join-card', 'aria-labelledby': 'join-title', 'data-testid': 'join-card' });
  mount(
    app,
    h(
      'div',
      { class: 'bare-root' },
      h('div', { class: 'login-wrap' }, card, h('div', { class: 'login-foot' }, h('span', {}, 'GuruConnect remote support'), themeButton())),
    ),
  );
  if (!code) {
    mount(
      card,
      brand(),
      h('h1', { id: 'join-title' }, 'Join a support session'),
      h('p', { class: 'muted small' }, 'Enter the code your technician gave you. You will see who is asking before anything is downloaded.'),
      codeForm(),
    );
    (card.querySelector('#join-code') as HTMLInputElement | null)?.focus();
    return () => {};
  }
  const canonical = normalizeCode(code);
  if (!canonical) {
    showError(card, code, new ApiError(404, 'invalid or expired code'));
    return () => {};
  }
  if (canonical !== code) history.replaceState(null, '', `/join/${canonical}`);
  mount(card, brand(), h('h1', { id: 'join-title' }, 'Join a support session'), loading('Checking the code…'));
  let cleanup: () => void = () => {};
  request<JoinInfo>('GET', `/api/join/${encodeURIComponent(canonical)}`, { anonymous: true, signal })
    .then((info) => {
      if (!signal.aborted) cleanup = showInfo(card, canonical, info);
    })
    .catch((err: unknown) => {
      if (!signal.aborted) showError(card, canonical, err);
    });
  return () => cleanup();
}
