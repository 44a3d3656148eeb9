// Session recordings (docs/recordings.md) in the console, end to end with the real server
// and a managed agent under Xvfb: an administrator sets the policy to "all" in the policy
// form (a bad one is refused with the server's message), watches the machine in the viewer
// while the X screen turns from blue to orange (a chat message marks the moment, another
// the last seconds), ends the session, and finds the recording in Recordings with the
// file's SHA-256. The player in Chromium shows the pictures the viewer saw (every one the
// viewer showed is collected), at their times: playing, at 8x to the end,
// seeking to the middle, to the chat and past the change; the cursor is drawn where the X
// pointer was. A copy of the file cut inside a record still plays to its end. A technician
// (no `recordings` permission) has no Recordings entry and gets 403 from the API.
// The parser (src/viewer/recording.ts, bundled for node by Vite) is unit-tested against
// whole, truncated and damaged files without a browser.
// The browser part is skipped when target/debug/guruconnect-agent, Xvfb, xdotool,
// xdpyinfo or xsetroot is missing.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { build } from 'vite';
import { ADMIN_PASSWORD, DASHBOARD, HTTP_4XX, apiCall, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { skipUnless, sleep, startManagedAgent, startXvfb, waitFor } from './lib/x11-agent.mjs';
import { pb, zstdStored } from './lib/fake-agent.mjs';

const skip = skipUnless(['Xvfb', 'xdotool', 'xdpyinfo', 'xsetroot']);

const BLUE = [0x33, 0x66, 0xcc];
const ORANGE = [0xdd, 0x88, 0x22];
/** Places the agent's own windows (indicator top right, chat bottom right) never cover. */
const SAMPLES = [
  [5, 5],
  [40, 720],
  [500, 10],
];
/** H.264 moves colours a little. */
const TOLERANCE = 12;

const hex = (c) => `#${c.map((v) => v.toString(16).padStart(2, '0')).join('')}`;
const near = (px, want, tol = TOLERANCE) => want.every((v, i) => Math.abs(px[i] - v) <= tol);

/** The module under test, bundled with its imports (protobufjs, fzstd) for node. */
let rec;
let bundleDir;
let server;
let browser;
let admin;
let xs;
let agent;
let sessionId;
/** What the live viewer showed: every picture (the samples) in blue, then in orange. */
const seen = {};

before(async () => {
  bundleDir = mkdtempSync(join(tmpdir(), 'gc-recording-module-'));
  await build({
    configFile: false,
    root: DASHBOARD,
    logLevel: 'silent',
    build: {
      outDir: bundleDir,
      emptyOutDir: true,
      minify: false,
      lib: { entry: join(DASHBOARD, 'src/viewer/recording.ts'), formats: ['es'], fileName: () => 'recording.mjs' },
    },
  });
  const file = readdirSync(bundleDir).find((f) => f.endsWith('.mjs'));
  rec = await import(pathToFileURL(join(bundleDir, file)).href);
});

/** Starts the server and chromium for the first test that needs them. */
async function up() {
  if (server) return;
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
}

/** And the X display with the first colour, for the tests with the real agent. */
async function upWithX() {
  await up();
  if (xs) return;
  xs = await startXvfb({ base: 600 });
  xs.x('xsetroot', ['-solid', hex(BLUE)]);
}

after(async () => {
  agent?.proc.kill('SIGTERM');
  xs?.stop();
  await browser?.close();
  await server?.stop();
  if (agent?.dir) rmSync(agent.dir, { recursive: true, force: true });
  if (bundleDir) rmSync(bundleDir, { recursive: true, force: true });
});

// ---- the parser, without a browser ----

const u32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
const envelope = (props) => Buffer.from(pb.Envelope.encode(props).finish());
const record = (type, t, payload) => Buffer.concat([Buffer.from([type]), u32(t), u32(payload.length), payload]);

/** A small recording: a 4x2 keyframe, a cursor, input, chat, an event, a delta frame. */
function sampleFile() {
  const header = { session_id: 's-1', agent_id: 'a-1', hostname: 'unit-pc', kind: 'managed', started_at: 1700000000000 };
  const json = Buffer.from(JSON.stringify(header));
  const frame = (keyframe, w, hgt) =>
    envelope({ videoFrame: { codec: pb.Codec.CODEC_RAW_ZSTD, width: 4, height: 2, rects: [{ x: 0, y: 0, width: w, height: hgt }], data: zstdStored(Buffer.alloc(w * hgt * 4, 0x7f)), keyframe } });
  const records = [
    [2, 0, frame(true, 4, 2)],
    [3, 10, envelope({ cursorPosition: { x: 3, y: 1, visible: true } })],
    [4, 500, envelope({ mouseEvent: { action: pb.MouseAction.MOUSE_ACTION_MOVE, x: 1, y: 1 } })],
    [5, 1200, envelope({ chat: { from: 'alice', text: 'hello there', sentAtMs: 1 } })],
    [6, 1300, Buffer.from('{"type":"viewer_left","user":"alice"}')],
    [1, 1400, frame(false, 2, 1)],
    [2, 5000, frame(true, 4, 2)],
  ];
  const head = Buffer.concat([Buffer.from('GCREC1\n'), u32(json.length), json]);
  const parts = [head];
  const expected = [];
  let at = head.length;
  for (const [type, t, payload] of records) {
    const r = record(type, t, payload);
    expected.push({ type, t, offset: at, end: at + r.length });
    parts.push(r);
    at += r.length;
  }
  return { bytes: new Uint8Array(Buffer.concat(parts)), header, headerSize: head.length, expected };
}

test('the parser reads whole records and stops cleanly at one cut short', () => {
  const { bytes, header, headerSize, expected } = sampleFile();
  const whole = rec.parseRecording(bytes);
  assert.deepEqual(whole.header, header);
  assert.equal(whole.truncated, false);
  assert.deepEqual(whole.records.map((r) => [r.type, r.t, r.offset]), expected.map((e) => [e.type, e.t, e.offset]));
  const chat = pb.Envelope.decode(whole.records[3].payload).chat;
  assert.equal(chat.text, 'hello there');
  assert.equal(new TextDecoder().decode(whole.records[4].payload), '{"type":"viewer_left","user":"alice"}');

  // Cut at every length: exactly the records that end by then, and no error.
  for (let len = headerSize; len <= bytes.length; len++) {
    const part = rec.parseRecording(bytes.subarray(0, len));
    const want = expected.filter((e) => e.end <= len);
    assert.deepEqual(part.records.map((r) => r.offset), want.map((e) => e.offset), `cut at ${len}`);
    assert.equal(part.truncated, !expected.some((e) => e.end === len) && len !== headerSize, `cut at ${len}`);
  }
  // Inside the header: no header yet; not a recording at all: an error.
  assert.equal(rec.parseHeader(bytes.subarray(0, headerSize - 1)), null);
  assert.throws(() => rec.parseRecording(bytes.subarray(0, 5)), /incomplete/);
  assert.throws(() => rec.parseRecording(new TextEncoder().encode('GCREC2\nxxxx')), { name: 'RecordingFormatError' });
});

test('the incremental reader gives the same records in any chunking, from the start or a keyframe', () => {
  const { bytes, header, expected } = sampleFile();
  const feed = (reader, data, size) => {
    const out = [];
    for (let at = 0; at < data.length; at += size) out.push(...reader.push(data.subarray(at, at + size)));
    return out;
  };
  for (const size of [1, 2, 7, 9, 64, bytes.length]) {
    const reader = new rec.RecordReader(0);
    const got = feed(reader, bytes, size);
    assert.deepEqual(reader.header, header, `chunks of ${size}`);
    assert.deepEqual(got.map((r) => [r.type, r.t, r.offset]), expected.map((e) => [e.type, e.t, e.offset]), `chunks of ${size}`);
    assert.equal(reader.buffered, 0);
  }
  // From the second keyframe's offset (what a Range request returns), offsets stay the file's.
  const key = expected[6];
  const fromKey = new rec.RecordReader(key.offset);
  const got = feed(fromKey, bytes.subarray(key.offset, key.end - 3), 5);
  assert.deepEqual(got, [], 'a keyframe cut short is held, not returned');
  assert.equal(fromKey.buffered, key.end - 3 - key.offset);
  assert.deepEqual(fromKey.push(bytes.subarray(key.end - 3)).map((r) => [r.type, r.t, r.offset]), [[2, 5000, key.offset]]);
  // A record claiming an absurd length ends the reading instead of buffering forever.
  const damaged = new Uint8Array(bytes.subarray(0, expected[2].end));
  new DataView(damaged.buffer).setUint32(expected[2].offset + 5, 0xfffffff0, true);
  const reader = new rec.RecordReader(0);
  assert.equal(reader.push(damaged).length, 2);
  assert.equal(reader.stopped, true);
  // The keyframe for a time: the last at or before it.
  const keyframes = [{ t: 0, offset: 10 }, { t: 5000, offset: 20 }, { t: 10000, offset: 30 }];
  assert.equal(rec.lastKeyframe(keyframes, 4999).offset, 10);
  assert.equal(rec.lastKeyframe(keyframes, 5000).offset, 20);
  assert.equal(rec.lastKeyframe(keyframes, 99999).offset, 30);
  assert.equal(rec.lastKeyframe([{ t: 300, offset: 1 }], 299), null);
});

test('skipBytes drops the head of a stream across chunks', async () => {
  const chunks = [new Uint8Array([1, 2, 3]), new Uint8Array([4, 5]), new Uint8Array([6, 7, 8])];
  const stream = new ReadableStream({
    start(c) {
      for (const x of chunks) c.enqueue(x);
      c.close();
    },
  });
  const out = [];
  for await (const c of rec.skipBytes(stream, 4)) out.push(...c);
  assert.deepEqual(out, [5, 6, 7, 8]);
});

// ---- the player, with a scripted file ----

const W = 320;
const H = 200;
const GREEN = [0x22, 0xaa, 0x44];
const RED = [0xcc, 0x22, 0x22];

/** BGRA rows of a W x H picture, `colourAt(x, y)` per pixel. */
function pixels(w, hgt, colourAt) {
  const px = Buffer.alloc(w * hgt * 4);
  for (let y = 0; y < hgt; y++) {
    for (let x = 0; x < w; x++) {
      const [r, g, b] = colourAt(x, y);
      px.set([b, g, r, 0], (y * w + x) * 4);
    }
  }
  return px;
}

const fullFrame = (colourAt, keyframe) =>
  envelope({ videoFrame: { codec: pb.Codec.CODEC_RAW_ZSTD, width: W, height: H, rects: [{ x: 0, y: 0, width: W, height: H }], data: zstdStored(pixels(W, H, colourAt)), keyframe } });

/**
 * A lossless recording: no picture before 1 s; blue from 1 s; the top-left quarter green
 * from 2 s (a delta); red from 4 s (a delta); keyframes at 1, 3 and 5 s; a red 4x4 cursor
 * at (10, 10) from the start, at (100, 50) from 5 s; a chat at 5.5 s; the end at 6 s.
 */
function scriptedFile(id) {
  const header = { session_id: id, agent_id: 'agent-scripted', hostname: 'scripted-pc', kind: 'attended', started_at: Date.now() - 60_000 };
  const json = Buffer.from(JSON.stringify(header));
  const quarter = (x, y) => (x < W / 2 && y < H / 2 ? GREEN : BLUE);
  const records = [
    [3, 0, envelope({ cursorShape: { width: 4, height: 4, hotX: 0, hotY: 0, rgba: Buffer.from(Array.from({ length: 16 }, () => [...RED, 255]).flat()), serial: 1 } })],
    [3, 0, envelope({ cursorPosition: { x: 10, y: 10, visible: true } })],
    [6, 900, Buffer.from('{"type":"viewer_joined","user":"admin","mode":"control"}')],
    [2, 1000, fullFrame(() => BLUE, true)],
    [1, 2000, envelope({ videoFrame: { codec: pb.Codec.CODEC_RAW_ZSTD, width: W, height: H, rects: [{ x: 0, y: 0, width: W / 2, height: H / 2 }], data: zstdStored(pixels(W / 2, H / 2, () => GREEN)), keyframe: false } })],
    [4, 2500, envelope({ mouseEvent: { action: pb.MouseAction.MOUSE_ACTION_MOVE, x: 5, y: 5 } })],
    [2, 3000, fullFrame(quarter, true)],
    [1, 4000, fullFrame(() => RED, false)],
    [2, 5000, fullFrame(() => RED, true)],
    [3, 5000, envelope({ cursorPosition: { x: 100, y: 50, visible: true } })],
    [5, 5500, envelope({ chat: { from: 'admin', text: 'all red now', sentAtMs: 1 } })],
    [6, 6000, Buffer.from('{"type":"viewer_left","user":"admin"}')],
  ];
  const parts = [Buffer.from('GCREC1\n'), u32(json.length), json];
  let at = parts.reduce((n, b) => n + b.length, 0);
  const keyframes = [];
  for (const [type, t, payload] of records) {
    if (type === 2) keyframes.push({ t, offset: at });
    const r = record(type, t, payload);
    parts.push(r);
    at += r.length;
  }
  const bytes = Buffer.concat(parts);
  const detail = {
    id, session_id: id, agent_id: header.agent_id, hostname: header.hostname, kind: header.kind, started_at: header.started_at,
    ended_at: header.started_at + 6000, bytes: bytes.length, duration_ms: 6000, sha256: createHash('sha256').update(bytes).digest('hex'), status: 'complete', error: null,
    keyframes,
    events: [
      { t: 900, type: 'viewer_joined', user: 'admin', mode: 'control' },
      { t: 2000, type: 'input' },
      { t: 5500, type: 'chat', from: 'admin', text: 'all red now' },
      { t: 6000, type: 'viewer_left', user: 'admin' },
    ],
    end_t: 6000,
  };
  return { bytes, detail };
}

/** Serves a recording's index and file (with Range) to `context` in place of the server. */
async function serveRecording(context, { bytes, detail }) {
  await context.route(`**/api/recordings/${detail.id}/file`, async (route) => {
    const range = /bytes=(\d+)-/.exec(route.request().headers().range ?? '');
    const from = range ? Number(range[1]) : 0;
    await route.fulfill({
      status: range ? 206 : 200,
      headers: { 'content-type': 'application/octet-stream', ...(range ? { 'content-range': `bytes ${from}-${bytes.length - 1}/${bytes.length}` } : {}) },
      body: Buffer.from(bytes.subarray(from)),
    });
  });
  await context.route(`**/api/recordings/${detail.id}`, (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(detail) }));
}

/** The colour of the player's picture at (x, y). */
const playerPixel = (page, x, y) =>
  page.evaluate(([x, y]) => Array.from(document.querySelector('.rec-canvas').getContext('2d').getImageData(x, y, 1, 1).data), [x, y]);

test('the player draws a lossless recording pixel-exact, seeks through keyframes and draws the cursor', { timeout: 60_000 }, async () => {
  await up();
  const id = crypto.randomUUID();
  const file = scriptedFile(id);
  const { page, context, assertClean } = await openPage(browser);
  await serveRecording(context, file);
  await uiLogin(page, server.url);
  await page.goto(`${server.url}/#/recordings/${id}`);
  await page.waitForSelector('[data-testid=player][data-state=paused]', { timeout: 20_000 });
  // Nothing was watched yet at 0: no picture, and it says so.
  assert.match(await page.locator('.rec-overlay').innerText(), /No picture/);
  assert.equal(await page.locator('[data-testid=rec-marker]').count(), 4);

  // Each seek starts at the keyframe before and applies the deltas up to the time.
  const at = async (t, topLeft, bottomRight) => {
    await seekTo(page, t);
    assert.deepEqual(await playerPixel(page, 5, 5), [...topLeft, 255], `top left at ${t} ms`);
    assert.deepEqual(await playerPixel(page, W - 5, H - 5), [...bottomRight, 255], `bottom right at ${t} ms`);
    assert.equal(await page.locator('.rec-overlay').isVisible(), false, `the overlay at ${t} ms`);
  };
  await at(1500, BLUE, BLUE);
  await at(2500, GREEN, BLUE);
  await at(3999, GREEN, BLUE);
  await at(4500, RED, RED);
  await at(2000, GREEN, BLUE);
  // The cursor: its shape and place, remembered across seeks.
  const cursor = page.locator('[data-testid=rec-cursor]');
  assert.deepEqual([await cursor.getAttribute('data-x'), await cursor.getAttribute('data-y')], ['10', '10']);
  assert.deepEqual(await cursor.evaluate((c) => Array.from(c.getContext('2d').getImageData(1, 1, 1, 1).data)), [...RED, 255]);
  await seekTo(page, 5200);
  assert.deepEqual([await cursor.getAttribute('data-x'), await cursor.getAttribute('data-y')], ['100', '50']);
  const [cb, sb] = [await cursor.boundingBox(), await page.locator('.rec-canvas').boundingBox()];
  assert.ok(Math.abs(cb.x - (sb.x + (100 / W) * sb.width)) <= 1.5 && Math.abs(cb.y - (sb.y + (50 / H) * sb.height)) <= 1.5, `the cursor at ${cb.x},${cb.y} over the picture at ${sb.x},${sb.y}`);
  // Back to before any picture.
  await seekTo(page, 500);
  assert.match(await page.locator('.rec-overlay').innerText(), /No picture/);

  // Playing from the start at 4x reaches the end in about 1.5 s, drawing every change. The
  // page times it (from the state turning to playing to ended): the test's own round trips
  // to the browser stretch on a busy machine.
  await page.selectOption('[data-testid=rec-speed]', '4');
  await seekTo(page, 0);
  await page.evaluate(() => {
    const p = document.querySelector('[data-testid=player]');
    const times = (window.__gcStates = {});
    new MutationObserver(() => (times[p.dataset.state] ??= performance.now())).observe(p, { attributeFilter: ['data-state'] });
  });
  await page.click('[data-testid=rec-play]');
  await page.waitForSelector('[data-testid=player][data-state=ended]', { timeout: 10_000 });
  const states = await page.evaluate(() => window.__gcStates);
  const took = states.ended - states.playing;
  assert.ok(took >= 1200 && took <= 4000, `6 s at 4x took ${Math.round(took)} ms (${JSON.stringify(states)})`);
  assert.deepEqual(await playerPixel(page, 5, 5), [...RED, 255]);
  assert.equal(await page.locator('[data-testid=rec-time]').innerText(), '0:06 / 0:06');
  assert.equal(await page.locator('[data-testid=rec-events] li[aria-current]').getAttribute('data-type'), 'viewer_left');
  // Replay starts over (at 1x: the test has time to see it playing and pause it).
  await page.selectOption('[data-testid=rec-speed]', '1');
  await page.click('[data-testid=rec-play]');
  await waitFor(async () => (await playerState(page)) === 'playing' && (await playerTime(page)) < 3000, 'the replay');
  // Space pauses, the arrow keys move 5 s.
  await page.locator('.rec-stage').focus();
  await page.keyboard.press('Space');
  assert.equal(await playerState(page), 'paused');
  const t = await playerTime(page);
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction((t) => Number(document.querySelector('[data-testid=player]').dataset.t) === Math.min(6000, t + 5000) && document.querySelector('[data-testid=player]').dataset.state === 'paused', t);
  await shot(page, 'recordings-player-scripted');
  assertClean();
  await context.close();
});

// ---- the console, end to end ----

/** The samples of the first canvas matching `selector`. */
function samples(page, selector) {
  return page.evaluate(
    ([selector, points]) => {
      const c = document.querySelector(selector);
      const g = c.getContext('2d');
      return points.map(([x, y]) => Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3)));
    },
    [selector, SAMPLES],
  );
}

/** Waits until every sample of the canvas is near `colour`; returns the samples. */
async function waitForColour(page, selector, colour, what) {
  let last = null;
  await waitFor(
    async () => {
      last = await samples(page, selector);
      return last.every((px) => near(px, colour));
    },
    () => `${what}: ${hex(colour)} at ${JSON.stringify(SAMPLES)} (got ${JSON.stringify(last)})`,
    20_000,
  );
  return last;
}

/**
 * Records in the page every picture (the samples) the canvas `selector` shows from now on,
 * until `stopWatchingPictures` returns them.
 */
function watchPictures(page, selector) {
  return page.evaluate(
    ([selector, points]) => {
      const pictures = [];
      const keys = new Set();
      const sample = () => {
        const c = document.querySelector(selector);
        if (!c?.width) return;
        const g = c.getContext('2d');
        const px = points.map(([x, y]) => Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3)));
        const key = px.join(';');
        if (!keys.has(key)) {
          keys.add(key);
          pictures.push(px);
        }
      };
      // Every frame the page paints, and in between (a decoded frame may not last a paint).
      const paint = () => {
        sample();
        window.__gcWatch.raf = requestAnimationFrame(paint);
      };
      window.__gcWatch = { pictures, timer: setInterval(sample, 10), raf: requestAnimationFrame(paint) };
    },
    [selector, SAMPLES],
  );
}

function stopWatchingPictures(page) {
  return page.evaluate(() => {
    const w = window.__gcWatch;
    clearInterval(w.timer);
    cancelAnimationFrame(w.raf);
    return w.pictures;
  });
}

/** H.264 decodes the same frames alike in the viewer and the player; a little slack for rounding. */
const SAME_PICTURE = 3;

/**
 * Waits until the player shows one of the pictures the viewer showed (for a picture that is
 * standing still, that it shows it now): the player decodes the recorded frames as the
 * viewer decoded them live.
 */
async function waitForViewersPicture(page, pictures, what) {
  let last = null;
  await waitFor(
    async () => {
      last = await samples(page, '.rec-canvas');
      return pictures.some((seen) => seen.every((px, i) => near(last[i], px, SAME_PICTURE)));
    },
    () => `${what}: the player shows ${JSON.stringify(last)} at ${JSON.stringify(SAMPLES)}; the viewer showed ${JSON.stringify(pictures)}`,
    10_000,
  );
}

/** The X pointer's position. */
function pointer() {
  const m = /x:(\d+) y:(\d+)/.exec(xs.x('xdotool', ['getmouselocation']));
  return m ? [Number(m[1]), Number(m[2])] : [-1, -1];
}

/**
 * How far the player's clock moves in about `ms` of the page's time. Both ends are read in
 * an animation frame, after the player's own frame callback has set data-t: the page's time
 * between them, not the test's (which a busy machine stretches), is what the clock follows.
 */
function playerClock(page, ms) {
  return page.evaluate(async (ms) => {
    const p = document.querySelector('[data-testid=player]');
    const read = () => new Promise((resolve) => requestAnimationFrame(() => resolve([Number(p.dataset.t), performance.now()])));
    const [t1, w1] = await read();
    await new Promise((resolve) => setTimeout(resolve, ms));
    const [t2, w2] = await read();
    return { moved: t2 - t1, wall: w2 - w1, state: p.dataset.state };
  }, ms);
}

const playerState = (page) => page.locator('[data-testid=player]').getAttribute('data-state');
const playerTime = async (page) => Number(await page.locator('[data-testid=player]').getAttribute('data-t'));

/** Seeks with the seek bar to `t` (what dragging it does) and waits for the seek to finish. */
async function seekTo(page, t) {
  await page.locator('[data-testid=rec-seek]').evaluate((el, t) => {
    el.value = String(t);
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, t);
  await page.waitForFunction((t) => {
    const p = document.querySelector('[data-testid=player]');
    return p.dataset.state === 'paused' && Math.abs(Number(p.dataset.t) - t) <= 1;
  }, t, { timeout: 20_000 });
}

let recording;
let fileBytes;

test('an administrator sets the recording policy in the console; a bad one is refused', { skip, timeout: 60_000 }, async () => {
  await upWithX();
  const site = await apiCall(server.url, 'POST', '/api/sites', admin, { name: 'Head Office', code: 'HQ' });
  assert.equal(site.status, 201, JSON.stringify(site.body));
  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
  await uiLogin(page, server.url);
  await page.click('a[href="#/recordings"]');
  await page.waitForSelector('[data-testid=policy-form][data-state=ready]');
  assert.equal(await page.inputValue('[data-testid=policy-mode]'), 'off');
  assert.equal(await page.inputValue('[data-testid=policy-retention]'), '30');
  assert.equal(await page.locator('[data-testid=policy-sites]').isVisible(), false);

  // "Sites" without a site: the server's 400 shows in the form.
  await page.selectOption('[data-testid=policy-mode]', 'sites');
  await page.locator('[data-testid=policy-sites]', { hasText: 'Head Office (HQ)' }).waitFor();
  await page.click('[data-testid=policy-save]');
  await page.locator('[data-testid=policy-form] .alert-bad', { hasText: 'at least one site' }).waitFor();
  // With the site ticked it is accepted.
  await page.locator('[data-testid=policy-sites] label', { hasText: 'Head Office' }).locator('input').check();
  await page.click('[data-testid=policy-save]');
  await page.locator('.toast', { hasText: 'Recording policy saved' }).waitFor();
  let policy = await apiCall(server.url, 'GET', '/api/settings/recording', admin);
  assert.deepEqual(policy.body, { mode: 'sites', sites: [site.body.id], retention_days: 30 });

  // Every session, kept a week.
  await page.selectOption('[data-testid=policy-mode]', 'all');
  await page.fill('[data-testid=policy-retention]', '7');
  await page.click('[data-testid=policy-save]');
  await waitFor(async () => (await apiCall(server.url, 'GET', '/api/settings/recording', admin)).body.mode === 'all', 'the policy saved as all');
  policy = await apiCall(server.url, 'GET', '/api/settings/recording', admin);
  assert.deepEqual(policy.body, { mode: 'all', sites: [], retention_days: 7 });
  await page.reload();
  await page.waitForSelector('[data-testid=policy-form][data-state=ready]');
  await waitFor(async () => (await page.inputValue('[data-testid=policy-mode]')) === 'all', 'the form showing the saved policy');
  assert.equal(await page.inputValue('[data-testid=policy-retention]'), '7');
  // A bad retention is refused with the error envelope (docs/recordings.md says 400; the
  // server answers validation errors 422 everywhere).
  const bad = await apiCall(server.url, 'PUT', '/api/settings/recording', admin, { mode: 'all', sites: [], retention_days: 0 });
  assert.ok([400, 422].includes(bad.status), JSON.stringify(bad));
  assert.match(bad.body.detail, /retention_days/);
  assertClean();
  await context.close();
});

test('a watched session is recorded, listed with its SHA-256 and played back as the viewer saw it', { skip, timeout: 240_000 }, async () => {
  await upWithX();
  const policy = await apiCall(server.url, 'GET', '/api/settings/recording', admin);
  assert.equal(policy.body.mode, 'all', 'the first test set the policy');
  agent = await startManagedAgent(xs, server.url, admin);
  const machine = await waitFor(async () => {
    const r = await apiCall(server.url, 'GET', `/api/machines/${agent.agentId}`, admin);
    return r.status === 200 && r.body.online && r.body.session_id ? r.body : null;
  }, () => `the managed machine online (agent log: ${agent.log().slice(-2000)})`);
  sessionId = machine.session_id;

  // ---- live: blue, a chat message, then orange ----
  const { page, context, assertClean } = await openPage(browser);
  await uiLogin(page, server.url);
  await page.goto(`${server.url}/#/view/${sessionId}`);
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 30_000 });
  await page.waitForFunction(() => document.querySelector('canvas.screen')?.width === 1024, null, { timeout: 30_000 });
  await watchPictures(page, 'canvas.screen');
  await waitForColour(page, 'canvas.screen', BLUE, 'the viewer in blue');
  // The pointer somewhere known, and some input from the viewer. The agent moves the X
  // pointer to the click when the click reaches it (late on a busy machine): only then does
  // the pointer go to where the player must show it.
  xs.x('xdotool', ['mousemove', '400', '300']);
  const box = await page.locator('canvas.screen').boundingBox();
  await page.mouse.click(box.x + box.width * 0.6, box.y + box.height * 0.2);
  await waitFor(() => near(pointer(), [1024 * 0.6, 768 * 0.2], 3), () => `the viewer's click at the X pointer (it is at ${pointer()})`);
  xs.x('xdotool', ['mousemove', '400', '300']);
  assert.deepEqual(pointer(), [400, 300]);
  await sleep(2000);
  await page.click('button:has-text("Chat")');
  await page.fill('input[aria-label="Chat message"]', 'switching to orange');
  await page.keyboard.press('Enter');
  await page.locator('[data-testid=chat-log]', { hasText: 'switching to orange' }).waitFor();
  await sleep(1000);
  xs.x('xsetroot', ['-solid', hex(ORANGE)]);
  await waitForColour(page, 'canvas.screen', ORANGE, 'the viewer in orange');
  // The viewer shows a frame after the server recorded it: in the recording (whose times
  // count from started_at) the screen is orange by this time at the latest.
  const orangeAt = Date.now();
  // Long enough in orange that the middle of the recording is well past the change.
  const live = (await apiCall(server.url, 'GET', `/api/recordings?machine=${agent.agentId}`, admin)).body.recordings.find((r) => r.id === sessionId);
  assert.equal(live?.status, 'recording', JSON.stringify(live));
  await sleep(Math.max(3500, live.started_at + 2.2 * (orangeAt - live.started_at) + 4000 - Date.now()));
  const pictures = await stopWatchingPictures(page);
  seen.blue = pictures.filter((px) => px.every((c) => near(c, BLUE)));
  seen.orange = pictures.filter((px) => px.every((c) => near(c, ORANGE)));
  assert.ok(seen.blue.length && seen.orange.length, `the viewer showed blue and orange: ${JSON.stringify(pictures)}`);
  // A last record just before the end. The recording ends with its last record, and on a
  // still screen the frames stop: a keyframe is asked for only every few seconds, and the
  // viewer_left event is lost when the session ends first (the server's recorder stops at
  // the session's end, before the viewer's leaving is recorded).
  await page.fill('input[aria-label="Chat message"]', 'orange for a while');
  await page.keyboard.press('Enter');
  await page.locator('[data-testid=chat-log]', { hasText: 'orange for a while' }).waitFor();
  await page.click('[data-testid=end-session]');
  await page.locator('dialog.modal button', { hasText: 'End session' }).click();
  await page.waitForSelector('[data-testid=conn-state][data-state=ended]', { timeout: 15_000 });
  // A managed agent would start the next (recorded) session: stop it.
  agent.proc.kill('SIGTERM');

  // ---- the list ----
  await page.goto(`${server.url}/#/recordings`);
  const row = page.locator(`[data-testid=recordings-table] tr[data-recording-id="${sessionId}"]`);
  await row.waitFor({ timeout: 20_000 });
  await page.locator(`tr[data-recording-id="${sessionId}"][data-status=complete]`).waitFor({ timeout: 30_000 });
  const listed = await apiCall(server.url, 'GET', `/api/recordings?machine=${agent.agentId}`, admin);
  assert.equal(listed.status, 200, JSON.stringify(listed.body));
  const item = listed.body.recordings.find((r) => r.id === sessionId);
  assert.ok(item, JSON.stringify(listed.body));
  assert.equal(item.status, 'complete');
  assert.match(item.sha256, /^[0-9a-f]{64}$/);
  const text = await row.innerText();
  assert.match(text, new RegExp(machine.hostname));
  assert.match(text, /managed/);
  assert.match(text, new RegExp(item.sha256.slice(0, 12)));
  assert.equal(await row.locator('[data-testid=recording-delete]').count(), 1);
  await shot(page, 'recordings-list');

  // ---- the index and the file ----
  const detail = await apiCall(server.url, 'GET', `/api/recordings/${sessionId}`, admin);
  assert.equal(detail.status, 200, JSON.stringify(detail.body));
  recording = detail.body;
  assert.ok(recording.keyframes.length >= 1, JSON.stringify(recording.keyframes));
  const chat = recording.events.find((e) => e.type === 'chat' && e.text === 'switching to orange');
  assert.ok(chat, JSON.stringify(recording.events));
  const lastChat = recording.events.find((e) => e.type === 'chat' && e.text === 'orange for a while');
  assert.ok(lastChat && recording.end_t >= lastChat.t, JSON.stringify(recording));
  assert.ok(recording.events.some((e) => e.type === 'viewer_joined' && e.user === 'admin'), JSON.stringify(recording.events));
  assert.ok(recording.events.some((e) => e.type === 'input'), JSON.stringify(recording.events));
  const res = await fetch(`${server.url}/api/recordings/${sessionId}/file`, { headers: { Authorization: `Bearer ${admin}` } });
  assert.equal(res.status, 200);
  fileBytes = new Uint8Array(await res.arrayBuffer());
  assert.equal(createHash('sha256').update(fileBytes).digest('hex'), item.sha256, 'the file is what its SHA-256 says');
  const parsed = rec.parseRecording(fileBytes);
  assert.equal(parsed.truncated, false);
  assert.equal(parsed.header.session_id, sessionId);
  assert.deepEqual(parsed.records.filter((r) => r.type === 2).map((r) => ({ t: r.t, offset: r.offset })), recording.keyframes);
  assert.equal(parsed.records.at(-1).t, recording.end_t);
  // A Range request from a keyframe starts with that keyframe's record.
  const key = recording.keyframes.at(-1);
  const ranged = await fetch(`${server.url}/api/recordings/${sessionId}/file`, { headers: { Authorization: `Bearer ${admin}`, Range: `bytes=${key.offset}-` } });
  assert.equal(ranged.status, 206);
  const tail = new Uint8Array(await ranged.arrayBuffer());
  assert.equal(tail.length, fileBytes.length - key.offset);
  assert.equal(tail[0], 2);

  // ---- the player ----
  await row.locator('[data-testid=recording-play]').click();
  await page.waitForURL(new RegExp(`#/recordings/${sessionId}$`));
  await page.waitForSelector('[data-testid=player][data-state=paused]', { timeout: 20_000 });
  assert.equal(await page.locator('[data-testid=rec-host]').innerText(), machine.hostname);
  const endT = recording.end_t;
  const orangeT = orangeAt - recording.started_at;
  assert.equal(Number(await page.locator('[data-testid=player]').getAttribute('data-end')), endT);
  assert.equal(await page.locator('[data-testid=rec-marker][data-type=chat]').count(), 2);
  assert.ok((await page.locator('[data-testid=rec-marker][data-type=viewer_joined]').count()) >= 1);
  assert.ok((await page.locator('[data-testid=rec-marker][data-type=input]').count()) >= 1);
  await page.locator('[data-testid=rec-events]', { hasText: 'switching to orange' }).waitFor();

  // Play at 1x: blue, as the viewer saw it, and the clock runs.
  await page.click('[data-testid=rec-play]');
  assert.equal(await playerState(page), 'playing');
  await waitForColour(page, '.rec-canvas', BLUE, 'the player in blue');
  await waitForViewersPicture(page, seen.blue, 'playing');
  const clock = await playerClock(page, 1000);
  assert.equal(clock.state, 'playing');
  assert.ok(clock.moved >= clock.wall * 0.6 && clock.moved <= clock.wall * 1.05 + 50, `${Math.round(clock.wall)} ms of playing at 1x moved the clock ${clock.moved} ms`);
  await shot(page, 'recordings-player');

  // 8x to the end: orange.
  await page.selectOption('[data-testid=rec-speed]', '8');
  await page.waitForSelector('[data-testid=player][data-state=ended]', { timeout: 30_000 });
  assert.equal(await playerTime(page), endT);
  await waitForColour(page, '.rec-canvas', ORANGE, 'the player at the end');
  await waitForViewersPicture(page, seen.orange, 'at the end');
  assert.match(await page.locator('[data-testid=rec-time]').innerText(), /^(\d+:\d\d) \/ \1$/);
  // The cursor is drawn where the X pointer was.
  const cursor = page.locator('[data-testid=rec-cursor]');
  assert.equal(await cursor.isVisible(), true, 'the cursor is drawn');
  assert.deepEqual([await cursor.getAttribute('data-x'), await cursor.getAttribute('data-y')], ['400', '300']);

  // The chat event in the list: still blue there (orange came a second later).
  const firstKey = recording.keyframes[0].t;
  await page.locator('[data-testid=rec-events] button', { hasText: 'switching to orange' }).click();
  await page.waitForFunction((t) => {
    const p = document.querySelector('[data-testid=player]');
    return p.dataset.state === 'paused' && Number(p.dataset.t) === t;
  }, chat.t, { timeout: 20_000 });
  await waitForColour(page, '.rec-canvas', BLUE, 'the player at the chat');
  await waitForViewersPicture(page, seen.blue, 'at the chat');
  assert.equal(await page.locator('[data-testid=rec-events] li[aria-current]').getAttribute('data-type'), 'chat');
  // Past the change: orange, decoded from the keyframe before it.
  const later = Math.min(endT, orangeT + 500);
  await seekTo(page, later);
  await waitForColour(page, '.rec-canvas', ORANGE, `the player at ${later} ms`);
  await waitForViewersPicture(page, seen.orange, 'past the change');
  // The middle of the seek bar: the middle of the recording.
  const bar = await page.locator('[data-testid=rec-seek]').boundingBox();
  await page.mouse.click(bar.x + bar.width / 2, bar.y + bar.height / 2);
  await page.waitForSelector('[data-testid=player][data-state=paused]');
  await waitFor(async () => Math.abs((await playerTime(page)) - endT / 2) <= endT * 0.03 && (await playerState(page)) === 'paused', async () => `the player at the middle (${endT / 2} ms); it is at ${await playerTime(page)}`);
  const mid = await playerTime(page);
  assert.ok(mid > orangeT + 1000 && mid > firstKey, `the middle (${mid} ms) is well after the change (orange by ${orangeT} ms)`);
  await waitForColour(page, '.rec-canvas', ORANGE, 'the player in the middle');
  await waitForViewersPicture(page, seen.orange, 'in the middle');
  // And it plays on from there, and pauses.
  await page.selectOption('[data-testid=rec-speed]', '1');
  await page.click('[data-testid=rec-play]');
  await waitFor(async () => (await playerTime(page)) > mid + 300, 'the clock moving after the seek');
  await page.click('[data-testid=rec-play]');
  assert.equal(await playerState(page), 'paused');
  const paused = await playerTime(page);
  await sleep(500);
  assert.equal(await playerTime(page), paused);
  assertClean();
  await context.close();
});

test('a file cut short inside a record still plays up to its last whole record', { skip, timeout: 90_000 }, async () => {
  await upWithX();
  assert.ok(fileBytes && recording, 'the previous test recorded a session');
  const parsed = rec.parseRecording(fileBytes);
  // Inside the last keyframe's record (a big one), or else inside the last record.
  const cutRecord = parsed.records.filter((r) => r.type === 2).at(-1) ?? parsed.records.at(-1);
  const cut = cutRecord.offset + 9 + Math.floor(cutRecord.payload.length / 2);
  const short = fileBytes.subarray(0, cut);
  const kept = rec.parseRecording(short);
  assert.equal(kept.truncated, true);
  assert.equal(kept.records.length, parsed.records.indexOf(cutRecord));
  const keyframes = kept.records.filter((r) => r.type === 2).map((r) => ({ t: r.t, offset: r.offset }));
  const endT = kept.records.at(-1).t;

  const { page, context, assertClean } = await openPage(browser);
  // The server serves the cut copy, and the index it would build from it.
  await context.route(`**/api/recordings/${sessionId}/file`, async (route) => {
    const range = /bytes=(\d+)-/.exec(route.request().headers().range ?? '');
    const from = range ? Number(range[1]) : 0;
    await route.fulfill({
      status: range ? 206 : 200,
      headers: { 'content-type': 'application/octet-stream', ...(range ? { 'content-range': `bytes ${from}-${short.length - 1}/${short.length}` } : {}) },
      body: Buffer.from(short.subarray(from)),
    });
  });
  await context.route(`**/api/recordings/${sessionId}`, async (route) => {
    await route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ ...recording, keyframes, end_t: endT, bytes: short.length }) });
  });
  await uiLogin(page, server.url);
  await page.goto(`${server.url}/#/recordings/${sessionId}`);
  await page.waitForSelector('[data-testid=player][data-state=paused]', { timeout: 20_000 });
  await page.selectOption('[data-testid=rec-speed]', '8');
  await page.click('[data-testid=rec-play]');
  await page.waitForSelector('[data-testid=player][data-state=ended]', { timeout: 30_000 });
  assert.equal(await playerTime(page), endT);
  assert.ok(Number(await page.locator('.rec-canvas').getAttribute('data-frames')) > 0, 'frames were drawn');
  // What was before the cut shows; a seek into the last whole part works too.
  await seekTo(page, Math.max(0, endT - 500));
  assert.equal(await page.locator('[data-testid=player]').getAttribute('data-state'), 'paused');
  assert.equal(await page.locator('[role=alert]').count(), 0, 'no error is shown');
  assertClean();
  await context.close();
});

test('a technician has no Recordings entry and the API refuses them; an administrator deletes a recording', { skip, timeout: 60_000 }, async () => {
  await upWithX();
  assert.ok(sessionId, 'a session was recorded');
  const created = await apiCall(server.url, 'POST', '/api/users', admin, { username: 'tech.tina', password: 'Tina-password-42!', role: 'technician' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const tech = await login(server.url, 'tech.tina', 'Tina-password-42!');
  for (const [method, path, body] of [
    ['GET', '/api/recordings'],
    ['GET', `/api/recordings/${sessionId}`],
    ['GET', `/api/recordings/${sessionId}/file`],
    ['DELETE', `/api/recordings/${sessionId}`],
    ['GET', '/api/settings/recording'],
    ['PUT', '/api/settings/recording', { mode: 'off', sites: [], retention_days: 30 }],
  ]) {
    const r = await fetch(server.url + path, { method, headers: { Authorization: `Bearer ${tech}`, ...(body ? { 'Content-Type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
    assert.equal(r.status, 403, `${method} ${path} as a technician`);
  }
  const t = await openPage(browser);
  await uiLogin(t.page, server.url, 'tech.tina', 'Tina-password-42!');
  await t.page.locator('a[href="#/machines"]').waitFor();
  assert.equal(await t.page.locator('a[href="#/recordings"]').count(), 0, 'a technician sees Recordings in the navigation');
  await t.page.goto(`${server.url}/#/recordings/${sessionId}`);
  await t.page.locator('[data-testid=no-permission]').waitFor();
  assert.equal(await t.page.locator('[data-testid=player]').count(), 0);
  t.assertClean();
  await t.context.close();

  // An administrator deletes it from the list.
  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
  await uiLogin(page, server.url);
  await page.goto(`${server.url}/#/recordings`);
  const row = page.locator(`[data-testid=recordings-table] tr[data-recording-id="${sessionId}"]`);
  await row.locator('[data-testid=recording-delete]').click();
  await page.locator('dialog.modal button', { hasText: 'Delete' }).click();
  await page.locator('.toast', { hasText: 'Recording deleted' }).waitFor();
  await waitFor(async () => (await row.count()) === 0, 'the deleted row to go');
  assert.equal((await apiCall(server.url, 'GET', `/api/recordings/${sessionId}`, admin)).status, 404);
  const audit = await apiCall(server.url, 'GET', '/api/events?type=recording.deleted', admin);
  assert.equal(audit.body.items.length, 1, JSON.stringify(audit.body));
  // An unknown recording: the player page shows the server's 404.
  await page.goto(`${server.url}/#/recordings/${sessionId}`);
  await page.locator('.alert-bad', { hasText: /no such recording/i }).waitFor();
  assertClean();
  await context.close();
});
