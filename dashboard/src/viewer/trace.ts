// Per-frame timing for latency benchmarks (dashboard/bench/keystroke.mjs). Off unless the
// page defines `window.__gcFrameTrace` as an array before the viewer starts; then every
// video frame appends one entry. Times are milliseconds on the Unix clock (the agent's
// microsecond stamps divided by 1000), so the stages of one frame can be subtracted.

import type { VideoFrameMsg } from './protocol';

/** One frame's journey, agent to canvas. */
export interface FrameTrace {
  sequence: number;
  codec: number;
  bytes: number;
  /** The agent learned the screen changed (X damage); 0 when it captured on its clock. */
  changedMs: number;
  /** The agent started capturing. */
  captureMs: number;
  /** The agent finished encoding and queued the frame to the relay. */
  encodedMs: number;
  /** The WebSocket message arrived in this page. */
  receivedMs: number;
  /** The picture was drawn on the canvas (null until then; stays null when dropped). */
  drawnMs: number | null;
}

/** The Unix clock in milliseconds, with the page's sub-millisecond resolution. */
export const epochMs = (): number => performance.timeOrigin + performance.now();

/** The trace's array when tracing is on. */
export function traceSink(): FrameTrace[] | null {
  const sink = (globalThis as { __gcFrameTrace?: unknown }).__gcFrameTrace;
  return Array.isArray(sink) ? (sink as FrameTrace[]) : null;
}

/** Starts a frame's entry (null when tracing is off). */
export function traceFrame(sink: FrameTrace[] | null, f: VideoFrameMsg, bytes: number, receivedMs: number): FrameTrace | null {
  if (!sink) return null;
  const ms = (us: number | null | undefined) => Number(us ?? 0) / 1000;
  const entry: FrameTrace = {
    sequence: Number(f.sequence ?? 0),
    codec: f.codec ?? 0,
    bytes,
    changedMs: ms(f.changedTimestampUs),
    captureMs: ms(f.captureTimestampUs),
    encodedMs: ms(f.encodedTimestampUs),
    receivedMs,
    drawnMs: null,
  };
  sink.push(entry);
  return entry;
}
