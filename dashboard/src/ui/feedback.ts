// Toasts, error boxes, confirm dialogs and copy-to-clipboard.

import { ApiError } from '../api';
import { h, icon, mount } from './dom';

/** A transient notification in the corner. */
export function toast(message: string, tone: 'ok' | 'bad' | 'info' = 'info'): void {
  const box = document.getElementById('toasts');
  if (!box) return;
  const el = h('div', { class: `toast toast-${tone}`, role: tone === 'bad' ? 'alert' : 'status' }, message);
  box.appendChild(el);
  setTimeout(() => el.classList.add('toast-out'), 3500);
  setTimeout(() => el.remove(), 4000);
}

/** An inline error panel showing the envelope's detail and correlation id. */
export function errorBox(err: unknown): HTMLElement {
  const e = ApiError.from(err);
  return h(
    'div',
    { class: 'alert alert-bad', role: 'alert' },
    h('strong', {}, e.detail),
    e.correlationId
      ? h('div', { class: 'alert-meta' }, `${e.errorCode ? e.errorCode + ' · ' : ''}correlation id `, h('code', {}, e.correlationId))
      : e.status
        ? h('div', { class: 'alert-meta' }, `HTTP ${e.status}`)
        : null,
  );
}

/** Shows `err` in `slot` (replacing its content), unless it was a handled sign-out. */
export function showError(slot: Element, err: unknown): void {
  if (err instanceof ApiError && err.handled) return;
  mount(slot, errorBox(err));
}

/** Toast variant for action failures. */
export function toastError(err: unknown): void {
  if (err instanceof ApiError && err.handled) return;
  const e = ApiError.from(err);
  toast(e.correlationId ? `${e.detail} (correlation id ${e.correlationId})` : e.detail, 'bad');
}

/** A modal dialog; resolves with the button's value (or null when dismissed). */
export function modal(opts: {
  title: string;
  body: Node | string;
  actions: { label: string; value: string; tone?: 'primary' | 'danger' | 'plain' }[];
}): Promise<string | null> {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: 'modal', 'aria-label': opts.title });
    const done = (value: string | null) => {
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    const buttons = opts.actions.map((a) =>
      h('button', { class: `btn btn-${a.tone ?? 'plain'}`, type: 'button', onclick: () => done(a.value) }, a.label),
    );
    dialog.append(
      h('h2', { class: 'modal-title' }, opts.title),
      h('div', { class: 'modal-body' }, opts.body),
      h('div', { class: 'modal-actions' }, buttons),
    );
    dialog.addEventListener('cancel', (e) => {
      e.preventDefault();
      done(null);
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    const primary = buttons.find((_, i) => opts.actions[i]?.tone !== 'plain') ?? buttons[0];
    primary?.focus();
  });
}

export async function confirmAction(title: string, text: string, label = 'Confirm', tone: 'danger' | 'primary' = 'danger'): Promise<boolean> {
  const v = await modal({
    title,
    body: h('p', {}, text),
    actions: [
      { label: 'Cancel', value: 'no', tone: 'plain' },
      { label, value: 'yes', tone },
    ],
  });
  return v === 'yes';
}

/** Copies text; falls back to selecting a hidden textarea where the async API is refused. */
export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h('textarea', { class: 'sr-only', 'aria-hidden': 'true' });
    ta.value = text;
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}

export function copyButton(text: () => string, label = 'Copy'): HTMLButtonElement {
  const btn = h('button', { class: 'btn btn-plain btn-copy', type: 'button' }, icon('copy'), h('span', {}, label));
  btn.addEventListener('click', () => {
    void copyText(text()).then((ok) => {
      toast(ok ? 'Copied to the clipboard' : 'Copy failed: select the text and copy it by hand', ok ? 'ok' : 'bad');
      if (ok) {
        btn.classList.add('copied');
        setTimeout(() => btn.classList.remove('copied'), 1200);
      }
    });
  });
  return btn;
}

/** Disables a button and shows a spinner while `work` runs. */
export async function busy<T>(btn: HTMLButtonElement, work: () => Promise<T>): Promise<T> {
  btn.disabled = true;
  btn.classList.add('is-busy');
  btn.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    btn.disabled = false;
    btn.classList.remove('is-busy');
    btn.removeAttribute('aria-busy');
  }
}

/** A loading placeholder. */
export function loading(text = 'Loading…'): HTMLElement {
  return h('div', { class: 'loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
}
