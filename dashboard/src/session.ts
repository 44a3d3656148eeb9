// The signed-in user's token and profile, kept in localStorage: one sign-in per browser,
// shared by every tab (a viewer opened in a new tab needs it). A sign-out in one tab
// reaches the others through the `storage` event (see `onChangeElsewhere`).

import type { User } from './types';

const TOKEN = 'gc.token';
const USER = 'gc.user';
const FLASH = 'gc.flash';
const ENROL_ONLY = 'gc.enrol-only';
const NEW_PASSWORD = 'gc.password-change';

// A tab signed in before sign-ins moved to localStorage keeps its sign-in.
try {
  const old = sessionStorage.getItem(TOKEN);
  if (old) {
    if (!localStorage.getItem(TOKEN)) {
      for (const key of [TOKEN, USER, ENROL_ONLY]) {
        const v = sessionStorage.getItem(key);
        if (v !== null) localStorage.setItem(key, v);
      }
    }
    for (const key of [TOKEN, USER, ENROL_ONLY]) sessionStorage.removeItem(key);
  }
} catch {
  // Storage refused (privacy mode): nothing to move.
}

export function token(): string | null {
  return localStorage.getItem(TOKEN);
}

export function currentUser(): User | null {
  const raw = localStorage.getItem(USER);
  if (!raw) return null;
  try {
    return JSON.parse(raw) as User;
  } catch {
    return null;
  }
}

/** Stores a sign-in; `enrolOnly` marks one that may only enrol the required second factor. */
export function signedIn(tok: string, user: User, enrolOnly = false): void {
  // The flag first: another tab reacts to the token and must see it.
  if (enrolOnly) localStorage.setItem(ENROL_ONLY, '1');
  else localStorage.removeItem(ENROL_ONLY);
  localStorage.setItem(USER, JSON.stringify(user));
  localStorage.setItem(TOKEN, tok);
}

/** The account still has its generated password: the console asks for a new one first. */
export function passwordChangeRequired(): boolean {
  return localStorage.getItem(NEW_PASSWORD) === '1';
}

export function setPasswordChangeRequired(required: boolean): void {
  if (required) localStorage.setItem(NEW_PASSWORD, '1');
  else localStorage.removeItem(NEW_PASSWORD);
}

/** The sign-in may only enrol a second factor (the role requires one). */
export function enrolOnly(): boolean {
  return localStorage.getItem(ENROL_ONLY) === '1';
}

export function setUser(user: User): void {
  localStorage.setItem(USER, JSON.stringify(user));
}

export function clear(): void {
  localStorage.removeItem(TOKEN);
  localStorage.removeItem(USER);
  localStorage.removeItem(ENROL_ONLY);
  localStorage.removeItem(NEW_PASSWORD);
}

/**
 * Calls `fn` when another tab signs in or out (the token changes there); `storage`
 * events never fire in the tab that made the change.
 */
export function onChangeElsewhere(fn: (signedIn: boolean) => void): void {
  window.addEventListener('storage', (e) => {
    if (e.storageArea !== localStorage) return;
    // `key === null` is localStorage.clear().
    if (e.key !== TOKEN && e.key !== null) return;
    if (e.oldValue === e.newValue) return;
    fn(!!token());
  });
}

/** A one-shot message for the sign-in page ("your session expired"); per tab. */
export function setFlash(message: string): void {
  sessionStorage.setItem(FLASH, message);
}

export function takeFlash(): string | null {
  const m = sessionStorage.getItem(FLASH);
  sessionStorage.removeItem(FLASH);
  return m;
}

export function isAdmin(): boolean {
  return currentUser()?.role === 'admin';
}

export function can(permission: string): boolean {
  const u = currentUser();
  return !!u && (u.role === 'admin' || u.permissions.includes(permission));
}
