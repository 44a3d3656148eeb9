// File transfer in the viewer (issue 14): uploads to and downloads from the remote machine
// over the viewer's WebSocket, one small state machine per transfer.
//
// Upload: FileUpload → FileInfo (accepted) → FileChunk… (≤ 48 KiB each, at most WINDOW
// beyond the agent's last FileAck) → FileDone (SHA-256) → FileResult. Download:
// FileDownload → FileInfo → FileChunk… (we ack every ACK_EVERY bytes) → FileResult, then
// the hash is checked and the browser saves the file. Either side may cancel.

import { sha256 } from '@noble/hashes/sha2.js';
import { bytesToHex } from '@noble/hashes/utils.js';
import { bytes, h, mount } from '../ui/dom';
import { toast } from '../ui/feedback';
import type { Envelope, EnvelopeProps } from './protocol';

/** A viewer's chunk: the relay closes a viewer whose message exceeds 64 KiB. */
export const CHUNK = 48 * 1024;
/** Bytes kept in flight beyond the receiver's last ack (FILE_WINDOW in crates/proto). */
export const WINDOW = 1024 * 1024;
/** A download is acked at least this often, or the agent stops after WINDOW. */
const ACK_EVERY = 256 * 1024;
/** Uploads read the file in blocks this large and cut them into chunks. */
const READ_BLOCK = 1024 * 1024;
/** Received chunks are folded into a Blob this often, which the browser may keep on disk. */
const FOLD_EVERY = 16 * 1024 * 1024;
/** How long a cancelled transfer waits for the machine to confirm. */
const CANCEL_GRACE_MS = 10_000;

// ---- SHA-256 ----

/**
 * Streaming SHA-256 (@noble/hashes): each chunk is hashed as it passes, so a big file is
 * never held twice, and it works where crypto.subtle is missing (a console served over
 * plain http).
 */
export class Sha256 {
  private readonly inner = sha256.create();

  update(data: Uint8Array): void {
    this.inner.update(data);
  }

  /** The digest as lowercase hex; call once. */
  hex(): string {
    return bytesToHex(this.inner.digest());
  }
}

// ---- transfers ----

export type TransferState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

interface Transfer {
  up: boolean;
  /** Per connection, from 1; 0 while queued. */
  id: number;
  name: string;
  size: number;
  sizeKnown: boolean;
  /** Bytes sent (upload) or received (download). */
  moved: number;
  /** The receiver's last ack: the agent's (upload) or ours (download). */
  acked: number;
  state: TransferState;
  /** The machine accepted (FileInfo came). */
  accepted: boolean;
  cancelling: boolean;
  cancelTimer: number;
  started: number;
  samples: [number, number][];
  hash: Sha256;
  /** The finished hash (hex), once known. */
  digest: string;
  // upload
  file?: File;
  directory?: string;
  overwrite?: boolean;
  pumping: boolean;
  doneSent: boolean;
  /** Where a resumed upload started (the bytes the machine already held). */
  resumedAt: number;
  block: Uint8Array | null;
  blockAt: number;
  // download
  path?: string;
  folded: Blob[];
  parts: Uint8Array[];
  partBytes: number;
  // the row
  row: HTMLElement;
  nameEl: HTMLElement;
  sizeEl: HTMLElement;
  bar: HTMLElement;
  fillEl: HTMLElement;
  status: HTMLElement;
  cancelBtn: HTMLButtonElement;
  lastPaint: number;
  paintTimer: number;
}

export interface FileHost {
  /** Sends one envelope on the viewer's socket; false when it is not open. */
  send(props: EnvelopeProps): boolean;
}

const FILE_PAYLOADS = new Set(['fileInfo', 'fileChunk', 'fileAck', 'fileResult', 'fileCancel']);

const mbps = (n: number, ms: number) => (ms > 0 ? n / 1e6 / (ms / 1000) : 0);

/** A path the machine can take as absolute: `/…`, `C:\…`, or `\\server\share…`. */
const absolute = (p: string) => /^(\/|[A-Za-z]:[\\/]|\\\\)/.test(p);

/**
 * The Files panel and its transfers. `viewer.ts` routes file messages to `onMessage`, says
 * when transfers may run (`setReady`), and `reset`s on every new connection: transfer ids
 * are per connection, and a transfer does not survive its connection.
 */
export class FileTransfers {
  readonly panel: HTMLElement;
  private readonly dirInput: HTMLInputElement;
  private readonly overwrite: HTMLInputElement;
  private readonly picker: HTMLInputElement;
  private readonly pathInput: HTMLInputElement;
  private readonly list: HTMLElement;
  private readonly note: HTMLElement;
  private readonly active = new Map<number, Transfer>();
  private readonly queue: Transfer[] = [];
  private nextId = 1;
  private ready = false;
  private dirKey: string;
  private dirTouched = false;
  private disposed = false;
  private dragTimer = 0;

  constructor(private readonly host: FileHost, sessionId: string) {
    this.dirKey = `gc.files.dir.${sessionId}`;
    this.dirInput = h('input', { id: 'files-dir', placeholder: '/tmp or C:\\Users\\Public\\Downloads', spellcheck: 'false', autocomplete: 'off', 'data-testid': 'files-dir' });
    this.dirInput.value = localStorage.getItem(this.dirKey) ?? '';
    this.dirInput.addEventListener('input', () => {
      this.dirTouched = true;
      localStorage.setItem(this.dirKey, this.dirInput.value.trim());
    });
    this.overwrite = h('input', { type: 'checkbox', id: 'files-overwrite', 'data-testid': 'files-overwrite' });
    this.picker = h('input', { type: 'file', multiple: true, hidden: true, 'data-testid': 'files-input', 'aria-label': 'Files to upload' });
    this.picker.addEventListener('change', () => {
      this.uploadFiles(this.picker.files);
      this.picker.value = '';
    });
    const choose = h('button', { class: 'btn btn-primary btn-sm', type: 'button', onclick: () => this.picker.click() }, 'Choose files…');
    this.pathInput = h('input', { id: 'files-path', placeholder: '/var/log/syslog or C:\\Windows\\Logs\\…', spellcheck: 'false', autocomplete: 'off', 'data-testid': 'files-path' });
    const downloadForm = h(
      'form',
      { class: 'files-form' },
      this.pathInput,
      h('button', { class: 'btn btn-sm', type: 'submit', 'data-testid': 'files-download' }, 'Download'),
    );
    downloadForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.download(this.pathInput.value.trim());
    });
    this.list = h('ul', { class: 'transfers', 'data-testid': 'transfers', 'aria-label': 'Transfers' });
    this.note = h('p', { class: 'muted small', hidden: true });
    const clear = h('button', { class: 'btn btn-ghost btn-sm', type: 'button', title: 'Remove finished transfers from the list', onclick: () => this.clearFinished() }, 'Clear finished');
    this.panel = h(
      'section',
      { class: 'side-panel files-panel', 'aria-label': 'Files', hidden: true, 'data-testid': 'files-panel' },
      h('h2', {}, 'Files'),
      this.note,
      h('label', { for: 'files-dir' }, 'Destination folder on the machine'),
      this.dirInput,
      h('label', { class: 'toggle', for: 'files-overwrite' }, this.overwrite, 'Overwrite existing files'),
      h('div', { class: 'row' }, choose, h('span', { class: 'muted small' }, 'or drop files here'), this.picker),
      h('label', { for: 'files-path' }, 'File or folder path on the machine (a folder comes as a .tar)'),
      downloadForm,
      h('div', { class: 'files-head' }, h('strong', { class: 'small' }, 'Transfers'), clear),
      this.list,
    );
    // Dropping anywhere on the panel uploads, like the picker.
    this.panel.addEventListener('dragover', (e) => this.dragOver(e));
    this.panel.addEventListener('drop', (e) => this.drop(e));
  }

  /** What the session is: in a support-code session the customer allows each transfer. */
  setSession(info: { agent_id?: string; kind?: string }): void {
    if (info.agent_id) {
      // The folder is remembered per machine; a session-keyed value moves over.
      const key = `gc.files.dir.${info.agent_id}`;
      if (key !== this.dirKey) {
        const saved = localStorage.getItem(key);
        localStorage.removeItem(this.dirKey);
        this.dirKey = key;
        if (this.dirTouched) localStorage.setItem(key, this.dirInput.value.trim());
        else if (saved !== null) this.dirInput.value = saved;
      }
    }
    const attended = info.kind === 'attended';
    this.note.hidden = !attended;
    this.note.textContent = attended ? 'The person at the machine is asked to allow each transfer.' : '';
  }

  /** Transfers run while the session is active under control; otherwise they wait (or end). */
  setReady(ready: boolean, why = 'the session is no longer active'): void {
    if (this.ready === ready) return;
    this.ready = ready;
    if (!ready) this.failActive(why);
    else this.startNext();
  }

  /** A new connection (or none): running transfers are over, ids start again from 1. */
  reset(why: string): void {
    this.failActive(why);
    this.ready = false;
    this.nextId = 1;
  }

  /** Handles a file message; false when it is not one. */
  onMessage(env: Envelope): boolean {
    if (!env.payload || !FILE_PAYLOADS.has(env.payload)) return false;
    switch (env.payload) {
      case 'fileInfo': {
        const m = env.fileInfo;
        const t = m && this.active.get(m.transferId ?? 0);
        if (!t || t.accepted) return true;
        t.accepted = true;
        if (m.name) t.name = m.name;
        if (!t.up) {
          t.size = Number(m.size ?? 0);
          t.sizeKnown = true;
        }
        t.started = performance.now();
        t.samples = [[t.started, 0]];
        this.paint(t, true);
        const offset = Number(m.offset ?? 0);
        if (t.up && offset > 0) void this.resumeFrom(t, offset);
        else if (t.up) void this.pump(t);
        return true;
      }
      case 'fileAck': {
        const m = env.fileAck;
        const t = m && this.active.get(m.transferId ?? 0);
        if (!t || !t.up) return true;
        t.acked = Math.max(t.acked, Number(m.received ?? 0));
        void this.pump(t);
        return true;
      }
      case 'fileChunk': {
        const m = env.fileChunk;
        const t = m && this.active.get(m.transferId ?? 0);
        if (!t || t.up || t.cancelling) return true;
        const data = m.data ?? new Uint8Array(0);
        const offset = Number(m.offset ?? 0);
        if (!t.accepted || offset !== t.moved || (t.sizeKnown && t.moved + data.length > t.size)) {
          this.abort(t, `the machine sent bytes out of order (at ${offset}, expected ${t.moved})`);
          return true;
        }
        t.hash.update(data);
        t.parts.push(data);
        t.partBytes += data.length;
        t.moved += data.length;
        if (t.partBytes >= FOLD_EVERY) {
          t.folded.push(new Blob(t.parts as BlobPart[]));
          t.parts = [];
          t.partBytes = 0;
        }
        this.ackDownload(t, t.moved === t.size);
        this.paint(t);
        return true;
      }
      case 'fileCancel': {
        const m = env.fileCancel;
        const t = m && this.active.get(m.transferId ?? 0);
        if (!t) return true;
        if (t.cancelling) this.finish(t, 'cancelled', m.reason || 'cancelled');
        else this.finish(t, 'failed', `the machine cancelled the transfer${m.reason ? `: ${m.reason}` : ''}`);
        return true;
      }
      case 'fileResult': {
        const m = env.fileResult;
        const t = m && this.active.get(m.transferId ?? 0);
        if (!t) return true;
        if (!m.ok) {
          this.finish(t, t.cancelling ? 'cancelled' : 'failed', m.error || 'the transfer failed');
          return true;
        }
        this.succeeded(t, m.sha256 ?? '', Number(m.bytes ?? 0), m.path ?? '');
        return true;
      }
    }
    return true;
  }

  /** Queues uploads of `files` into the destination folder, one after another. */
  uploadFiles(files: FileList | File[] | null): void {
    const all = Array.from(files ?? []);
    if (!all.length) return;
    const directory = this.dirInput.value.trim();
    if (!absolute(directory)) {
      toast('Enter the destination folder on the machine (an absolute path) first', 'bad');
      this.dirInput.focus();
      return;
    }
    localStorage.setItem(this.dirKey, directory);
    for (const file of all) {
      const t = this.add(true, file.name, file.size, true);
      t.file = file;
      t.directory = directory;
      t.overwrite = this.overwrite.checked;
    }
    this.startNext();
  }

  /** Fetches the file at `path` on the machine. */
  download(path: string): void {
    if (!absolute(path)) {
      toast('Enter the absolute path of a file on the machine', 'bad');
      this.pathInput.focus();
      return;
    }
    const name = path.split(/[\\/]/).pop() || path;
    const t = this.add(false, name, 0, false);
    t.path = path;
    this.startNext();
  }

  /** Files dragged over the screen or the panel may be dropped here. */
  dragOver(e: DragEvent): void {
    if (!e.dataTransfer?.types.includes('Files')) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'copy';
    // dragover repeats while files hover; the highlight goes when it stops.
    this.panel.classList.add('drag-over');
    window.clearTimeout(this.dragTimer);
    this.dragTimer = window.setTimeout(() => this.panel.classList.remove('drag-over'), 250);
  }

  drop(e: DragEvent): void {
    if (!e.dataTransfer?.files.length) return;
    e.preventDefault();
    this.uploadFiles(e.dataTransfer.files);
  }

  /** Cancels what runs (the page is closing) and stops painting. */
  dispose(): void {
    this.disposed = true;
    this.queue.length = 0;
    for (const t of [...this.active.values()]) {
      this.host.send({ fileCancel: { transferId: t.id, reason: 'the viewer was closed' } });
      this.finish(t, 'cancelled', 'the viewer was closed');
    }
  }

  // ---- internals ----

  private add(up: boolean, name: string, size: number, sizeKnown: boolean): Transfer {
    const nameEl = h('span', { class: 'transfer-name', title: name }, name);
    const sizeEl = h('span', { class: 'muted small' }, sizeKnown ? bytes(size) : '');
    const fillEl = h('span', { class: 'transfer-fill' });
    const bar = h('div', { class: 'transfer-bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0', 'aria-label': `${up ? 'Upload' : 'Download'} of ${name}` }, fillEl);
    const status = h('div', { class: 'transfer-status small', 'data-testid': 'transfer-status' });
    const cancelBtn = h('button', { class: 'btn btn-ghost btn-sm', type: 'button', 'data-testid': 'transfer-cancel' }, 'Cancel');
    const row = h(
      'li',
      { class: 'transfer', 'data-testid': 'transfer', 'data-direction': up ? 'upload' : 'download' },
      h('div', { class: 'transfer-head' }, h('span', { class: 'transfer-dir', title: up ? 'Upload to the machine' : 'Download from the machine', 'aria-label': up ? 'Upload' : 'Download' }, up ? '↑' : '↓'), nameEl, sizeEl),
      bar,
      h('div', { class: 'transfer-foot' }, status, cancelBtn),
    );
    const t: Transfer = {
      up, id: 0, name, size, sizeKnown, moved: 0, acked: 0, state: 'queued', accepted: false, cancelling: false, cancelTimer: 0,
      started: 0, samples: [], hash: new Sha256(), digest: '', pumping: false, doneSent: false, resumedAt: 0, block: null, blockAt: 0,
      folded: [], parts: [], partBytes: 0, row, nameEl, sizeEl, bar, fillEl, status, cancelBtn, lastPaint: 0, paintTimer: 0,
    };
    cancelBtn.addEventListener('click', () => this.cancel(t));
    this.queue.push(t);
    this.list.prepend(row);
    this.paint(t, true);
    return t;
  }

  /** Starts the first queued upload and download when none of its kind runs. */
  private startNext(): void {
    if (!this.ready || this.disposed) return;
    for (const up of [true, false]) {
      if ([...this.active.values()].some((t) => t.up === up)) continue;
      const i = this.queue.findIndex((t) => t.up === up);
      if (i < 0) continue;
      const [t] = this.queue.splice(i, 1);
      t.id = this.nextId++;
      t.state = 'running';
      t.started = performance.now();
      this.active.set(t.id, t);
      const sent = up
        ? this.host.send({ fileUpload: { transferId: t.id, directory: t.directory, name: t.name, size: t.size, overwrite: t.overwrite, resume: true } })
        : this.host.send({ fileDownload: { transferId: t.id, path: t.path } });
      if (!sent) this.finish(t, 'failed', 'not connected to the machine');
      else this.paint(t, true);
    }
  }

  /**
   * The machine holds the first `offset` bytes from an upload of this name that was cut
   * off: hash them here too (the SHA-256 covers the whole file), then send the rest.
   */
  private async resumeFrom(t: Transfer, offset: number): Promise<void> {
    if (offset > t.size) {
      this.abort(t, `the machine holds ${offset} bytes of a ${t.size}-byte file`);
      return;
    }
    try {
      for (let at = 0; at < offset; at += READ_BLOCK) {
        const buf = await (t.file as File).slice(at, Math.min(offset, at + READ_BLOCK)).arrayBuffer();
        if (t.state !== 'running' || t.cancelling) return;
        t.hash.update(new Uint8Array(buf));
      }
    } catch (e) {
      this.abort(t, `could not read the file: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    t.moved = offset;
    t.acked = offset;
    t.resumedAt = offset;
    t.started = performance.now();
    t.samples = [[t.started, offset]];
    this.paint(t, true);
    void this.pump(t);
  }

  /** Sends upload chunks while the window allows; FileDone once every byte is out. */
  private async pump(t: Transfer): Promise<void> {
    if (t.pumping) return;
    t.pumping = true;
    try {
      while (t.state === 'running' && !t.cancelling && t.moved < t.size && t.moved - t.acked < WINDOW) {
        if (!t.block || t.moved >= t.blockAt + t.block.length) {
          const at = t.moved;
          const buf = await (t.file as File).slice(at, Math.min(t.size, at + READ_BLOCK)).arrayBuffer();
          if (t.state !== 'running' || t.cancelling) break;
          if (buf.byteLength === 0) throw new Error('the file got shorter while it was read');
          t.block = new Uint8Array(buf);
          t.blockAt = at;
        }
        const from = t.moved - t.blockAt;
        const len = Math.min(CHUNK, t.block.length - from, WINDOW - (t.moved - t.acked));
        const data = t.block.subarray(from, from + len);
        if (!this.host.send({ fileChunk: { transferId: t.id, offset: t.moved, data } })) {
          this.finish(t, 'failed', 'the connection to the machine was lost');
          break;
        }
        t.hash.update(data);
        t.moved += len;
        this.paint(t);
      }
      if (t.state === 'running' && !t.cancelling && t.accepted && t.moved === t.size && !t.doneSent) {
        t.doneSent = true;
        t.block = null;
        t.digest = t.hash.hex();
        this.host.send({ fileDone: { transferId: t.id, sha256: t.digest } });
        this.paint(t, true);
      }
    } catch (e) {
      this.abort(t, `could not read the file: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      t.pumping = false;
    }
  }

  /** Acks what has arrived every ACK_EVERY bytes, and at the end. */
  private ackDownload(t: Transfer, last: boolean): void {
    if (t.moved - t.acked >= ACK_EVERY || (last && t.moved !== t.acked)) {
      t.acked = t.moved;
      this.host.send({ fileAck: { transferId: t.id, received: t.moved } });
    }
  }

  /** The machine's FileResult ok: the hashes must agree, and a download is saved. */
  private succeeded(t: Transfer, sha256: string, count: number, path: string): void {
    if (t.up && !t.doneSent) {
      this.finish(t, 'failed', 'the machine reported success before the upload was complete');
      return;
    }
    if (!t.up) t.digest = t.hash.hex();
    const theirs = sha256.toLowerCase();
    if (theirs !== t.digest || count !== t.moved || (t.sizeKnown && t.moved !== t.size)) {
      const what = t.up ? 'the file written on the machine' : 'the file received';
      this.finish(t, 'failed', `${what} does not match: ${count} bytes with SHA-256 ${theirs.slice(0, 12)}…, expected ${t.moved} bytes with ${t.digest.slice(0, 12)}…`);
      return;
    }
    if (!t.up) this.save(t);
    const ms = performance.now() - t.started;
    this.finish(t, 'done', [
      '✓ ',
      t.up ? 'Saved to ' : 'Downloaded ',
      h('span', { class: 'mono transfer-path', 'data-testid': 'transfer-path' }, path),
      h('br'),
      h('span', { class: 'muted' }, 'SHA-256 ', h('span', { class: 'mono', 'data-testid': 'transfer-sha', title: t.digest }, t.digest.slice(0, 12)), ` · ${bytes(t.moved)}${t.resumedAt ? ` (resumed at ${bytes(t.resumedAt)})` : ''} in ${(ms / 1000).toFixed(1)} s · `, h('span', { 'data-testid': 'transfer-speed' }, `${mbps(t.moved - t.resumedAt, ms).toFixed(1)} MB/s`)),
    ]);
  }

  /** Hands a finished download to the browser's downloads. */
  private save(t: Transfer): void {
    const blob = new Blob([...t.folded, new Blob(t.parts as BlobPart[])], { type: 'application/octet-stream' });
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: t.name, hidden: true });
    document.body.appendChild(a);
    a.click();
    a.remove();
    // Revoking at once can cut the download short in some browsers.
    window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  /** The technician's Cancel: queued ones just go; running ones wait for the machine. */
  private cancel(t: Transfer): void {
    if (t.state === 'queued') {
      this.queue.splice(this.queue.indexOf(t), 1);
      this.finish(t, 'cancelled', 'cancelled before it started');
      return;
    }
    if (t.state !== 'running' || t.cancelling) return;
    t.cancelling = true;
    this.host.send({ fileCancel: { transferId: t.id, reason: 'cancelled by the technician' } });
    // The machine confirms with FileResult once the partial file is gone.
    t.cancelTimer = window.setTimeout(() => this.finish(t, 'cancelled', 'cancelled (the machine did not confirm)'), CANCEL_GRACE_MS);
    this.paint(t, true);
  }

  /** Ends a transfer on our side for `why`, telling the machine. */
  private abort(t: Transfer, why: string): void {
    if (t.state !== 'running') return;
    this.host.send({ fileCancel: { transferId: t.id, reason: why } });
    this.finish(t, 'failed', why);
  }

  private failActive(why: string): void {
    for (const t of [...this.active.values()]) this.finish(t, 'failed', why);
  }

  private finish(t: Transfer, state: TransferState, result: string | (Node | string)[]): void {
    if (t.state === 'done' || t.state === 'failed' || t.state === 'cancelled') return;
    t.state = state;
    window.clearTimeout(t.cancelTimer);
    window.clearTimeout(t.paintTimer);
    if (t.id) this.active.delete(t.id);
    t.block = null;
    t.folded = [];
    t.parts = [];
    t.file = undefined;
    if (typeof result === 'string') {
      const text = state === 'cancelled' && !/cancel/i.test(result) ? `Cancelled: ${result}` : result;
      result = ['✗ ', h('span', { 'data-testid': 'transfer-error' }, text.charAt(0).toUpperCase() + text.slice(1))];
    }
    this.paint(t, true, result);
    this.startNext();
  }

  private clearFinished(): void {
    for (const row of [...this.list.children] as HTMLElement[]) {
      if (row.dataset.state !== 'running' && row.dataset.state !== 'queued') row.remove();
    }
  }

  /** Draws the row; progress at most ~6 times a second, state changes at once. */
  private paint(t: Transfer, now = false, result?: (Node | string)[]): void {
    if (this.disposed) return;
    const at = performance.now();
    if (!now && t.state === 'running') {
      if (at - t.lastPaint < 150) {
        if (!t.paintTimer) t.paintTimer = window.setTimeout(() => this.paint(t, true), 160);
        return;
      }
    }
    window.clearTimeout(t.paintTimer);
    t.paintTimer = 0;
    t.lastPaint = at;
    t.row.dataset.state = t.state;
    t.nameEl.textContent = t.name;
    t.nameEl.title = t.name;
    t.sizeEl.textContent = t.sizeKnown ? bytes(t.size) : '';
    const pct = t.state === 'done' ? 100 : t.sizeKnown && t.size > 0 ? Math.floor((t.moved / t.size) * 100) : 0;
    t.bar.setAttribute('aria-valuenow', String(pct));
    t.fillEl.style.width = `${pct}%`;
    t.cancelBtn.hidden = t.state !== 'running' && t.state !== 'queued';
    t.cancelBtn.disabled = t.cancelling;
    if (result !== undefined) {
      mount(t.status, result);
      return;
    }
    if (t.state === 'queued') mount(t.status, this.ready ? 'Waiting…' : 'Waiting for the session…');
    else if (t.cancelling) mount(t.status, 'Cancelling…');
    else if (!t.accepted) mount(t.status, t.up ? 'Asking the machine…' : 'Opening the file…');
    else if (t.up && t.doneSent) mount(t.status, 'Checking on the machine…');
    else {
      // Speed over the last ~2 s, so a stall shows.
      t.samples.push([at, t.moved]);
      while (t.samples.length > 2 && at - t.samples[1][0] > 2000) t.samples.shift();
      const [t0, b0] = t.samples[0];
      const speed = mbps(t.moved - b0, at - t0);
      mount(t.status, `${bytes(t.moved)} of ${bytes(t.size)} · `, h('span', { 'data-testid': 'transfer-speed' }, `${speed.toFixed(1)} MB/s`));
    }
  }
}
