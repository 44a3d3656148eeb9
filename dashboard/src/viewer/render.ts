// Frame rendering: lossless BGRA tiles (zstd) with fzstd, H.264 with WebCodecs.

import { decompress } from 'fzstd';
import { pb, type StreamModeMsg, type VideoFrameMsg } from './protocol';

export const H264_CODEC = 'avc1.42E01F';

/** Whether this browser decodes H.264 through WebCodecs. */
export async function h264Supported(): Promise<boolean> {
  if (typeof VideoDecoder === 'undefined' || typeof EncodedVideoChunk === 'undefined') return false;
  try {
    const r = await VideoDecoder.isConfigSupported({ codec: H264_CODEC, optimizeForLatency: true });
    return r.supported === true;
  } catch {
    return false;
  }
}

/** Ensures the canvas has the frame's size (resizing clears it). */
function fit(canvas: HTMLCanvasElement, width: number, height: number): boolean {
  if (width > 0 && height > 0 && (canvas.width !== width || canvas.height !== height)) {
    canvas.width = width;
    canvas.height = height;
    return true;
  }
  return false;
}

/**
 * Draws a CODEC_RAW_ZSTD frame: `data` is zstd of, for each rect in order, that rect's
 * rows of BGRA pixels (width*4 bytes per row).
 */
export function drawRawZstd(canvas: HTMLCanvasElement, ctx: CanvasRenderingContext2D, frame: VideoFrameMsg): void {
  const width = frame.width ?? 0;
  const height = frame.height ?? 0;
  fit(canvas, width, height);
  const data = frame.data;
  if (!data || !data.length) return;
  const raw = decompress(data);
  let rects = frame.rects ?? [];
  if (!rects.length) rects = [{ x: 0, y: 0, width, height }];
  let offset = 0;
  for (const r of rects) {
    const w = r.width ?? 0;
    const hgt = r.height ?? 0;
    const n = w * hgt * 4;
    if (!w || !hgt) continue;
    if (offset + n > raw.length) throw new Error(`frame ${frame.sequence ?? 0}: tile data is short`);
    const img = new ImageData(w, hgt);
    const abs = raw.byteOffset + offset;
    if (abs % 4 === 0) {
      const src = new Uint32Array(raw.buffer, abs, w * hgt);
      const dst = new Uint32Array(img.data.buffer);
      // Little-endian: BGRA bytes read as 0xAARRGGBB; RGBA wants 0xAABBGGRR. Alpha is
      // forced opaque (X11 leaves it 0).
      for (let i = 0; i < src.length; i++) {
        const v = src[i] as number;
        dst[i] = 0xff000000 | ((v & 0xff) << 16) | (v & 0xff00) | ((v >>> 16) & 0xff);
      }
    } else {
      const out = img.data;
      for (let i = 0; i < n; i += 4) {
        out[i] = raw[offset + i + 2] as number;
        out[i + 1] = raw[offset + i + 1] as number;
        out[i + 2] = raw[offset + i] as number;
        out[i + 3] = 255;
      }
    }
    ctx.putImageData(img, r.x ?? 0, r.y ?? 0);
    offset += n;
  }
}

/** Codec string from the first SPS of an Annex-B access unit (`avc1.PPCCLL`). */
export function codecFromSps(au: Uint8Array): string | null {
  for (let i = 0; i + 4 < au.length; i++) {
    const start3 = au[i] === 0 && au[i + 1] === 0 && au[i + 2] === 1;
    if (!start3) continue;
    const nal = au[i + 3] as number;
    if ((nal & 0x1f) === 7 && i + 6 < au.length) {
      const hex = (b: number) => b.toString(16).padStart(2, '0').toUpperCase();
      return `avc1.${hex(au[i + 4] as number)}${hex(au[i + 5] as number)}${hex(au[i + 6] as number)}`;
    }
  }
  return null;
}

/**
 * H.264 (Annex B, one access unit per message) through WebCodecs. `maxQueue` is how many
 * chunks may wait in the decoder before the rest are dropped up to the next keyframe: few
 * for a live stream (latency), unbounded for a recording's seek (every frame up to the
 * chosen time must be decoded).
 */
export class H264Renderer {
  private decoder: VideoDecoder | null = null;
  private needKey = true;
  private timestamp = 0;
  /** Chunks given to the current decoder, and frames it drew (for `settle`). */
  private submitted = 0;
  private drawnCount = 0;
  private waiters: (() => void)[] = [];
  /** Callbacks for chunks whose drawing someone waits for, by chunk timestamp. */
  private drawnHooks = new Map<number, () => void>();

  constructor(
    private readonly canvas: HTMLCanvasElement,
    private readonly ctx: CanvasRenderingContext2D,
    private readonly onDrawn: () => void,
    private readonly onNeedKeyframe: (why: string) => void,
    public maxQueue = 8,
  ) {}

  /** Queues one access unit; `onDrawn` runs right after its picture is drawn. */
  decode(frame: VideoFrameMsg, onDrawn?: () => void): void {
    const data = frame.data;
    if (!data || !data.length) return;
    if (!this.decoder || this.decoder.state === 'closed') {
      if (!frame.keyframe) {
        this.onNeedKeyframe('decoder waiting for a keyframe');
        return;
      }
      this.open(codecFromSps(data) ?? H264_CODEC, frame);
    }
    if (this.needKey && !frame.keyframe) return;
    const decoder = this.decoder;
    if (!decoder || decoder.state !== 'configured') return;
    if (decoder.decodeQueueSize > this.maxQueue) {
      // Falling behind: drop until the next keyframe.
      this.needKey = true;
      this.onNeedKeyframe('decoder behind');
      return;
    }
    this.needKey = false;
    fit(this.canvas, frame.width ?? 0, frame.height ?? 0);
    this.timestamp += 16_666;
    this.submitted++;
    if (onDrawn) this.drawnHooks.set(this.timestamp, onDrawn);
    decoder.decode(new EncodedVideoChunk({ type: frame.keyframe ? 'key' : 'delta', timestamp: this.timestamp, data }));
  }

  private open(codec: string, frame: VideoFrameMsg): void {
    this.close();
    this.needKey = true;
    this.submitted = 0;
    this.drawnCount = 0;
    const decoder = new VideoDecoder({
      output: (vf) => {
        try {
          if (!this.canvas.width || this.canvas.width !== vf.displayWidth) fit(this.canvas, vf.displayWidth, vf.displayHeight);
          this.ctx.drawImage(vf, 0, 0, this.canvas.width, this.canvas.height);
          this.onDrawn();
          this.drawnHook(vf.timestamp)?.();
        } finally {
          vf.close();
          this.drawnCount++;
          this.wake();
        }
      },
      error: (e) => {
        console.warn('H.264 decoder error; requesting a keyframe', e.message);
        this.decoder = null;
        this.wake();
        this.onNeedKeyframe('decoder error');
      },
    });
    // No `description`: the stream is Annex B with in-band SPS/PPS.
    decoder.configure({ codec, optimizeForLatency: true, codedWidth: frame.width || undefined, codedHeight: frame.height || undefined });
    this.decoder = decoder;
  }

  /**
   * Resolves once every chunk handed to the decoder so far has been drawn, or when none was
   * for `idleMs` (a decoder may hold a frame back). Unlike `VideoDecoder.flush()`, which
   * makes the next chunk a keyframe, the stream goes on with the next delta frame.
   */
  async settle(idleMs = 1000): Promise<void> {
    while (this.decoder && this.drawnCount < this.submitted) {
      const before = this.drawnCount;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, idleMs);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      if (this.drawnCount === before) return;
    }
  }

  /** The hook of the chunk drawn at `timestamp`; hooks of earlier chunks (dropped) go. */
  private drawnHook(timestamp: number): (() => void) | undefined {
    if (!this.drawnHooks.size) return undefined;
    const hook = this.drawnHooks.get(timestamp);
    for (const t of this.drawnHooks.keys()) if (t <= timestamp) this.drawnHooks.delete(t);
    return hook;
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  close(): void {
    if (this.decoder && this.decoder.state !== 'closed') {
      try {
        this.decoder.close();
      } catch {
        // already closed
      }
    }
    this.decoder = null;
    this.drawnHooks.clear();
    this.wake();
  }
}

/** A bit rate in words (kbit/s in, "1.2 Mbit/s" out). */
function kbits(kbps: number): string {
  return kbps >= 1000 ? `${(kbps / 1000).toFixed(1)} Mbit/s` : `${kbps} kbit/s`;
}

/**
 * How the agent sends now (issue 16), from its `StreamMode`: short for the toolbar
 * ("H.264 · 12 fps · 800 kbit/s"), long for the tooltip and the statistics.
 */
export function describeMode(m: StreamModeMsg, long: boolean): string {
  const parts = [codecName(m.codec), `${m.fps ?? 0} fps`];
  if (m.bitrateKbps) parts.push(`≤ ${kbits(m.bitrateKbps)}`);
  if (!long) return parts.join(' · ');
  parts.push(m.adaptive ? 'adapts to the link' : 'fixed settings');
  if (m.bandwidthKbps) parts.push(`link ${kbits(m.bandwidthKbps)}`);
  if (m.rttMs) parts.push(`round trip ${m.rttMs} ms`);
  return `Mode: ${parts.join(' · ')}${m.reason ? ` (${m.reason})` : ''}`;
}

export function codecName(codec: number | null | undefined): string {
  switch (codec) {
    case pb.Codec.CODEC_RAW_ZSTD:
      return 'lossless';
    case pb.Codec.CODEC_H264:
      return 'H.264';
    default:
      return '—';
  }
}
