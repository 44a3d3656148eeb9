// Tiny DOM helpers: a typed element builder and a few formatting functions.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

/** Creates an element: `h('button', { class: 'btn', onclick: fn }, 'Save')`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value as EventListener);
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]): void {
  for (const child of children) {
    if (Array.isArray(child)) append(el, child);
    else if (child === null || child === undefined || child === false) continue;
    else el.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
  }
}

/** The console's data table: a scrollable wrapper, column heads, and `body` (a `<tbody>`
 * the caller fills later, or the rows). */
export function dataTable(
  testId: string,
  headers: (string | Node)[],
  body: HTMLTableSectionElement | Child | Child[],
  headAttrs: Attrs = {},
): HTMLDivElement {
  const tbody = body instanceof HTMLTableSectionElement ? body : h('tbody', {}, body);
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'table', 'data-testid': testId },
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', ...headAttrs }, t)))),
      tbody,
    ),
  );
}

/** Replaces an element's children. */
export function mount(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

/** An inline SVG icon from a small set (stroke icons, 24×24 viewBox). */
const ICONS: Record<string, string> = {
  machines: 'M3 5h18v11H3z M8 20h8 M12 16v4',
  sessions: 'M4 6h16v12H4z M10 9l5 3-5 3z',
  codes: 'M7 8h10 M7 12h10 M7 16h6 M4 4h16v16H4z',
  users: 'M16 19v-1a4 4 0 0 0-4-4H7a4 4 0 0 0-4 4v1 M9.5 10a3 3 0 1 0 0-6 3 3 0 0 0 0 6z M21 19v-1a4 4 0 0 0-3-3.9 M16 4.1a3 3 0 0 1 0 5.8',
  keys: 'M15 7a4 4 0 1 1-3.9 5H3v3h3v3h3v-3h2.1A4 4 0 0 1 15 7z',
  sites: 'M4 21V9l8-5 8 5v12 M4 21h16 M9 21v-6h6v6',
  releases: 'M3 7l9-4 9 4v10l-9 4-9-4z M3 7l9 4 9-4 M12 11v10',
  download: 'M12 4v11 M7 10l5 5 5-5 M5 20h14',
  recordings: 'M3 5h18v14H3z M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6z',
  audit: 'M9 5h11 M9 12h11 M9 19h11 M4 5h.01 M4 12h.01 M4 19h.01',
  account: 'M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8z M4 21a8 8 0 0 1 16 0',
  logout: 'M15 4h4v16h-4 M10 8l-4 4 4 4 M6 12h10',
  theme: 'M12 3a9 9 0 1 0 9 9 7 7 0 0 1-9-9z',
  copy: 'M8 8h12v12H8z M4 16V4h12',
  search: 'M11 18a7 7 0 1 0 0-14 7 7 0 0 0 0 14z M21 21l-5-5',
};

export function icon(name: string): SVGSVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', ICONS[name] ?? '');
  svg.appendChild(path);
  return svg;
}

/** `5 min ago`-style relative time for a millisecond timestamp. */
export function ago(ms: number | null | undefined): string {
  if (!ms) return 'never';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** `1:02:03` for a duration in milliseconds. */
export function duration(ms: number): string {
  const t = Math.max(0, Math.floor(ms / 1000));
  const hh = Math.floor(t / 3600);
  const mm = Math.floor((t % 3600) / 60);
  const ss = t % 60;
  const pad = (n: number) => String(n).padStart(2, '0');
  return hh > 0 ? `${hh}:${pad(mm)}:${pad(ss)}` : `${mm}:${pad(ss)}`;
}

export function dateTime(ms: number | null | undefined): string {
  if (!ms) return '—';
  return new Date(ms).toLocaleString();
}

/** Human-readable byte size. */
export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

/** A status pill: `pill('online', 'ok')`. */
export function pill(text: string, tone: 'ok' | 'warn' | 'bad' | 'info' | 'muted' = 'muted'): HTMLElement {
  return h('span', { class: `pill pill-${tone}` }, text);
}
