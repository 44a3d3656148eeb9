// The REST client: bearer token from the session, the error envelope turned into
// `ApiError`, and a 401 on an authenticated call sending the user back to sign-in.

import * as session from './session';
import type { ErrorEnvelope } from './types';

export class ApiError extends Error {
  /** Set when the error was already dealt with (the user was signed out). */
  handled = false;
  constructor(
    readonly status: number,
    readonly detail: string,
    readonly errorCode: string | null = null,
    readonly correlationId: string | null = null,
  ) {
    super(detail);
    this.name = 'ApiError';
  }

  static from(err: unknown): ApiError {
    if (err instanceof ApiError) return err;
    if (err instanceof Error) return new ApiError(0, err.message);
    return new ApiError(0, String(err));
  }
}

/** Called when an authenticated request is answered 401. */
let onUnauthorized: (message: string) => void = () => {};
export function setUnauthorizedHandler(fn: (message: string) => void): void {
  onUnauthorized = fn;
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | boolean | null | undefined>;
  /** Don't treat 401 as an expired session (sign-in, password checks). */
  anonymous?: boolean;
  /** A 401 with this detail is an answer (a wrong current password), not an expired session. */
  expected401?: string;
  signal?: AbortSignal;
}

export async function request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
  let url = path;
  if (opts.query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(opts.query)) {
      if (v !== null && v !== undefined && v !== '') qs.set(k, String(v));
    }
    const s = qs.toString();
    if (s) url += `?${s}`;
  }
  const headers: Record<string, string> = { Accept: 'application/json' };
  const tok = session.token();
  if (tok && !opts.anonymous) headers.Authorization = `Bearer ${tok}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let res: Response;
  try {
    res = await fetch(url, { method, headers, body, signal: opts.signal ?? null });
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The server could not be reached. Check your connection and try again.');
  }
  if (res.ok) {
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }
  let env: Partial<ErrorEnvelope> = {};
  try {
    env = (await res.json()) as Partial<ErrorEnvelope>;
  } catch {
    env = {};
  }
  const err = new ApiError(
    res.status,
    env.detail ?? `${res.status} ${res.statusText || 'error'}`,
    env.error_code ?? null,
    env.correlation_id ?? res.headers.get('x-correlation-id'),
  );
  if (res.status === 429) {
    const retry = res.headers.get('retry-after');
    if (retry) err.message = `${err.detail} (retry in ${retry} s)`;
  }
  if (res.status === 401 && !opts.anonymous && tok && err.detail !== opts.expected401) {
    err.handled = true;
    onUnauthorized('Your session has expired or was signed out. Please sign in again.');
  }
  throw err;
}

export const api = {
  get: <T>(path: string, query?: RequestOptions['query'], signal?: AbortSignal) => request<T>('GET', path, { query, signal }),
  post: <T>(path: string, body?: unknown, opts: Omit<RequestOptions, 'body'> = {}) => request<T>('POST', path, { ...opts, body }),
  patch: <T>(path: string, body: unknown) => request<T>('PATCH', path, { body }),
  del: <T = void>(path: string) => request<T>('DELETE', path),
};
