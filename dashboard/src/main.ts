// Entry point: theme, routing, the signed-in shell and the 401 → sign-in rule.

import './styles.css';
import { setUnauthorizedHandler } from './api';
import * as session from './session';
import * as theme from './theme';
import { currentPath, navigate, type Cleanup, type Page } from './router';
import { shell } from './ui/shell';
import { loginPage } from './pages/login';
import { machinesPage } from './pages/machines';
import { machinePage } from './pages/machine';
import { sessionsPage } from './pages/sessions';
import { codesPage } from './pages/codes';
import { usersPage } from './pages/users';
import { keysPage } from './pages/keys';
import { sitesPage } from './pages/sites';
import { releasesPage } from './pages/releases';
import { auditPage } from './pages/audit';
import { accountPage } from './pages/account';
import { viewerPage } from './pages/viewer';
import { recordingPage, recordingsPage } from './pages/recordings';
import { joinRoute, renderJoin } from './pages/join';
import { h, mount } from './ui/dom';

// The terminal page (xterm.js) loads when first opened: most visits never need it.
const terminalPage: Page = async (ctx) => (await import('./pages/terminal')).terminalPage(ctx);

interface Route {
  pattern: RegExp;
  page: Page;
  title: string;
  /** Nav key highlighted in the sidebar; absent = no shell (sign-in, viewer, terminal). */
  nav?: string;
  admin?: boolean;
  /** The permission the page needs (administrators have every one). */
  perm?: string;
}

const routes: Route[] = [
  { pattern: /^\/login$/, page: loginPage, title: 'Sign in' },
  { pattern: /^\/machines$/, page: machinesPage, title: 'Machines', nav: 'machines' },
  { pattern: /^\/machines\/([^/]+)$/, page: machinePage, title: 'Machine', nav: 'machines' },
  { pattern: /^\/sessions$/, page: sessionsPage, title: 'Live sessions', nav: 'sessions' },
  { pattern: /^\/codes$/, page: codesPage, title: 'Support codes', nav: 'codes' },
  { pattern: /^\/users$/, page: usersPage, title: 'Users', nav: 'users', admin: true },
  { pattern: /^\/keys(?:\/([0-9a-fA-F-]{36}))?$/, page: keysPage, title: 'Agent keys', nav: 'keys', admin: true },
  { pattern: /^\/sites$/, page: sitesPage, title: 'Sites', nav: 'sites', admin: true },
  { pattern: /^\/releases$/, page: releasesPage, title: 'Releases', nav: 'releases', admin: true },
  { pattern: /^\/recordings$/, page: recordingsPage, title: 'Recordings', nav: 'recordings', perm: 'recordings' },
  { pattern: /^\/recordings\/([^/]+)$/, page: recordingPage, title: 'Recording', nav: 'recordings', perm: 'recordings' },
  { pattern: /^\/audit$/, page: auditPage, title: 'Audit log', nav: 'audit', admin: true },
  { pattern: /^\/account$/, page: accountPage, title: 'Account', nav: 'account' },
  { pattern: /^\/view\/([^/]+)$/, page: viewerPage, title: 'Viewer' },
  { pattern: /^\/terminal\/([^/]+)$/, page: terminalPage, title: 'Terminal' },
];

const app = document.getElementById('app') as HTMLElement;
let cleanup: Cleanup | null = null;
let controller: AbortController | null = null;
let generation = 0;

function signOutLocally(message: string): void {
  // Only the first of several parallel 401s signs out: a later one would render the sign-in
  // page again (navigate() re-dispatches hashchange) after the first took the message.
  if (!session.token()) return;
  session.clear();
  session.setFlash(message);
  navigate('/login');
}

async function render(): Promise<void> {
  const gen = ++generation;
  controller?.abort();
  controller = new AbortController();
  if (cleanup) {
    try {
      cleanup();
    } catch (e) {
      console.warn('page cleanup failed', e);
    }
    cleanup = null;
  }
  // The customer's join page lives at a real path and needs no sign-in.
  const join = joinRoute(location.pathname);
  if (join !== null) {
    cleanup = renderJoin(app, join, controller.signal);
    return;
  }
  const path = currentPath();
  const signedIn = !!session.token();
  if (!signedIn && path !== '/login') {
    if (path.startsWith('/view/') || path.startsWith('/terminal/')) sessionStorage.setItem('gc.after-login', path);
    navigate('/login');
    return;
  }
  if (signedIn && (session.enrolOnly() || session.passwordChangeRequired()) && path !== '/account') {
    // The role requires a second factor, or the password is still the generated one:
    // nothing else until that is done.
    navigate('/account');
    return;
  }
  if (signedIn && (path === '/login' || path === '/')) {
    navigate('/machines');
    return;
  }
  const match = routes.map((r) => ({ r, m: r.pattern.exec(path) })).find((x) => x.m);
  if (!match || !match.m) {
    navigate('/machines');
    return;
  }
  const { r, m } = match;
  document.title = `${r.title} · GuruConnect`;
  let root: HTMLElement;
  if (r.nav) {
    root = shell(app, r.nav, r.title);
  } else {
    root = h('div', { class: /view|terminal/.test(r.pattern.source) ? 'viewer-root' : 'bare-root' });
    mount(app, root);
  }
  if (r.admin && !session.isAdmin()) {
    mount(root, h('div', { class: 'alert alert-warn', role: 'alert' }, 'This page is for administrators.'));
    return;
  }
  if (r.perm && !session.can(r.perm)) {
    mount(root, h('div', { class: 'alert alert-warn', role: 'alert', 'data-testid': 'no-permission' }, `This page needs the permission “${r.perm}”, which your account does not have.`));
    return;
  }
  try {
    const result = await r.page({ root, params: m.slice(1).filter((p): p is string => p !== undefined), signal: controller.signal });
    if (gen !== generation) {
      if (typeof result === 'function') result();
      return;
    }
    if (typeof result === 'function') cleanup = result;
  } catch (e) {
    if (gen === generation) {
      console.warn('page failed to render', e);
      mount(root, h('div', { class: 'alert alert-bad', role: 'alert' }, 'This page failed to load. Reload to try again.'));
    }
  }
}

theme.init();
setUnauthorizedHandler(signOutLocally);
// The sign-in is shared by every tab: follow a sign-out (or sign-in) made in another one.
session.onChangeElsewhere((signedIn) => {
  if (!signedIn) {
    if (currentPath() === '/login') return;
    session.setFlash('You were signed out in another tab.');
    navigate('/login');
    return;
  }
  const after = currentPath() === '/login' ? sessionStorage.getItem('gc.after-login') : null;
  sessionStorage.removeItem('gc.after-login');
  if (after) navigate(after);
  else void render();
});
window.addEventListener('hashchange', () => void render());
// The join page moves between real paths; a hash change also fires popstate, which
// hashchange already handles (rendering twice would drop a one-time sign-in message).
let shownPathname = location.pathname;
window.addEventListener('popstate', () => {
  if (location.pathname === shownPathname) return;
  shownPathname = location.pathname;
  void render();
});
window.addEventListener('unhandledrejection', (e) => {
  // Aborted fetches of pages the user already left are expected.
  if (e.reason instanceof DOMException && e.reason.name === 'AbortError') e.preventDefault();
});
void render();
