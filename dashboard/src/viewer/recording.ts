// Session recordings (docs/recordings.md): the `.gcrec` parser and the player engine.
//
// A file is a header ("GCREC1\n", u32 JSON length, the JSON) and then records (u8 type,
// u32 t_ms, u32 len, payload), little-endian. Readers stop at the first incomplete record,
// so a file cut short by a crash plays up to its last whole record.
//
// The player reads the file as it arrives, from a keyframe's offset (HTTP Range), and
// draws each frame at its recorded time × speed with the live viewer's decoders; the
// remote cursor is drawn over the picture. A seek starts at the last keyframe at or before
// the chosen time and decodes without delay up to it.

import { pb, type VideoFrameMsg } from './protocol';
import { drawRawZstd, H264Renderer, h264Supported } from './render';

// ---- the format ----

export const MAGIC = 'GCREC1\n';
/** Size of a record's header: type, t_ms, len. */
export const RECORD_HEADER = 9;
/** Magic and the JSON length. */
const FILE_PREAMBLE = MAGIC.length + 4;
const MAX_HEADER_JSON = 64 * 1024;
/** A record claiming more than this is taken for damage, not data: reading ends there
 * (else a reader would buffer the rest of the file waiting for it). */
const MAX_RECORD = 128 * 1024 * 1024;

export const RecordType = { Frame: 1, Keyframe: 2, Stream: 3, Input: 4, Chat: 5, Event: 6, Terminal: 7 } as const;

/** The JSON in a file's header. */
export interface RecordingHeader {
  session_id: string;
  agent_id: string;
  hostname: string;
  kind: string;
  /** Wall-clock start, ms since the epoch. */
  started_at: number;
}

/** One record. */
export interface Rec {
  type: number;
  /** Milliseconds since the recording started. */
  t: number;
  /** Byte offset of the record's header in the file. */
  offset: number;
  payload: Uint8Array;
}

export class RecordingFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RecordingFormatError';
  }
}

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/**
 * The file header at the start of `bytes`: the header and its size, or null while `bytes`
 * is too short to hold it. Throws `RecordingFormatError` when it is no recording.
 */
export function parseHeader(bytes: Uint8Array): { header: RecordingHeader; size: number } | null {
  const magicLen = Math.min(bytes.length, MAGIC.length);
  for (let i = 0; i < magicLen; i++) {
    if (bytes[i] !== MAGIC.charCodeAt(i)) throw new RecordingFormatError('not a GuruConnect recording');
  }
  if (bytes.length < FILE_PREAMBLE) return null;
  const jsonLen = view(bytes).getUint32(MAGIC.length, true);
  if (jsonLen > MAX_HEADER_JSON) throw new RecordingFormatError('the recording header is too large');
  if (bytes.length < FILE_PREAMBLE + jsonLen) return null;
  let header: RecordingHeader;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(FILE_PREAMBLE, FILE_PREAMBLE + jsonLen))) as RecordingHeader;
  } catch {
    throw new RecordingFormatError('the recording header is not valid JSON');
  }
  if (!header || typeof header !== 'object') throw new RecordingFormatError('the recording header is not valid');
  return { header, size: FILE_PREAMBLE + jsonLen };
}

/** What `scanRecords` found. */
export interface Scan {
  records: Rec[];
  /** Index in `bytes` just past the last whole record. */
  end: number;
  /** Bytes needed from `end` before the next record can be read; 0 when a damaged
   * record ends the file (nothing after it can be read). */
  need: number;
}

/**
 * The whole records in `bytes` from `start`; `base` is the file offset of `bytes[0]`.
 * Stops at a record whose header or payload is incomplete. Payloads are views into `bytes`.
 */
export function scanRecords(bytes: Uint8Array, start = 0, base = 0): Scan {
  const dv = view(bytes);
  const records: Rec[] = [];
  let pos = start;
  for (;;) {
    if (pos + RECORD_HEADER > bytes.length) return { records, end: pos, need: RECORD_HEADER };
    const len = dv.getUint32(pos + 5, true);
    if (len > MAX_RECORD) return { records, end: pos, need: 0 };
    if (pos + RECORD_HEADER + len > bytes.length) return { records, end: pos, need: RECORD_HEADER + len };
    records.push({
      type: bytes[pos] as number,
      t: dv.getUint32(pos + 1, true),
      offset: base + pos,
      payload: bytes.subarray(pos + RECORD_HEADER, pos + RECORD_HEADER + len),
    });
    pos += RECORD_HEADER + len;
  }
}

/** A whole file (or what arrived of one): its header, every whole record, and whether
 * bytes were left over (a record cut short). */
export function parseRecording(bytes: Uint8Array): { header: RecordingHeader; records: Rec[]; end: number; truncated: boolean } {
  const head = parseHeader(bytes);
  if (!head) throw new RecordingFormatError('the recording header is incomplete');
  const { records, end } = scanRecords(bytes, head.size);
  return { header: head.header, records, end, truncated: end < bytes.length };
}

/**
 * Records from a file read in pieces: `push` each chunk as it arrives and get back the
 * records it completed. Starting at offset 0 reads the file header first; any other
 * offset must be a record's (a keyframe's offset from the index).
 */
export class RecordReader {
  header: RecordingHeader | null = null;
  /** A damaged record was met: the rest of the file is ignored. */
  stopped = false;
  private chunks: Uint8Array[] = [];
  private held = 0;
  private need: number;
  private wantHeader: boolean;

  constructor(private offset = 0) {
    this.wantHeader = offset === 0;
    this.need = this.wantHeader ? FILE_PREAMBLE : RECORD_HEADER;
  }

  /** Bytes held that do not make a whole record yet. */
  get buffered(): number {
    return this.held;
  }

  push(chunk: Uint8Array): Rec[] {
    if (this.stopped || !chunk.length) return [];
    this.chunks.push(chunk);
    this.held += chunk.length;
    // Small pieces of a large frame wait until the frame is complete: one copy, not many.
    if (this.held < this.need) return [];
    const buf = this.chunks.length === 1 ? (this.chunks[0] as Uint8Array) : concat(this.chunks, this.held);
    let start = 0;
    if (this.wantHeader) {
      const head = parseHeader(buf);
      if (!head) {
        this.keep(buf, 0, buf.length < FILE_PREAMBLE ? FILE_PREAMBLE : FILE_PREAMBLE + view(buf).getUint32(MAGIC.length, true));
        return [];
      }
      this.header = head.header;
      this.wantHeader = false;
      start = head.size;
    }
    const scan = scanRecords(buf, start, this.offset);
    if (scan.need === 0) this.stopped = true;
    this.keep(buf, scan.end, scan.need);
    return scan.records;
  }

  private keep(buf: Uint8Array, from: number, need: number): void {
    const rest = buf.subarray(from);
    this.offset += from;
    this.chunks = rest.length ? [rest] : [];
    this.held = rest.length;
    this.need = need;
  }
}

function concat(chunks: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** `stream` without its first `n` bytes (for a server that ignored a Range request). */
export function skipBytes(stream: ReadableStream<Uint8Array>, n: number): ReadableStream<Uint8Array> {
  let left = n;
  return stream.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, out) {
        if (left >= chunk.length) {
          left -= chunk.length;
          return;
        }
        out.enqueue(left ? chunk.subarray(left) : chunk);
        left = 0;
      },
    }),
  );
}

// ---- the player ----

export interface Keyframe {
  t: number;
  offset: number;
}

export type PlayerState = 'loading' | 'seeking' | 'paused' | 'playing' | 'ended' | 'error';

export interface PlayerOptions {
  /** The picture. */
  canvas: HTMLCanvasElement;
  /** Drawn with the remote cursor and placed over `canvas` (the caller positions its
   * parent over the canvas; left/top/width/height are set here, in percent). */
  cursor: HTMLCanvasElement;
  /** From the index: every keyframe, in order. */
  keyframes: Keyframe[];
  /** From the index: the time of the last whole record. */
  endT: number;
  /** Opens the file from `offset`: 0 for the whole file, else a keyframe's offset. */
  open: (offset: number, signal: AbortSignal) => Promise<ReadableStream<Uint8Array>>;
  onState?: (state: PlayerState, error?: unknown) => void;
  /** The playback position, on every animation frame while it moves. */
  onTime?: (t: number) => void;
}

/** Read this far ahead of the playback position (ms of recording)… */
const READ_AHEAD_MS = 10_000;
/** …but hold no more than this many bytes of records not yet shown. */
const READ_AHEAD_BYTES = 48 * 1024 * 1024;
/** H.264 chunks that may wait in the decoder while playing; beyond, frames are dropped up
 * to the next keyframe (at most ~5 s on) rather than playing ever later. */
const PLAY_DECODE_QUEUE = 120;
/** Cursor positions remembered for seeks (a long session moves the mouse a lot). */
const MAX_REMEMBERED = 100_000;

interface CursorImage {
  image: ImageData | null;
  width: number;
  height: number;
  hotX: number;
  hotY: number;
}

interface CursorPos {
  x: number;
  y: number;
  visible: boolean;
}

/** One open read of the file. */
interface Source {
  abort: AbortController;
  reader: ReadableStreamDefaultReader<Uint8Array>;
  parser: RecordReader;
  queue: Rec[];
  head: number;
  queuedBytes: number;
  /** Time of the last record read. */
  lastT: number;
  done: boolean;
  reading: Promise<void> | null;
}

/** A timeline of what the cursor was, learnt while playing, so a seek can restore it. */
class Remembered<T> {
  private items: { t: number; offset: number; value: T }[] = [];
  private seen = new Set<number>();

  add(t: number, offset: number, value: T): void {
    if (this.seen.has(offset) || this.items.length >= MAX_REMEMBERED) return;
    this.seen.add(offset);
    let i = this.items.length;
    while (i > 0 && (this.items[i - 1] as { t: number }).t > t) i--;
    this.items.splice(i, 0, { t, offset, value });
  }

  /** The last value at or before `t`. */
  at(t: number): T | null {
    let found: T | null = null;
    for (const item of this.items) {
      if (item.t > t) break;
      found = item.value;
    }
    return found;
  }
}

const DEFAULT_CURSOR: CursorImage = { image: null, width: 12, height: 19, hotX: 0, hotY: 0 };

export class RecordingPlayer {
  state: PlayerState = 'loading';
  speed = 1;
  /** Frames drawn since the last seek (0: no picture at this time yet). */
  framesSinceSeek = 0;
  private readonly ctx: CanvasRenderingContext2D;
  private readonly h264: H264Renderer;
  private h264ok = false;
  private h264Warned = false;
  private src: Source | null = null;
  /** Playback position at `wall0`. */
  private t0 = 0;
  private wall0 = 0;
  private shown = 0;
  private raf = 0;
  /** Bumped by every seek and by dispose: older async work sees it and stops. */
  private gen = 0;
  private playAfterSeek = false;
  private framesDrawn = 0;
  private cursorImage: CursorImage | null = null;
  private cursorPos: CursorPos | null = null;
  private cursorDrawn: CursorImage | null = null;
  private readonly shapes = new Remembered<CursorImage>();
  private readonly positions = new Remembered<CursorPos>();

  constructor(private readonly opts: PlayerOptions) {
    this.ctx = opts.canvas.getContext('2d', { alpha: false }) as CanvasRenderingContext2D;
    this.h264 = new H264Renderer(opts.canvas, this.ctx, () => this.drawn(), () => {}, PLAY_DECODE_QUEUE);
    opts.cursor.hidden = true;
  }

  get endT(): number {
    return this.opts.endT;
  }

  /** The playback position now. */
  get time(): number {
    return this.state === 'playing' ? this.t0 + (performance.now() - this.wall0) * this.speed : this.t0;
  }

  /** Checks what the browser decodes and shows the picture at `t`. */
  async start(t = 0, play = false): Promise<void> {
    this.h264ok = await h264Supported();
    await this.seek(t, play);
  }

  play(): void {
    if (this.state === 'playing' || this.state === 'error' || this.state === 'loading') return;
    if (this.state === 'seeking') {
      this.playAfterSeek = true;
      return;
    }
    if (this.state === 'ended' || this.t0 >= this.endT) {
      void this.seek(0, true);
      return;
    }
    this.rebase(this.t0);
    this.setState('playing');
    this.schedule();
  }

  pause(): void {
    if (this.state === 'seeking') {
      this.playAfterSeek = false;
      return;
    }
    if (this.state !== 'playing') return;
    this.rebase(Math.round(this.time));
    this.emitTime(this.t0);
    this.setState('paused');
  }

  setSpeed(speed: number): void {
    // The position so far was reached at the old speed.
    this.rebase(this.time);
    this.speed = speed;
  }

  /**
   * Shows the picture at `t`: from the last keyframe at or before it, every record up to
   * `t` without delay; then plays on if it was playing (or `play` says so).
   */
  async seek(t: number, play = this.state === 'playing' || (this.state === 'seeking' && this.playAfterSeek)): Promise<void> {
    const gen = ++this.gen;
    t = Math.max(0, Math.min(Math.round(t), this.endT));
    this.playAfterSeek = play;
    this.stopClock();
    this.closeSource();
    this.setState('seeking');
    this.t0 = t;
    this.emitTime(t);
    const key = lastKeyframe(this.opts.keyframes, t);
    this.h264.close();
    this.framesSinceSeek = 0;
    if (!key) this.clearPicture();
    this.cursorImage = this.shapes.at(t);
    this.cursorPos = this.positions.at(t);
    this.drawCursor();
    try {
      const src = await this.openSource(key ? key.offset : 0);
      if (gen !== this.gen) {
        src.abort.abort();
        return;
      }
      this.src = src;
      // Every frame up to t must reach the decoder.
      this.h264.maxQueue = Infinity;
      for (;;) {
        this.applyUpTo(src, t);
        if (src.head < src.queue.length || src.done) break;
        await this.readChunk(src);
        if (gen !== this.gen) return;
      }
      await this.h264.settle();
      this.h264.maxQueue = PLAY_DECODE_QUEUE;
      if (gen !== this.gen) return;
    } catch (e) {
      if (gen === this.gen) this.fail(e);
      return;
    }
    this.rebase(t);
    this.emitTime(t);
    if (this.playAfterSeek) {
      this.setState('playing');
      this.schedule();
    } else {
      this.setState('paused');
    }
    this.pump();
  }

  dispose(): void {
    this.gen++;
    this.stopClock();
    this.closeSource();
    this.h264.close();
  }

  // ---- clock ----

  private rebase(t: number): void {
    this.t0 = t;
    this.wall0 = performance.now();
  }

  private schedule(): void {
    if (!this.raf) this.raf = requestAnimationFrame(this.tick);
  }

  private stopClock(): void {
    if (this.raf) cancelAnimationFrame(this.raf);
    this.raf = 0;
  }

  private readonly tick = () => {
    this.raf = 0;
    const src = this.src;
    if (this.state !== 'playing' || !src) return;
    let now = this.time;
    this.applyUpTo(src, now);
    const starved = src.head >= src.queue.length && !src.done;
    if (starved) {
      // What comes next has not arrived yet: hold the clock until it has.
      this.rebase(this.shown);
      now = this.shown;
    }
    const end = Math.max(this.endT, src.done ? src.lastT : 0);
    if (src.done && src.head >= src.queue.length && now >= end) {
      this.rebase(end);
      this.emitTime(end);
      this.setState('ended');
      return;
    }
    this.emitTime(Math.min(now, end));
    this.pump();
    this.schedule();
  };

  private emitTime(t: number): void {
    this.shown = t;
    this.opts.onTime?.(t);
  }

  private setState(state: PlayerState, error?: unknown): void {
    if (this.state === state && error === undefined) return;
    this.state = state;
    this.opts.onState?.(state, error);
  }

  private fail(e: unknown): void {
    this.stopClock();
    this.closeSource();
    this.setState('error', e);
  }

  // ---- reading ----

  private async openSource(offset: number): Promise<Source> {
    const abort = new AbortController();
    const stream = await this.opts.open(offset, abort.signal);
    return {
      abort,
      reader: stream.getReader(),
      parser: new RecordReader(offset),
      queue: [],
      head: 0,
      queuedBytes: 0,
      lastT: 0,
      done: false,
      reading: null,
    };
  }

  private closeSource(): void {
    const src = this.src;
    this.src = null;
    if (!src) return;
    src.done = true;
    src.abort.abort();
    src.reader.cancel().catch(() => {});
  }

  /** Reads one piece of the file into `src`'s queue (shared by concurrent callers). */
  private readChunk(src: Source): Promise<void> {
    if (!src.reading) {
      src.reading = (async () => {
        try {
          const { value, done } = await src.reader.read();
          if (done || !value) {
            src.done = true;
            return;
          }
          for (const rec of src.parser.push(value)) {
            src.queue.push(rec);
            src.queuedBytes += rec.payload.length;
            src.lastT = rec.t;
          }
          if (src.parser.stopped) src.done = true;
        } finally {
          src.reading = null;
        }
      })();
    }
    return src.reading;
  }

  /** Reads ahead of the playback position in the background. */
  private pump(): void {
    const src = this.src;
    if (!src || src.done || src.reading) return;
    const ahead = src.head < src.queue.length;
    if (ahead && (src.lastT - this.time >= READ_AHEAD_MS || src.queuedBytes >= READ_AHEAD_BYTES)) return;
    this.readChunk(src).then(
      () => {
        if (this.src === src) this.pump();
      },
      (e) => {
        if (this.src === src) this.fail(e);
      },
    );
  }

  // ---- drawing ----

  /** Shows every queued record up to `t`. */
  private applyUpTo(src: Source, t: number): void {
    while (src.head < src.queue.length) {
      const rec = src.queue[src.head] as Rec;
      if (rec.t > t) break;
      src.head++;
      src.queuedBytes -= rec.payload.length;
      this.apply(rec);
    }
    if (src.head > 1024) {
      src.queue = src.queue.slice(src.head);
      src.head = 0;
    }
  }

  private apply(rec: Rec): void {
    if (rec.type !== RecordType.Frame && rec.type !== RecordType.Keyframe && rec.type !== RecordType.Stream) return;
    let env;
    try {
      env = pb.Envelope.decode(rec.payload);
    } catch (e) {
      console.warn(`recording: record at ${rec.offset} does not decode`, e);
      return;
    }
    if (env.videoFrame) this.drawFrame(env.videoFrame);
    else if (env.cursorShape) {
      const c = env.cursorShape;
      const w = c.width ?? 0;
      const hgt = c.height ?? 0;
      // Same limits as the live viewer's cursor.
      if (!w || !hgt || w > 128 || hgt > 128 || !c.rgba || c.rgba.length < w * hgt * 4) return;
      const image = new ImageData(new Uint8ClampedArray(c.rgba.slice(0, w * hgt * 4)), w, hgt);
      this.cursorImage = { image, width: w, height: hgt, hotX: c.hotX ?? 0, hotY: c.hotY ?? 0 };
      this.shapes.add(rec.t, rec.offset, this.cursorImage);
      this.drawCursor();
    } else if (env.cursorPosition) {
      const p = env.cursorPosition;
      this.cursorPos = { x: p.x ?? 0, y: p.y ?? 0, visible: p.visible ?? false };
      this.positions.add(rec.t, rec.offset, this.cursorPos);
      this.drawCursor();
    }
  }

  private drawFrame(f: VideoFrameMsg): void {
    if (f.codec === pb.Codec.CODEC_H264) {
      if (!this.h264ok) {
        if (!this.h264Warned) {
          this.h264Warned = true;
          this.fail(new Error('This recording is H.264 video, which this browser cannot decode. Open it in a current Chrome, Edge or Firefox.'));
        }
        return;
      }
      try {
        this.h264.decode(f);
      } catch (e) {
        console.warn('recording: H.264 frame failed', e);
      }
      return;
    }
    try {
      drawRawZstd(this.opts.canvas, this.ctx, f);
      this.drawn();
    } catch (e) {
      console.warn('recording: lossless frame failed', e);
    }
  }

  private drawn(): void {
    this.framesDrawn++;
    this.framesSinceSeek++;
    this.opts.canvas.dataset.frames = String(this.framesDrawn);
    // The cursor's place is in frame pixels: the first frame (or a new size) moves it.
    this.drawCursor();
  }

  private clearPicture(): void {
    const c = this.opts.canvas;
    this.ctx.fillStyle = '#000';
    this.ctx.fillRect(0, 0, c.width, c.height);
  }

  /** Draws the cursor over the picture, as the live viewer's canvas cursor looks. */
  private drawCursor(): void {
    const el = this.opts.cursor;
    const canvas = this.opts.canvas;
    const pos = this.cursorPos;
    if (!pos || !pos.visible || !canvas.width || !canvas.height) {
      el.hidden = true;
      return;
    }
    const shape = this.cursorImage ?? DEFAULT_CURSOR;
    if (this.cursorDrawn !== shape) {
      this.cursorDrawn = shape;
      paintCursor(el, shape);
    }
    el.style.left = `${((pos.x - shape.hotX) / canvas.width) * 100}%`;
    el.style.top = `${((pos.y - shape.hotY) / canvas.height) * 100}%`;
    el.style.width = `${(shape.width / canvas.width) * 100}%`;
    el.style.height = `${(shape.height / canvas.height) * 100}%`;
    el.dataset.x = String(pos.x);
    el.dataset.y = String(pos.y);
    el.hidden = false;
  }
}

/** The last keyframe at or before `t` (keyframes are in file order, so in time order). */
export function lastKeyframe(keyframes: Keyframe[], t: number): Keyframe | null {
  let lo = 0;
  let hi = keyframes.length - 1;
  let found: Keyframe | null = null;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const k = keyframes[mid] as Keyframe;
    if (k.t <= t) {
      found = k;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

/** The cursor's picture, or a plain arrow while the shape is not known. */
function paintCursor(el: HTMLCanvasElement, shape: CursorImage): void {
  el.width = shape.width;
  el.height = shape.height;
  const g = el.getContext('2d');
  if (!g) return;
  if (shape.image) {
    g.putImageData(shape.image, 0, 0);
    return;
  }
  g.clearRect(0, 0, el.width, el.height);
  g.beginPath();
  g.moveTo(0.5, 0.5);
  g.lineTo(0.5, 16.5);
  g.lineTo(4.5, 12.5);
  g.lineTo(7.5, 18.5);
  g.lineTo(9.5, 17.5);
  g.lineTo(6.5, 11.5);
  g.lineTo(11.5, 11.5);
  g.closePath();
  g.fillStyle = '#fff';
  g.fill();
  g.strokeStyle = '#000';
  g.stroke();
}
