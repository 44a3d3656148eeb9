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
  /** Send this token instead of the session's (sign-out, after the session is cleared); a
   * 401 is then no expired session. */
  bearer?: string;
  /** Extra request headers (say `Range`). */
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

function buildUrl(path: string, query?: RequestOptions['query']): string {
  let url = path;
  if (query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== null && v !== undefined && v !== '') qs.set(k, String(v));
    }
    const s = qs.toString();
    if (s) url += `?${s}`;
  }
  return url;
}

/** Sends the request with the bearer token; resolves with an OK response, throws `ApiError` otherwise. */
async function send(method: string, path: string, opts: RequestOptions, accept: string): Promise<Response> {
  const headers: Record<string, string> = { ...opts.headers, Accept: accept };
  const tok = opts.bearer ?? session.token();
  if (tok && !opts.anonymous) headers.Authorization = `Bearer ${tok}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let res: Response;
  try {
    res = await fetch(buildUrl(path, opts.query), { method, headers, body, signal: opts.signal ?? null });
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The server could not be reached. Check your connection and try again.');
  }
  if (res.ok) return res;
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
  if (res.status === 401 && !opts.anonymous && !opts.bearer && tok && err.detail !== opts.expected401) {
    err.handled = true;
    onUnauthorized('Your session has expired or was signed out. Please sign in again.');
  }
  throw err;
}

export async function request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
  const res = await send(method, path, opts, 'application/json');
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/** A file the server sends as an attachment: its bytes and the name from Content-Disposition. */
export interface Download {
  blob: Blob;
  /** From `Content-Disposition: attachment; filename="…"`, or null when absent. */
  filename: string | null;
}

/** The file name in a Content-Disposition header (`filename*=UTF-8''…` or `filename="…"`). */
export function dispositionFilename(header: string | null): string | null {
  if (!header) return null;
  let name = '';
  const star = /filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/.exec(header);
  if (star?.[1]) {
    try {
      name = decodeURIComponent(star[1].trim());
    } catch {
      name = '';
    }
  }
  if (!name) {
    const plain = /filename\s*=\s*(?:"([^"]*)"|([^;]+))/.exec(header);
    name = (plain?.[1] ?? plain?.[2] ?? '').trim();
  }
  // Only a base name: no directories, no control characters.
  const safe = name.replace(/[\\/]/g, '_').replace(/[\u0000-\u001f\u007f]/g, '');
  return safe || null;
}

/** GETs a file with the bearer token (a plain link cannot carry it). */
export async function download(path: string, signal?: AbortSignal): Promise<Download> {
  const res = await send('GET', path, { signal }, '*/*');
  return { blob: await res.blob(), filename: dispositionFilename(res.headers.get('content-disposition')) };
}

/** GETs a file with the bearer token and `headers` (say `Range`); the OK response is the
 * caller's to read as it arrives. */
export function fetchFile(path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
  return send('GET', path, { headers, signal }, '*/*');
}

/** Hands `blob` to the browser as a download named `filename`. */
export function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  a.rel = 'noopener';
  a.style.display = 'none';
  document.body.appendChild(a);
  a.click();
  a.remove();
  // Revoke after the browser has started the download.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * PUTs a file as the raw request body (XHR, for upload progress); resolves with the JSON
 * answer, rejects with `ApiError` carrying the server's detail like `request`.
 */
export function uploadFile<T>(path: string, file: Blob, onProgress?: (sent: number, total: number) => void, signal?: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', path);
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    const tok = session.token();
    if (tok) xhr.setRequestHeader('Authorization', `Bearer ${tok}`);
    if (onProgress) xhr.upload.addEventListener('progress', (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size));
    const abort = () => xhr.abort();
    signal?.addEventListener('abort', abort, { once: true });
    const done = () => signal?.removeEventListener('abort', abort);
    xhr.addEventListener('load', () => {
      done();
      let body: unknown = undefined;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : undefined;
      } catch {
        body = undefined;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body as T);
        return;
      }
      const env = (body ?? {}) as Partial<ErrorEnvelope>;
      const err = new ApiError(
        xhr.status,
        env.detail ?? `${xhr.status} ${xhr.statusText || 'error'}`,
        env.error_code ?? null,
        env.correlation_id ?? xhr.getResponseHeader('x-correlation-id'),
      );
      if (xhr.status === 401 && tok) {
        err.handled = true;
        onUnauthorized('Your session has expired or was signed out. Please sign in again.');
      }
      reject(err);
    });
    xhr.addEventListener('error', () => {
      done();
      reject(new ApiError(0, 'The upload failed: the server could not be reached or closed the connection.'));
    });
    xhr.addEventListener('abort', () => {
      done();
      reject(new DOMException('The upload was cancelled', 'AbortError'));
    });
    xhr.send(file);
  });
}

export const api = {
  get: <T>(path: string, query?: RequestOptions['query'], signal?: AbortSignal) => request<T>('GET', path, { query, signal }),
  post: <T>(path: string, body?: unknown, opts: Omit<RequestOptions, 'body'> = {}) => request<T>('POST', path, { ...opts, body }),
  patch: <T>(path: string, body: unknown) => request<T>('PATCH', path, { body }),
  put: <T>(path: string, body: unknown) => request<T>('PUT', path, { body }),
  del: <T = void>(path: string) => request<T>('DELETE', path),
  download,
};
