// The signed-in user's token and profile, kept in sessionStorage (per tab, gone on close).

import type { User } from './types';

const TOKEN = 'gc.token';
const USER = 'gc.user';
const FLASH = 'gc.flash';
const ENROL_ONLY = 'gc.enrol-only';

export function token(): string | null {
  return sessionStorage.getItem(TOKEN);
}

export function currentUser(): User | null {
  const raw = sessionStorage.getItem(USER);
  if (!raw) return null;
  try {
    return JSON.parse(raw) as User;
  } catch {
    return null;
  }
}

/** Stores a sign-in; `enrolOnly` marks one that may only enrol the required second factor. */
export function signedIn(tok: string, user: User, enrolOnly = false): void {
  sessionStorage.setItem(TOKEN, tok);
  sessionStorage.setItem(USER, JSON.stringify(user));
  if (enrolOnly) sessionStorage.setItem(ENROL_ONLY, '1');
  else sessionStorage.removeItem(ENROL_ONLY);
}

/** The sign-in may only enrol a second factor (the role requires one). */
export function enrolOnly(): boolean {
  return sessionStorage.getItem(ENROL_ONLY) === '1';
}

export function setUser(user: User): void {
  sessionStorage.setItem(USER, JSON.stringify(user));
}

export function clear(): void {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(USER);
  sessionStorage.removeItem(ENROL_ONLY);
}

/** A one-shot message for the sign-in page ("your session expired"). */
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
