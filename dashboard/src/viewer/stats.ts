// Viewer statistics: fps, bandwidth, latency, and a small sparkline.

export class Stats {
  frames = 0;
  bytes = 0;
  rttMs: number | null = null;
  frameAgeMs: number | null = null;
  fps = 0;
  bps = 0;
  totalBytes = 0;
  totalFrames = 0;
  readonly fpsHistory: number[] = [];
  readonly bwHistory: number[] = [];
  private last = performance.now();

  frame(size: number): void {
    this.frames++;
    this.totalFrames++;
    this.bytesIn(size);
  }

  bytesIn(size: number): void {
    this.bytes += size;
    this.totalBytes += size;
  }

  /** Rolls the one-second window; call once a second. */
  roll(): void {
    const now = performance.now();
    const secs = Math.max(0.001, (now - this.last) / 1000);
    this.fps = this.frames / secs;
    this.bps = this.bytes / secs;
    this.frames = 0;
    this.bytes = 0;
    this.last = now;
    this.fpsHistory.push(this.fps);
    this.bwHistory.push(this.bps);
    if (this.fpsHistory.length > 60) this.fpsHistory.shift();
    if (this.bwHistory.length > 60) this.bwHistory.shift();
  }
}

/** Draws a sparkline of `values` into `canvas`, using the current text colour. */
export function sparkline(canvas: HTMLCanvasElement, values: number[], color: string): void {
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 160;
  const hgt = canvas.clientHeight || 36;
  if (canvas.width !== w * dpr) {
    canvas.width = w * dpr;
    canvas.height = hgt * dpr;
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  if (values.length < 2) return;
  const max = Math.max(1, ...values);
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / 59) * (w - 2) + 1;
    const y = hgt - 2 - (v / max) * (hgt - 4);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.stroke();
}
