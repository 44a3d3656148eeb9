// Keystroke → picture latency in the browser viewer (issue 16 item 2), with a trace per
// stage. A real server (embedded SQLite), the real agent (managed) on a 1920×1080 Xvfb,
// the `key_echo` X client (crates/agent/examples/key_echo.rs: repaints a square on every
// KeyPress and logs when), and Debian's Chromium through playwright-core.
//
// For each press: the page's keydown time (a capture listener that runs before the
// viewer's own) to the moment the probe square's pixel changes on the viewer's canvas
// (CanvasRenderingContext2D.putImageData / drawImage wrapped: the pixel is read right after
// each draw into the screen canvas). That is "changed pixels on the viewer's canvas"; the
// compositor's next vsync (up to one display frame) comes after it and is not included.
// Stages, all on this machine's Unix clock: keydown → KeyPress in key_echo (viewer, relay,
// agent, XTest) → key_echo's repaint done (XSync) → the agent learned of the change
// (damage, when the agent reports it) → capture started → frame encoded and queued →
// WebSocket message in the page → drawn on the canvas (from the viewer's frame trace,
// src/viewer/trace.ts).
//
//   cargo build --release -p guruconnect-server -p guruconnect-agent --example key_echo
//   (cd dashboard && npm run build)
//   cd dashboard && node bench/keystroke.mjs [--presses 60] [--codec lossless|h264|both]
//   GURUCONNECT_CAPTURE_CLOCK=1 node bench/keystroke.mjs   # the agent's old, fixed-clock pacing
//
// Binaries: GURUCONNECT_SERVER_BIN, GURUCONNECT_AGENT_BIN, GURUCONNECT_KEY_ECHO_BIN
// (defaults: ../target/release/…); CHROMIUM_PATH (default /usr/bin/chromium).
// Needs Xvfb, xdotool, xdpyinfo. Prints a markdown table; --json FILE writes every sample.

import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    presses: { type: 'string', default: '60' },
    warmup: { type: 'string', default: '5' },
    codec: { type: 'string', default: 'both' },
    json: { type: 'string' },
  },
});
const PRESSES = Number(opts.presses);
const WARMUP = Number(opts.warmup);
const CODECS = opts.codec === 'both' ? ['lossless', 'h264'] : [opts.codec];
if (!CODECS.every((c) => c === 'lossless' || c === 'h264')) throw new Error('--codec: lossless, h264 or both');

const DASHBOARD = resolve(import.meta.dirname, '..');
const bin = (env, name) => resolve(DASHBOARD, process.env[env] ?? `../target/release/${name}`);
process.env.GURUCONNECT_SERVER_BIN = bin('GURUCONNECT_SERVER_BIN', 'guruconnect-server');
process.env.GURUCONNECT_AGENT_BIN = bin('GURUCONNECT_AGENT_BIN', 'guruconnect-agent');
const KEY_ECHO = bin('GURUCONNECT_KEY_ECHO_BIN', 'examples/key_echo');
for (const b of [process.env.GURUCONNECT_SERVER_BIN, process.env.GURUCONNECT_AGENT_BIN, KEY_ECHO]) {
  if (!existsSync(b)) throw new Error(`${b} is missing: cargo build --release -p guruconnect-server -p guruconnect-agent --example key_echo`);
}
// After the binaries are chosen: the harness reads them when imported.
const { ADMIN_PASSWORD, apiCall, launch, login, openPage, startServer, uiLogin } = await import('../tests/lib/harness.mjs');
const { sleep, startManagedAgent, startXvfb, waitFor } = await import('../tests/lib/x11-agent.mjs');

/** The probe square key_echo repaints (screen pixels). */
const SQUARE = { x: 100, y: 100, size: 48 };
const PROBE = { x: SQUARE.x + SQUARE.size / 2, y: SQUARE.y + SQUARE.size / 2 };

/** Runs in the page before its scripts: the frame trace, the keydown clock, the probe. */
function instrument(probe) {
  const now = () => performance.timeOrigin + performance.now();
  window.__gcFrameTrace = [];
  window.__gcKeys = [];
  window.__gcChanges = [];
  window.addEventListener('keydown', () => window.__gcKeys.push(now()), { capture: true });
  let last = -1;
  const check = (ctx) => {
    if (!ctx.canvas.classList?.contains('screen')) return;
    if (probe.x >= ctx.canvas.width || probe.y >= ctx.canvas.height) return;
    const t = now();
    const [r, g, b] = ctx.getImageData(probe.x, probe.y, 1, 1).data;
    const lum = (r + g + b) / 3;
    // White or black (the square's two colours); the background is grey 0x20.
    const level = lum > 200 ? 1 : lum < 8 ? 0 : -1;
    if (level >= 0 && level !== last) {
      last = level;
      window.__gcChanges.push({ ms: t, level });
    }
  };
  for (const name of ['putImageData', 'drawImage']) {
    const original = CanvasRenderingContext2D.prototype[name];
    CanvasRenderingContext2D.prototype[name] = function (...args) {
      const out = original.apply(this, args);
      check(this);
      return out;
    };
  }
}

const quantile = (xs, q) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
};
const fmt = (v) => (Number.isFinite(v) ? v.toFixed(1) : '–');

async function startKeyEcho(xs) {
  const proc = spawn(KEY_ECHO, ['--square', `${SQUARE.x},${SQUARE.y},${SQUARE.size}`], { env: xs.env });
  const lines = [];
  let buf = '';
  let err = '';
  proc.stdout.on('data', (d) => {
    buf += d;
    const parts = buf.split('\n');
    buf = parts.pop();
    lines.push(...parts);
  });
  proc.stderr.on('data', (d) => (err += d));
  await waitFor(() => lines.some((l) => l.startsWith('ready')), () => `key_echo ready (${err})`);
  return {
    proc,
    /** KeyPress received / repaint done (ms, Unix clock), one per press, in order. */
    presses: () =>
      lines
        .filter((l) => l.startsWith('key '))
        .map((l) => {
          const [, , , received, drawn] = l.split(' ');
          return { receivedMs: Number(received) / 1000, drawnMs: Number(drawn) / 1000 };
        }),
  };
}

async function measure(browser, server, sessionId, echo, codec) {
  const { page, context } = await openPage(browser);
  await page.addInitScript(instrument, PROBE);
  await page.addInitScript((lossless) => {
    if (lossless) localStorage.setItem('gc.viewer.lossless', '1');
    else localStorage.removeItem('gc.viewer.lossless');
  }, codec === 'lossless');
  await uiLogin(page, server.url);
  await page.goto(`${server.url}/#/view/${sessionId}`);
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 30_000 });
  await page.waitForFunction(() => document.querySelector('canvas.screen')?.width === 1920, null, { timeout: 30_000 });
  await page.focus('canvas.screen');
  await sleep(1500);
  const echoBefore = echo.presses().length;
  const keysBefore = await page.evaluate(() => window.__gcKeys.length);
  const samples = [];
  for (let i = 0; i < WARMUP + PRESSES; i++) {
    const changesBefore = await page.evaluate(() => window.__gcChanges.length);
    await page.keyboard.press('a');
    const ok = await page
      .waitForFunction((n) => window.__gcChanges.length > n, changesBefore, { timeout: 3000, polling: 5 })
      .then(() => true)
      .catch(() => false);
    if (!ok) throw new Error(`press ${i}: the canvas never changed (codec ${codec})`);
    // Let the stream settle; a human types 5–8 keys a second.
    await sleep(120 + Math.random() * 130);
    if (i < WARMUP) continue;
    samples.push({ index: i, changesBefore });
  }
  const page_ = await page.evaluate(() => ({ keys: window.__gcKeys, changes: window.__gcChanges, frames: window.__gcFrameTrace }));
  const echoes = echo.presses().slice(echoBefore);
  const keys = page_.keys.slice(keysBefore);
  if (echoes.length !== WARMUP + PRESSES || keys.length !== WARMUP + PRESSES) {
    throw new Error(`presses: ${WARMUP + PRESSES} sent, ${keys.length} keydowns, ${echoes.length} KeyPress events in key_echo`);
  }
  const rows = samples.map(({ index, changesBefore }) => {
    const key = keys[index];
    const echoed = echoes[index];
    const change = page_.changes[changesBefore];
    // The frame whose drawing changed the probe: drawn at the change (same call).
    const frame = page_.frames.filter((f) => f.drawnMs !== null && f.drawnMs >= change.ms - 0.001).sort((a, b) => a.drawnMs - b.drawnMs)[0];
    return {
      total: change.ms - key,
      input: echoed.receivedMs - key,
      repaint: echoed.drawnMs - echoed.receivedMs,
      toChanged: frame?.changedMs ? frame.changedMs - echoed.drawnMs : NaN,
      toCapture: frame ? frame.captureMs - echoed.drawnMs : NaN,
      encode: frame?.encodedMs ? frame.encodedMs - frame.captureMs : NaN,
      toPage: frame ? frame.receivedMs - (frame.encodedMs || frame.captureMs) : NaN,
      draw: frame ? frame.drawnMs - frame.receivedMs : NaN,
      drawnToCanvas: change.ms - echoed.drawnMs,
      bytes: frame?.bytes ?? NaN,
    };
  });
  await context.close();
  return rows;
}

const STAGES = [
  ['total', 'keydown → probe changed on the canvas'],
  ['input', 'keydown → KeyPress in the X client (viewer, relay, agent, XTest)'],
  ['repaint', 'X client repaint (until XSync returns)'],
  ['drawnToCanvas', 'repainted in X → changed on the canvas (the "drawn → decoded" of the browser)'],
  ['toChanged', 'repainted → agent saw the damage'],
  ['toCapture', 'repainted → capture started'],
  ['encode', 'capture + encode (agent)'],
  ['toPage', 'encoded (or captured) → message in the page (relay, WebSocket)'],
  ['draw', 'message → drawn on the canvas (decode + draw)'],
];

const server = await startServer();
const browser = await launch();
const xs = await startXvfb({ base: 700, size: '1920x1080' });
let agent;
let echo;
try {
  const admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  echo = await startKeyEcho(xs);
  agent = await startManagedAgent(xs, server.url, admin);
  const machine = await waitFor(async () => {
    const r = await apiCall(server.url, 'GET', `/api/machines/${agent.agentId}`, admin);
    return r.status === 200 && r.body.online && r.body.session_id ? r.body : null;
  }, () => `the machine online (agent log: ${agent.log().slice(-2000)})`);
  const results = {};
  for (const codec of CODECS) results[codec] = await measure(browser, server, machine.session_id, echo, codec);

  const cpu = cpus()[0]?.model ?? '?';
  const pacing = process.env.GURUCONNECT_CAPTURE_CLOCK === '1' ? 'frame clock (GURUCONNECT_CAPTURE_CLOCK=1)' : 'on change';
  console.log(`\n${new Date().toISOString()} · ${cpus().length} CPUs (${cpu}) · load ${loadavg().map((l) => l.toFixed(2)).join(' ')} · capture ${pacing} · ${PRESSES} presses per codec after ${WARMUP} warm-up\n`);
  console.log(`| Stage (ms) | ${CODECS.map((c) => `${c} p50 / p95 / p99 / max`).join(' | ')} |`);
  console.log(`| --- | ${CODECS.map(() => '---').join(' | ')} |`);
  for (const [key, label] of STAGES) {
    const cells = CODECS.map((c) => {
      const xs = results[c].map((r) => r[key]).filter(Number.isFinite);
      return xs.length ? `${fmt(quantile(xs, 0.5))} / ${fmt(quantile(xs, 0.95))} / ${fmt(quantile(xs, 0.99))} / ${fmt(Math.max(...xs))}` : '–';
    });
    console.log(`| ${label} | ${cells.join(' | ')} |`);
  }
  const bytes = CODECS.map((c) => `${c} ${fmt(quantile(results[c].map((r) => r.bytes).filter(Number.isFinite), 0.5))} B`);
  console.log(`\nmedian message size of the frame that showed the press: ${bytes.join(', ')}`);
  if (opts.json) writeFileSync(opts.json, JSON.stringify(results, null, 1));
} finally {
  agent?.proc.kill('SIGTERM');
  echo?.proc.kill('SIGTERM');
  xs.stop();
  await browser.close();
  await server.stop();
}
