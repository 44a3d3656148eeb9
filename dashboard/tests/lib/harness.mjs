// Test harness: a real guruconnect-server on a free port with a temp data dir, serving
// the built console from dashboard/dist, and chromium driven by playwright-core.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, existsSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const DASHBOARD = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const RESULTS = join(DASHBOARD, 'test-results');
export const ADMIN_PASSWORD = 'Correct-Horse-Battery-9';

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/**
 * Starts the server; resolves once /health answers. `generatedPassword` leaves the admin
 * password unset, so the server generates one and prints it (`log()` has it).
 */
export async function startServer({ generatedPassword = false } = {}) {
  const bin = resolve(DASHBOARD, process.env.GURUCONNECT_SERVER_BIN ?? '../target/debug/guruconnect-server');
  assert.ok(existsSync(bin), `server binary not found at ${bin} (build it with cargo build -p guruconnect-server, or set GURUCONNECT_SERVER_BIN)`);
  const dist = join(DASHBOARD, 'dist');
  assert.ok(existsSync(join(dist, 'index.html')), 'dashboard/dist is missing: run npm run build first');
  const dataDir = mkdtempSync(join(tmpdir(), 'gc-console-test-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const env = {
    ...process.env,
    GURUCONNECT_DATA_DIR: dataDir,
    GURUCONNECT_BIND: `127.0.0.1:${port}`,
    ...(generatedPassword ? {} : { GURUCONNECT_ADMIN_PASSWORD: ADMIN_PASSWORD }),
    GURUCONNECT_CONSOLE_DIR: dist,
    RUST_LOG: process.env.RUST_LOG ?? 'warn',
  };
  let log = '';
  let child = await spawnServer(bin, env, url, (d) => (log += d), () => log);
  const stopChild = async () => {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', r)));
  };
  return {
    url,
    port,
    dataDir,
    log: () => log,
    /** Stops the process and starts the same binary again on the same port and data dir. */
    async restart() {
      await stopChild();
      log += '\n--- restart ---\n';
      child = await spawnServer(bin, env, url, (d) => (log += d), () => log);
    },
    async stop() {
      await stopChild();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Spawns the server with `env`; resolves with the child once `url`/health answers. */
async function spawnServer(bin, env, url, onOutput, log) {
  const child = spawn(bin, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', onOutput);
  child.stderr.on('data', onOutput);
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited early (${child.exitCode}):\n${log()}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`server did not start:\n${log()}`);
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  return child;
}

/** JSON API call as `token` (or anonymous). */
export async function apiCall(base, method, path, token, body) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

export async function login(base, username, password) {
  const r = await apiCall(base, 'POST', '/api/auth/login', null, { username, password });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.token;
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * A page that records console errors and page errors. `allow` lists regexes for console
 * errors a test provokes on purpose (the browser logs every 4xx fetch as
 * "Failed to load resource").
 */
export async function openPage(browser, { allow = [], colorScheme = 'light' } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 }, colorScheme });
  const problems = [];
  // Every tab of the context is watched, also those the console opens (Join).
  const watch = (page) => {
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      const text = msg.text();
      if (allow.some((re) => re.test(text))) return;
      problems.push(`console error: ${text}`);
    });
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  };
  context.on('page', watch);
  const page = await context.newPage();
  return {
    page,
    context,
    problems,
    assertClean() {
      assert.deepEqual(problems, [], 'the page logged errors');
    },
  };
}

export async function shot(page, name) {
  mkdirSync(RESULTS, { recursive: true });
  await page.screenshot({ path: join(RESULTS, `${name}.png`) });
}

/** Clicks a Join link (it opens the viewer in a new tab) and returns the new tab. */
export async function joinInNewTab(context, link) {
  const [viewer] = await Promise.all([context.waitForEvent('page'), link.click()]);
  await viewer.waitForURL(/#\/view\//);
  return viewer;
}

/**
 * From a signed-in console page: opens Sessions, joins the active session (the viewer opens
 * in a new tab) and waits for its first frame. Resolves with the viewer tab.
 */
export async function joinActiveSession(context, page) {
  await page.click('a[href="#/sessions"]');
  const row = page.locator('[data-testid=sessions-table] tr', { hasText: 'active' });
  await row.waitFor({ timeout: 20_000 });
  const viewer = await joinInNewTab(context, row.locator('a', { hasText: 'Join' }));
  await viewer.waitForFunction(() => Number(document.querySelector('canvas.screen')?.dataset.frames ?? 0) >= 1, null, { timeout: 30_000 });
  return viewer;
}

/** Signs in through the UI. */
export async function uiLogin(page, base, username = 'admin', password = ADMIN_PASSWORD) {
  await page.goto(`${base}/#/login`);
  await page.fill('#username', username);
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  await page.waitForSelector('.page-head h1');
}

/** The expected console noise of a deliberate 4xx answer. */
export const HTTP_4XX = /Failed to load resource: the server responded with a status of 4\d\d/;
