// Light/dark theme: follows prefers-color-scheme until the user picks one.

const KEY = 'gc.theme';
type Choice = 'light' | 'dark' | 'auto';

function systemDark(): boolean {
  return window.matchMedia('(prefers-color-scheme: dark)').matches;
}

export function choice(): Choice {
  const v = localStorage.getItem(KEY);
  return v === 'light' || v === 'dark' ? v : 'auto';
}

export function effective(): 'light' | 'dark' {
  const c = choice();
  return c === 'auto' ? (systemDark() ? 'dark' : 'light') : c;
}

export function apply(): void {
  document.documentElement.dataset.theme = effective();
}

export function toggle(): 'light' | 'dark' {
  const next = effective() === 'dark' ? 'light' : 'dark';
  localStorage.setItem(KEY, next);
  apply();
  return next;
}

export function init(): void {
  apply();
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', apply);
}
