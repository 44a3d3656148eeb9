// The signed-in layout: sidebar navigation, page header, content area.

import { api } from '../api';
import * as session from '../session';
import * as theme from '../theme';
import { navigate } from '../router';
import { h, icon, mount } from './dom';
import { toast } from './feedback';

const NAV: { key: string; label: string; icon: string; admin?: boolean; perm?: string }[] = [
  { key: 'machines', label: 'Machines', icon: 'machines' },
  { key: 'sessions', label: 'Live sessions', icon: 'sessions' },
  { key: 'codes', label: 'Support codes', icon: 'codes', perm: 'manage_codes' },
  { key: 'recordings', label: 'Recordings', icon: 'recordings', perm: 'recordings' },
  { key: 'users', label: 'Users', icon: 'users', admin: true },
  { key: 'keys', label: 'Agent keys', icon: 'keys', admin: true },
  { key: 'sites', label: 'Sites', icon: 'sites', admin: true },
  { key: 'releases', label: 'Releases', icon: 'releases', admin: true },
  { key: 'audit', label: 'Audit log', icon: 'audit', admin: true },
];

export function brand(): HTMLElement {
  return h(
    'div',
    { class: 'brand' },
    h('span', { class: 'brand-mark', 'aria-hidden': 'true' }, icon('machines')),
    h('span', { class: 'brand-name' }, 'Guru', h('b', {}, 'Connect')),
  );
}

export async function signOut(): Promise<void> {
  const tok = session.token();
  // Cleared first: the other tabs follow at once, before the token is revoked under them.
  session.clear();
  if (tok) {
    try {
      await api.post('/api/auth/logout', undefined, { bearer: tok });
    } catch {
      // Signing out locally is what matters; the token may already be dead.
    }
  }
  session.setFlash('You have signed out.');
  navigate('/login');
}

export function themeButton(): HTMLButtonElement {
  const label = () => (theme.effective() === 'dark' ? 'Light theme' : 'Dark theme');
  const btn = h('button', { class: 'nav-button', type: 'button', 'data-testid': 'theme-toggle' }, icon('theme'), h('span', {}, label()));
  btn.addEventListener('click', () => {
    theme.toggle();
    (btn.lastChild as HTMLElement).textContent = label();
  });
  return btn;
}

/** Renders the shell into `app` and returns the content element for the page. */
export function shell(app: HTMLElement, active: string, title: string): HTMLElement {
  const user = session.currentUser();
  const links = NAV.filter((n) => (n.admin ? session.isAdmin() : n.perm ? session.can(n.perm) : true)).map((n) =>
    h(
      'a',
      { href: `#/${n.key}`, class: `nav-link${n.key === active ? ' active' : ''}`, 'aria-current': n.key === active ? 'page' : null },
      icon(n.icon),
      h('span', {}, n.label),
    ),
  );
  const content = h('main', { class: 'content', id: 'main', tabindex: '-1' });
  const signOutBtn = h('button', { class: 'nav-button', type: 'button', 'data-testid': 'sign-out' }, icon('logout'), h('span', {}, 'Sign out'));
  signOutBtn.addEventListener('click', () => {
    signOutBtn.disabled = true;
    void signOut().then(() => toast('Signed out', 'info'));
  });
  mount(
    app,
    h('a', { class: 'skip-link', href: '#main', onclick: (e: Event) => { e.preventDefault(); content.focus(); } }, 'Skip to content'),
    h(
      'div',
      { class: 'layout' },
      h(
        'nav',
        { class: 'sidebar', 'aria-label': 'Main' },
        brand(),
        h('div', { class: 'nav-links' }, links),
        h(
          'div',
          { class: 'sidebar-foot' },
          h(
            'a',
            { href: '#/account', class: `nav-link${active === 'account' ? ' active' : ''}`, 'aria-current': active === 'account' ? 'page' : null },
            icon('account'),
            h('span', { class: 'who' }, h('span', { 'data-testid': 'current-user' }, user?.username ?? ''), h('small', {}, user?.role ?? '')),
          ),
          themeButton(),
          signOutBtn,
        ),
      ),
      h('div', { class: 'main-col' }, h('header', { class: 'page-head' }, h('h1', {}, title)), content),
    ),
  );
  return content;
}
