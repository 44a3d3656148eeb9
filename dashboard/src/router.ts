// Hash router: `#/machines`, `#/view/<session_id>`. Each page mounts into a root and may
// return a cleanup function (timers, sockets) that runs when the route changes.

export type Cleanup = () => void;
export interface PageContext {
  root: HTMLElement;
  params: string[];
  /** Aborted when the user leaves the page. */
  signal: AbortSignal;
}
export type Page = (ctx: PageContext) => Cleanup | void | Promise<Cleanup | void>;

export function navigate(path: string): void {
  const target = `#${path}`;
  if (location.hash === target) window.dispatchEvent(new HashChangeEvent('hashchange'));
  else location.hash = target;
}

export function currentPath(): string {
  return location.hash.replace(/^#/, '') || '/';
}
