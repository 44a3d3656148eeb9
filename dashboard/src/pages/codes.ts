// Support codes: create (big readable code, copy, countdown), list with status, cancel.

import { api } from '../api';
import { navigate, type PageContext } from '../router';
import { dateTime, duration, h, mount, pill, dataTable } from '../ui/dom';
import { busy, confirmAction, copyButton, loading, showError, toast, toastError, errorBox } from '../ui/feedback';
import type { Page, SupportCode } from '../types';

const TONE: Record<string, 'ok' | 'warn' | 'bad' | 'info' | 'muted'> = {
  pending: 'info',
  consumed: 'ok',
  cancelled: 'muted',
  ended: 'muted',
  denied: 'bad',
  expired: 'warn',
};

/** How many of the newest codes the page lists. */
const RECENT = 100;

/** The customer's join link for a code. */
export function joinLink(code: string): string {
  return `${location.origin}/join/${code}`;
}

// The server shows a code in full only once, at creation; the codes this tab created are
// kept (for their lifetime) so that their rows can still offer the join link.
const KNOWN = 'gc.codes';

function knownCodes(): Record<string, { code: string; expires_at: number }> {
  try {
    const all = JSON.parse(sessionStorage.getItem(KNOWN) ?? '{}') as Record<string, { code: string; expires_at: number }>;
    const now = Date.now();
    return Object.fromEntries(Object.entries(all).filter(([, v]) => v.expires_at > now));
  } catch {
    return {};
  }
}

function remember(c: SupportCode): void {
  const all = knownCodes();
  all[c.id] = { code: c.code, expires_at: c.expires_at };
  sessionStorage.setItem(KNOWN, JSON.stringify(all));
}

function remaining(expiresAt: number): string {
  const ms = expiresAt - Date.now();
  return ms > 0 ? duration(ms) : 'expired';
}

export function codesPage({ root, signal }: PageContext): () => void {
  let codes: SupportCode[] = [];
  let total = 0;
  const count = h('span', { class: 'muted', 'data-testid': 'codes-count' });
  const note = h('input', { id: 'code-note', placeholder: 'Customer name or ticket (optional)', maxlength: '200' });
  const ttl = h(
    'select',
    { id: 'code-ttl', 'aria-label': 'Code lifetime' },
    [5, 10, 30, 60, 240].map((m) => h('option', { value: String(m * 60), selected: m === 10 }, `${m < 60 ? m + ' minutes' : m / 60 + ' hour' + (m > 60 ? 's' : '')}`)),
  );
  const create = h('button', { class: 'btn btn-primary', type: 'submit', 'data-testid': 'create-code' }, 'Create code');
  const fresh = h('div', { class: 'fresh-slot' });
  const list = h('div', {}, loading());

  const showFresh = (c: SupportCode) => {
    remember(c);
    const countdown = h('span', { class: 'countdown', 'data-expires': String(c.expires_at) }, remaining(c.expires_at));
    mount(
      fresh,
      h(
        'section',
        { class: 'code-card', 'aria-label': 'New support code' },
        h('div', { class: 'code-card-label' }, 'Give this code to your customer'),
        h('div', { class: 'code-big', 'data-testid': 'code-big', 'data-code-id': c.id, 'aria-label': `Support code ${c.code.split('').join(' ')}` }, c.code),
        h(
          'div',
          { class: 'code-card-meta' },
          copyButton(() => c.code, 'Copy code'),
          copyButton(() => joinLink(c.code), 'Copy link'),
          h('span', {}, 'Expires in ', countdown),
          c.note ? h('span', { class: 'muted' }, `· ${c.note}`) : null,
        ),
        h(
          'p',
          { class: 'muted small' },
          'Send the customer the link (',
          h('span', { class: 'mono', 'data-testid': 'join-link' }, joinLink(c.code)),
          '), or have them open ',
          h('span', { class: 'mono' }, `${location.origin}/join`),
          ' and enter the code. The code works once and must be accepted on their screen.',
        ),
      ),
    );
  };

  const copyLink = (code: string) => {
    const btn = copyButton(() => joinLink(code), 'Copy link');
    btn.classList.add('btn-sm');
    btn.dataset.testid = 'copy-link';
    return btn;
  };

  const draw = () => {
    count.textContent = total > codes.length ? `newest ${codes.length} of ${total}` : '';
    if (!codes.length) {
      mount(list, h('div', { class: 'empty' }, h('p', {}, 'No support codes yet.')));
      return;
    }
    const known = knownCodes();
    mount(
      list,
      dataTable('codes-table', ['Code', 'Status', 'Note', 'Created by', 'Expires', ''], codes.map((c) => {
        const cancel = h('button', { class: 'btn btn-sm btn-danger', type: 'button', 'aria-label': `Cancel code ${c.code}` }, 'Cancel');
        cancel.addEventListener('click', () => {
          void confirmAction('Cancel support code', `Cancel ${c.code}? The customer will no longer be able to use it.`, 'Cancel code').then((ok) => {
            if (!ok) return;
            void busy(cancel, () => api.del(`/api/codes/${encodeURIComponent(c.id)}`))
              .then(() => {
                toast(`Code ${c.code} cancelled`, 'ok');
                if (fresh.querySelector(`[data-code-id="${c.id}"]`)) fresh.replaceChildren();
                void load();
              })
              .catch(toastError);
          });
        });
        return h(
          'tr',
          { 'data-code-id': c.id },
          h('td', { class: 'mono strong code-cell' }, c.code),
          h('td', {}, pill(c.status, TONE[c.status] ?? 'muted')),
          h(
            'td',
            {},
            c.note ?? (c.customer_name ? null : h('span', { class: 'muted' }, '—')),
            c.customer_name ? h('div', { class: 'small', 'data-testid': 'code-customer' }, c.note ? 'Customer: ' : '', c.customer_name) : null,
          ),
          h('td', {}, c.created_by),
          h(
            'td',
            { title: dateTime(c.expires_at) },
            c.status === 'pending' ? h('span', { class: 'countdown', 'data-expires': String(c.expires_at) }, remaining(c.expires_at)) : h('span', { class: 'muted' }, dateTime(c.expires_at)),
          ),
          h(
            'td',
            { class: 'actions' },
            c.status === 'consumed' && c.session_id ? h('button', { class: 'btn btn-primary btn-sm', type: 'button', onclick: () => navigate(`/view/${c.session_id}`) }, 'Join') : null,
            c.status === 'pending' && known[c.id] ? copyLink(known[c.id].code) : null,
            c.status === 'pending' ? cancel : null,
          ),
        );
      })),
    );
  };

  const load = async () => {
    try {
      // The newest page only; finished codes are pruned by the server after a while.
      const page = await api.get<Page<SupportCode>>('/api/codes', { limit: RECENT }, signal);
      codes = page.items;
      total = page.total;
      draw();
    } catch (e) {
      if (!signal.aborted) showError(list, e);
    }
  };

  const form = h(
    'form',
    { class: 'card form-inline', 'aria-label': 'Create a support code' },
    h('div', { class: 'field grow' }, h('label', { for: 'code-note' }, 'Note'), note),
    h('div', { class: 'field' }, h('label', { for: 'code-ttl' }, 'Valid for'), ttl),
    h('div', { class: 'field' }, create),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void busy(create, () => api.post<SupportCode>('/api/codes', { note: note.value.trim() || undefined, ttl_secs: Number(ttl.value) }))
      .then((c) => {
        note.value = '';
        showFresh(c);
        void load();
      })
      .catch((err: unknown) => mount(fresh, errorBox(err)));
  });

  mount(root, form, fresh, h('h2', { class: 'section-title' }, 'Recent codes ', count), list);
  void load();
  const tick = window.setInterval(() => {
    root.querySelectorAll<HTMLElement>('.countdown[data-expires]').forEach((el) => {
      el.textContent = remaining(Number(el.dataset.expires));
    });
  }, 1000);
  const poll = window.setInterval(() => void load(), 15_000);
  return () => {
    window.clearInterval(tick);
    window.clearInterval(poll);
  };
}
