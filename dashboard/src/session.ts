// The signed-in user's token and profile, kept in sessionStorage (per tab, gone on close).

import type { User } from './types';

const TOKEN = 'gc.token';
const USER = 'gc.user';
const FLASH = 'gc.flash';

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

export function signedIn(tok: string, user: User): void {
  sessionStorage.setItem(TOKEN, tok);
  sessionStorage.setItem(USER, JSON.stringify(user));
}

export function setUser(user: User): void {
  sessionStorage.setItem(USER, JSON.stringify(user));
}

export function clear(): void {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(USER);
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
