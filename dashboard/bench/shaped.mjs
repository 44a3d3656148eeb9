// Frames per second and picture age on a shaped link, with the agent's adaptive quality on
// and off (issue 16 item 4). A real server (embedded SQLite), the real agent (managed) on a
// 1920×1080 Xvfb showing the `scroll_text` X client (crates/agent/examples/scroll_text.rs:
// a text document scrolled 4 px a frame at 30 Hz), and the headless Rust viewer
// (`guruconnect-viewer --stats`), which prints every second its frames per second, bytes per
// second and picture age (the time a frame is decoded minus the time it was captured, both
// on this machine's clock). The agent reaches the server through a link emulator in this
// script; the viewer talks to the server directly, so only the agent's uplink (frames) and
// its downlink (acknowledgements, input, control) are shaped.
//
// The link. This kernel has no sch_netem (`tc qdisc add … netem` answers "Specified qdisc
// kind is unknown"), so the link is emulated in user space: a TCP proxy on 127.0.0.1 that
// shapes each direction on its own with a rate (a packet of n bytes holds the link for
// n·8/R seconds; data is cut into packets of at most 1500 bytes), a one-way delay of half
// the round trip, and a bottleneck queue of R × --queue-ms bytes. When the queue is full
// the proxy stops reading from the sender's socket, so the sender's TCP sees the
// backpressure and its writes stall (one read can bring up to 64 KiB, so the queue can
// overshoot by that much; the JSON has each run's maxQueuedUp). What that models: serialization at the bottleneck, the
// propagation delay, a bounded standing queue, and a sender that can only push as fast as
// the link drains. What it does not: loss and reordering (none), and TCP congestion control
// on the path: the sender's TCP talks to the proxy over loopback, where nothing is lost and
// the round trip is ~0, so it is paced by the proxy's receive window, not by its congestion
// window. The kernel buffers of that loopback hop (the proxy's receive buffer, the sender's
// send buffer) sit in front of the emulated queue. On the host's loopback (64 KiB MTU,
// autotuned buffers) they hold about a megabyte, far more than a real path would, so when
// it can (root, unshare, ip; --netns auto|on|off) the script re-runs itself in a private
// network namespace where loopback has a 1500-byte MTU, receive buffers stay at 64 KiB (no
// autotuning) and, per run, send buffers are capped at 4 × (bandwidth-delay product +
// queue): the order of what Linux autotunes a sender's buffer to on such a path (it sizes
// it from 2–3 × the congestion window). What is left shows as "kernel buffers" in the
// self-check; it is standing queue a real sender without TCP_NOTSENT_LOWAT has too. The
// self-check runs first on every run (`--selfcheck` alone runs only it): 1 MB through a
// 5 Mbit/s, 50 ms link should take ≈ 1.6 s and a small message on the idle link ≈ 25 ms
// one way.
//
//   cargo build --release -p guruconnect-server -p guruconnect-agent -p guruconnect-viewer --example scroll_text
//   (cd dashboard && npm ci && npm run build)      # the server serves dashboard/dist
//   cd dashboard && node bench/shaped.mjs [--links none,5mbit/50ms,1mbit/150ms] [--adapt off,on]
//       [--codec h264|lossless|h264,lossless] [--seconds 20] [--warmup 5] [--queue-ms 100]
//       [--fps 30] [--step 4] [--netns auto|on|off] [--json FILE]
//   node bench/shaped.mjs --selfcheck
//
// Adaptation off / on: the agent runs with GURUCONNECT_ADAPT=0 / 1. Codec h264: the viewer
// advertises h264 and raw; lossless: raw only. Each run starts a fresh agent (a new
// machine) and a fresh proxy. Per run: fps and KB/s are the means of the viewer's
// per-second lines after --warmup seconds; age p50 is the median of their picture-age p50s,
// age p95 the 95th percentile of their p95s, age end the last second's p50 (a growing
// queue shows as age end ≫ age p50). NB: at the time of writing the viewer's per-second
// percentiles are over every frame since it started (crates/viewer/src/main.rs keeps all
// samples in Stats::latencies_us), so they are cumulative: they lag a growing age and
// repeat through seconds without a frame. With per-second percentiles in the viewer these
// columns become what they say. The JSON has the raw lines. "Run" is the viewer's final `total:` line: frames and picture age over the whole
// run, warm-up included (it also counts the frames after the last per-second line).
// "mode" is the last `mode: …` line the viewer printed (the agent's stream mode).
// Link up/down: what crossed the emulated link each way during the measured seconds.
//
// Binaries: GURUCONNECT_SERVER_BIN, GURUCONNECT_AGENT_BIN, GURUCONNECT_VIEWER_BIN,
// GURUCONNECT_SCROLL_TEXT_BIN (defaults: ../target/release/…). Needs Xvfb and xdpyinfo.
// Prints a markdown table; --json FILE writes every per-second line of every run.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    links: { type: 'string', default: 'none,5mbit/50ms,1mbit/150ms' },
    adapt: { type: 'string', default: 'off,on' },
    codec: { type: 'string', default: 'h264' },
    seconds: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '5' },
    'queue-ms': { type: 'string', default: '100' },
    fps: { type: 'string', default: '30' },
    step: { type: 'string', default: '4' },
    selfcheck: { type: 'boolean', default: false },
    netns: { type: 'string', default: 'auto' },
    json: { type: 'string' },
  },
});
const SECONDS = Number(opts.seconds);
const WARMUP = Number(opts.warmup);
const QUEUE_MS = Number(opts['queue-ms']);
if (!(SECONDS > WARMUP && WARMUP >= 0)) throw new Error('--seconds must be more than --warmup');
if (!(QUEUE_MS > 0)) throw new Error('--queue-ms must be positive');
const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);
const ADAPT = list(opts.adapt);
if (!ADAPT.every((a) => a === 'on' || a === 'off')) throw new Error('--adapt: off, on or off,on');
const CODECS = list(opts.codec);
if (!CODECS.every((c) => c === 'h264' || c === 'lossless')) throw new Error('--codec: h264, lossless or both (comma-separated)');

if (!['auto', 'on', 'off'].includes(opts.netns)) throw new Error('--netns: auto, on or off');

// The private network namespace (see the header): re-run this script inside one.
const IN_NETNS = process.env.GC_SHAPED_IN_NETNS === '1';
const canNetns = () => {
  if (process.getuid?.() !== 0) return false;
  return ['unshare', 'ip'].every((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0);
};
if (!IN_NETNS && opts.netns !== 'off') {
  if (canNetns()) {
    const r = spawnSync('unshare', ['-n', '--', process.execPath, ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, GC_SHAPED_IN_NETNS: '1' },
    });
    process.exit(r.status ?? 1);
  }
  if (opts.netns === 'on') throw new Error('--netns on needs root, unshare and ip');
  console.error('no private network namespace (needs root, unshare, ip): loopback has a 64 KiB MTU and autotuned buffers, which hold far more than the emulated queue');
}
const sysctl = (name, value) => writeFileSync(`/proc/sys/net/ipv4/${name}`, value);
if (IN_NETNS) {
  execFileSync('ip', ['link', 'set', 'lo', 'mtu', '1500', 'up']);
  sysctl('tcp_moderate_rcvbuf', '0');
  sysctl('tcp_rmem', '4096 65536 4194304');
}

/**
 * In the namespace: caps the send buffers (the agent's too) at about what Linux autotunes
 * them to on the real path: some 4 × the congestion window, taken as the bandwidth-delay
 * product plus the bottleneck queue. On loopback they would grow to megabytes.
 */
function senderBuffers(link) {
  if (!IN_NETNS) return;
  const max = link ? Math.round(Math.min(4 << 20, Math.max(64 << 10, 4 * (link.bitsPerSecond / 8) * ((link.rttMs + QUEUE_MS) / 1000)))) : 4 << 20;
  sysctl('tcp_wmem', `4096 16384 ${max}`);
}

/** A packet: the most the link serializes at once. */
const MTU = 1500;
const RATE_UNITS = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9 };

/** `none` → null; `5mbit/50ms` → { name, bitsPerSecond, rttMs }. */
function parseLink(spec) {
  if (spec === 'none') return null;
  const m = /^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)\/(\d+(?:\.\d+)?)ms$/i.exec(spec);
  if (!m) throw new Error(`--links: ${spec} is not none or RATE/RTT such as 5mbit/50ms`);
  return { name: spec, bitsPerSecond: Number(m[1]) * RATE_UNITS[m[2].toLowerCase()], rttMs: Number(m[3]) };
}
const LINKS = list(opts.links).map((spec) => ({ spec, link: parseLink(spec) }));

/**
 * One direction of the emulated link, `src` → `dst`: a FIFO bottleneck queue of at most
 * `queueBytes` (reading from `src` pauses while it is full), a serializer at `bitsPerSecond`,
 * then `delayMs` of propagation. Times are ideal (each packet starts when the link frees or
 * it arrives, whichever is later), so late timers delay a write by a timer tick but never
 * slow the rate down.
 */
class Direction {
  constructor(src, dst, { bitsPerSecond, delayMs, queueBytes }) {
    this.src = src;
    this.dst = dst;
    this.msPerByte = 8000 / bitsPerSecond;
    this.delayMs = delayMs;
    this.queueBytes = queueBytes;
    /** Waiting for the link: { data, arrival }. */
    this.queue = [];
    this.queued = 0;
    this.linkFreeAt = 0;
    this.txTimer = null;
    /** Serialized, propagating: { data, due }; due times only grow. */
    this.flight = [];
    this.rxTimer = null;
    this.paused = false;
    this.ended = false;
    this.stats = { read: 0, delivered: 0, maxQueued: 0, pausedMs: 0 };
    this.pausedAt = 0;
    src.on('data', (chunk) => this.push(chunk));
    src.on('end', () => {
      this.ended = true;
      this.maybeEnd();
    });
  }

  push(chunk) {
    const now = performance.now();
    this.stats.read += chunk.length;
    for (let i = 0; i < chunk.length; i += MTU) {
      const data = chunk.subarray(i, i + MTU);
      this.queue.push({ data, arrival: now });
      this.queued += data.length;
    }
    this.stats.maxQueued = Math.max(this.stats.maxQueued, this.queued);
    if (!this.paused && this.queued >= this.queueBytes) {
      this.paused = true;
      this.pausedAt = now;
      this.src.pause();
    }
    this.transmit();
  }

  transmit() {
    if (this.txTimer) return;
    const now = performance.now();
    while (this.queue.length) {
      const p = this.queue[0];
      const done = Math.max(p.arrival, this.linkFreeAt) + p.data.length * this.msPerByte;
      if (done > now + 0.05) {
        this.txTimer = setTimeout(() => {
          this.txTimer = null;
          this.transmit();
        }, done - now);
        break;
      }
      this.queue.shift();
      this.queued -= p.data.length;
      this.linkFreeAt = done;
      this.flight.push({ data: p.data, due: done + this.delayMs });
      if (this.paused && this.queued < this.queueBytes) {
        this.paused = false;
        this.stats.pausedMs += now - this.pausedAt;
        this.src.resume();
      }
    }
    this.deliver();
  }

  deliver() {
    if (this.rxTimer) return;
    const now = performance.now();
    let n = 0;
    while (n < this.flight.length && this.flight[n].due <= now + 0.05) n++;
    if (n) {
      const out = Buffer.concat(this.flight.splice(0, n).map((p) => p.data));
      this.stats.delivered += out.length;
      if (!this.dst.destroyed) this.dst.write(out);
    }
    if (this.flight.length) {
      this.rxTimer = setTimeout(() => {
        this.rxTimer = null;
        this.deliver();
      }, this.flight[0].due - now);
    } else {
      this.maybeEnd();
    }
  }

  maybeEnd() {
    if (this.ended && !this.queue.length && !this.flight.length && !this.dst.destroyed) this.dst.end();
  }

  stop() {
    clearTimeout(this.txTimer);
    clearTimeout(this.rxTimer);
  }
}

/** Counts what crosses an unshaped direction (same stats shape as Direction). */
function plainDirection(src, dst) {
  const stats = { read: 0, delivered: 0, maxQueued: 0, pausedMs: 0 };
  src.on('data', (chunk) => {
    stats.read += chunk.length;
    stats.delivered += chunk.length;
  });
  src.pipe(dst);
  return { stats, stop() {} };
}

/**
 * A TCP proxy on 127.0.0.1:<free port> to 127.0.0.1:`targetPort` through `link` (null: no
 * shaping). `totals()` sums the stats of every connection so far, per direction.
 */
function startLink(link, targetPort) {
  const sockets = new Set();
  const directions = { up: [], down: [] };
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
    const upstream = connect({ host: '127.0.0.1', port: targetPort, allowHalfOpen: true, noDelay: true });
    for (const s of [client, upstream]) sockets.add(s);
    const kill = () => {
      for (const s of [client, upstream]) {
        s.destroy();
        sockets.delete(s);
      }
      for (const d of pair) d.stop();
    };
    client.on('error', kill);
    upstream.on('error', kill);
    client.on('close', kill);
    upstream.on('close', kill);
    const shape = (src, dst) =>
      link
        ? new Direction(src, dst, {
            bitsPerSecond: link.bitsPerSecond,
            delayMs: link.rttMs / 2,
            queueBytes: Math.max(MTU, (link.bitsPerSecond / 8) * (QUEUE_MS / 1000)),
          })
        : plainDirection(src, dst);
    const pair = [shape(client, upstream), shape(upstream, client)];
    directions.up.push(pair[0]);
    directions.down.push(pair[1]);
  });
  return new Promise((res, rej) => {
    server.on('error', rej);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      res({
        port,
        url: `http://127.0.0.1:${port}`,
        totals() {
          const sum = (ds) => ({
            read: ds.reduce((a, d) => a + d.stats.read, 0),
            delivered: ds.reduce((a, d) => a + d.stats.delivered, 0),
            maxQueued: Math.max(0, ...ds.map((d) => d.stats.maxQueued)),
            pausedMs: ds.reduce((a, d) => a + d.stats.pausedMs, 0),
          });
          return { up: sum(directions.up), down: sum(directions.down) };
        },
        close() {
          for (const s of sockets) s.destroy();
          for (const d of [...directions.up, ...directions.down]) d.stop();
          return new Promise((r) => server.close(() => r()));
        },
      });
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const quantile = (xs, q) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
};
const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const fmt = (v, digits = 1) => (Number.isFinite(v) ? v.toFixed(digits) : '–');

/**
 * 1 MB through a 5 Mbit/s, 50 ms link to a local sink: the time it takes (≈ 1.6 s), the
 * one-way delay of a small message on the idle link (≈ 25 ms), and the most the loopback
 * hop's kernel buffers held in front of the emulated queue while the sender pushed.
 */
async function selfcheck() {
  const link = parseLink('5mbit/50ms');
  senderBuffers(link);
  let received = 0;
  let onData = () => {};
  const sink = createServer((s) =>
    s.on('data', (d) => {
      received += d.length;
      onData();
    }),
  );
  await new Promise((r) => sink.listen(0, '127.0.0.1', r));
  const proxy = await startLink(link, sink.address().port);
  const client = connect({ host: '127.0.0.1', port: proxy.port, noDelay: true });
  await new Promise((r, j) => client.once('connect', r).once('error', j));
  const until = (bytes) =>
    new Promise((r) => {
      onData = () => {
        if (received >= bytes) r(performance.now());
      };
    });
  const delays = [];
  for (let i = 0; i < 5; i++) {
    await sleep(150);
    const want = received + 64;
    const t0 = performance.now();
    client.write(Buffer.alloc(64));
    delays.push((await until(want)) - t0);
  }
  const TOTAL = 1_000_000;
  const CHUNK = 16_384;
  const want = received + TOTAL;
  let accepted = 0;
  let hiddenMax = 0;
  const t0 = performance.now();
  for (let sent = 0; sent < TOTAL; sent += CHUNK) {
    const n = Math.min(CHUNK, TOTAL - sent);
    client.write(Buffer.alloc(n), () => (accepted += n));
  }
  const sampler = setInterval(() => {
    hiddenMax = Math.max(hiddenMax, accepted - proxy.totals().up.read);
  }, 5);
  const secs = ((await until(want)) - t0) / 1000;
  clearInterval(sampler);
  client.destroy();
  await proxy.close();
  sink.close();
  const idle = quantile(delays, 0.5);
  const ok = Math.abs(secs - 1.625) < 0.15 && Math.abs(idle - 25) < 5;
  console.log(
    `self-check (5mbit/50ms): 1 MB in ${secs.toFixed(3)} s (${((TOTAL * 8) / secs / 1e6).toFixed(2)} Mbit/s; ideal 1.600 s + 25 ms), ` +
      `idle one-way delay ${idle.toFixed(1)} ms (ideal 25.1), loopback kernel buffers held up to ${(hiddenMax / 1024).toFixed(0)} KiB ` +
      `(${((hiddenMax * 8) / link.bitsPerSecond * 1000).toFixed(0)} ms at this rate) in front of the ${((link.bitsPerSecond / 8) * (QUEUE_MS / 1000) / 1024).toFixed(0)} KiB emulated queue${ok ? '' : ' — OFF THE MARK'}`,
  );
  return { seconds: secs, idleDelayMs: idle, delays, hiddenMaxBytes: hiddenMax, ok };
}

const check = await selfcheck();
if (opts.selfcheck) process.exit(check.ok ? 0 : 1);

const DASHBOARD = resolve(import.meta.dirname, '..');
const bin = (env, name) => resolve(DASHBOARD, process.env[env] ?? `../target/release/${name}`);
process.env.GURUCONNECT_SERVER_BIN = bin('GURUCONNECT_SERVER_BIN', 'guruconnect-server');
process.env.GURUCONNECT_AGENT_BIN = bin('GURUCONNECT_AGENT_BIN', 'guruconnect-agent');
const VIEWER = bin('GURUCONNECT_VIEWER_BIN', 'guruconnect-viewer');
const SCROLL_TEXT = bin('GURUCONNECT_SCROLL_TEXT_BIN', 'examples/scroll_text');
for (const b of [process.env.GURUCONNECT_SERVER_BIN, process.env.GURUCONNECT_AGENT_BIN, VIEWER, SCROLL_TEXT]) {
  if (!existsSync(b)) {
    throw new Error(`${b} is missing: cargo build --release -p guruconnect-server -p guruconnect-agent -p guruconnect-viewer --example scroll_text`);
  }
}
// After the binaries are chosen: the harness reads them when imported.
const { ADMIN_PASSWORD, apiCall, login, startServer } = await import('../tests/lib/harness.mjs');
const { startManagedAgent, startXvfb, waitFor } = await import('../tests/lib/x11-agent.mjs');

/** Collects a child's stdout lines; `err()` is its stderr. */
function lines(proc) {
  const out = [];
  let buf = '';
  let err = '';
  proc.stdout.on('data', (d) => {
    buf += d;
    const parts = buf.split('\n');
    buf = parts.pop();
    out.push(...parts);
  });
  proc.stderr.on('data', (d) => (err += d));
  return { out, err: () => err };
}

async function startScrollText(xs) {
  const proc = spawn(SCROLL_TEXT, ['--fps', opts.fps, '--step', opts.step], { env: xs.env });
  const io = lines(proc);
  await waitFor(() => {
    if (proc.exitCode !== null) throw new Error(`scroll_text exited (${proc.exitCode}): ${io.err()}`);
    return io.out.some((l) => l.startsWith('ready'));
  }, () => `scroll_text ready (${io.err()})`);
  return proc;
}

async function stopProcess(proc, ms = 5000) {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  if (await Promise.race([exited.then(() => true), sleep(ms).then(() => false)])) return;
  proc.kill('SIGKILL');
  await exited;
}

const TOTAL_LINE = /^total: frames=(\d+) .*latency_p50=([\d.]+) ms latency_p95=([\d.]+) ms/;
const STAT_LINE = /^fps=([\d.]+) bandwidth=([\d.]+) KB\/s latency_p50=([\d.]+) ms latency_p95=([\d.]+) ms frames=(\d+)/;

/** Runs the viewer for --seconds; resolves with its parsed output. */
async function runViewer(server, sessionId, codec) {
  const args = [
    '--server', server.url, '--session', sessionId, '--user', 'admin', '--password', ADMIN_PASSWORD,
    '--codecs', codec === 'lossless' ? 'raw' : 'h264,raw', '--stats', '--duration', String(SECONDS),
  ];
  const proc = spawn(VIEWER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const io = lines(proc);
  const code = await new Promise((r) => {
    const timer = setTimeout(() => proc.kill('SIGKILL'), (SECONDS + 30) * 1000);
    proc.once('exit', (c, s) => {
      clearTimeout(timer);
      r(c ?? s);
    });
  });
  const stats = io.out
    .filter((l) => STAT_LINE.test(l))
    .map((l, i) => {
      const [, fps, kbps, p50, p95, frames] = STAT_LINE.exec(l).map(Number);
      return { second: i, fps, kbps, ageP50: p50, ageP95: p95, frames };
    });
  return {
    code,
    stats,
    modes: io.out.filter((l) => /^mode:/.test(l.trim())).map((l) => l.trim()),
    total: io.out.find((l) => l.startsWith('total:')) ?? null,
    other: io.out.filter((l) => !STAT_LINE.test(l) && !l.startsWith('total:')),
    stderr: io.err(),
  };
}

async function oneRun(server, admin, xs, spec, link, adapt, codec) {
  senderBuffers(link);
  const proxy = await startLink(link, server.port);
  const env = { ...xs.env, GURUCONNECT_ADAPT: adapt === 'on' ? '1' : '0' };
  const loadBefore = loadavg();
  let agent;
  try {
    agent = await startManagedAgent({ ...xs, env }, proxy.url, admin);
    const machine = await waitFor(async () => {
      const r = await apiCall(server.url, 'GET', `/api/machines/${agent.agentId}`, admin);
      return r.status === 200 && r.body.online && r.body.session_id ? r.body : null;
    }, () => `the machine online (agent log: ${agent.log().slice(-2000)})`, 60_000);
    // The link's byte counts over the measured seconds only.
    let atWarmup = null;
    const warmupTimer = setTimeout(() => (atWarmup = { at: performance.now(), ...proxy.totals() }), WARMUP * 1000 + 500);
    const viewer = await runViewer(server, machine.session_id, codec);
    clearTimeout(warmupTimer);
    const atEnd = { at: performance.now(), ...proxy.totals() };
    // Line 0 is printed as the viewer starts; line i covers its second i.
    const measured = viewer.stats.filter((s, i) => i > WARMUP);
    const span = atWarmup ? Math.max(1e-6, (atEnd.at - atWarmup.at) / 1000) : NaN;
    const rate = (dir) => (atWarmup ? (atEnd[dir].delivered - atWarmup[dir].delivered) / 1024 / span : NaN);
    const total = TOTAL_LINE.exec(viewer.total ?? '');
    const row = {
      link: spec,
      adapt,
      codec,
      fps: mean(measured.map((s) => s.fps)),
      kbps: mean(measured.map((s) => s.kbps)),
      ageP50: quantile(measured.map((s) => s.ageP50), 0.5),
      ageP95: quantile(measured.map((s) => s.ageP95), 0.95),
      ageEnd: measured.at(-1)?.ageP50 ?? NaN,
      runFrames: total ? Number(total[1]) : NaN,
      runAgeP50: total ? Number(total[2]) : NaN,
      runAgeP95: total ? Number(total[3]) : NaN,
      linkUpKBps: rate('up'),
      linkDownKBps: rate('down'),
      maxQueuedUp: atEnd.up.maxQueued,
      pausedUpMs: atEnd.up.pausedMs,
      mode: viewer.modes.at(-1) ?? '',
      loadBefore,
      loadAfter: loadavg(),
      viewerExit: viewer.code,
      viewer,
      agentLogTail: agent.log().slice(-3000),
    };
    if (viewer.code !== 0) console.error(`viewer exited ${viewer.code} (${spec}, adapt ${adapt}, ${codec}): ${viewer.stderr.slice(-1000)}`);
    return row;
  } finally {
    if (agent) await stopProcess(agent.proc);
    await proxy.close();
  }
}

const server = await startServer();
const xs = await startXvfb({ base: 800, size: '1920x1080' });
let scroll;
const rows = [];
try {
  const admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  scroll = await startScrollText(xs);
  for (const { spec, link } of LINKS) {
    for (const adapt of ADAPT) {
      for (const codec of CODECS) {
        process.stderr.write(`run: link ${spec}, adapt ${adapt}, ${codec} … `);
        const row = await oneRun(server, admin, xs, spec, link, adapt, codec);
        process.stderr.write(`fps ${fmt(row.fps)}, age p50 ${fmt(row.ageP50, 0)} ms, end ${fmt(row.ageEnd, 0)} ms\n`);
        rows.push(row);
      }
    }
  }

  const cpu = cpus()[0]?.model ?? '?';
  const load = (l) => l.map((x) => x.toFixed(2)).join(' ');
  console.log(
    `\n${new Date().toISOString()} · ${cpus().length} CPUs (${cpu}) · scroll_text ${opts.fps} Hz, ${opts.step} px a frame · ` +
      `${SECONDS} s a run, first ${WARMUP} s skipped · bottleneck queue ${QUEUE_MS} ms · ` +
      `${IN_NETNS ? 'private network namespace (lo MTU 1500, capped buffers)' : "host loopback (64 KiB MTU, autotuned buffers)"} · ` +
      `self-check: 1 MB in ${check.seconds.toFixed(2)} s, idle delay ${check.idleDelayMs.toFixed(1)} ms\n`,
  );
  console.log('| Link | Adapt | Codec | fps | KB/s | Age p50 (ms) | Age p95 (ms) | Age end (ms) | Run: frames, age p50 / p95 (ms) | Link up / down (KB/s) | Last mode | Load 1 min before → after |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    const failed = r.viewerExit === 0 ? '' : ` (viewer exit ${r.viewerExit})`;
    console.log(
      `| ${r.link} | ${r.adapt} | ${r.codec}${failed} | ${fmt(r.fps)} | ${fmt(r.kbps)} | ${fmt(r.ageP50, 0)} | ${fmt(r.ageP95, 0)} | ${fmt(r.ageEnd, 0)} | ${r.runFrames}, ${fmt(r.runAgeP50, 0)} / ${fmt(r.runAgeP95, 0)} | ` +
        `${fmt(r.linkUpKBps)} / ${fmt(r.linkDownKBps)} | ${r.mode || '–'} | ${r.loadBefore[0].toFixed(2)} → ${r.loadAfter[0].toFixed(2)} |`,
    );
  }
  console.log(`\nload average at the end: ${load(loadavg())}`);
  if (opts.json) {
    const machine = { cpus: cpus().length, cpu, netns: IN_NETNS, queueMs: QUEUE_MS, seconds: SECONDS, warmup: WARMUP, fps: Number(opts.fps), step: Number(opts.step) };
    writeFileSync(opts.json, JSON.stringify({ machine, selfcheck: check, runs: rows }, null, 1));
  }
} finally {
  if (scroll) await stopProcess(scroll);
  xs.stop();
  await server.stop();
}
