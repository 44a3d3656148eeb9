// The real agent under Xvfb, for browser tests: a private X display, the agent started with
// a support code (or managed, with its own key), and its windows (consent prompt, session
// indicator) found and clicked with xdotool. Every wait has a deadline.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import assert from 'node:assert/strict';
import { DASHBOARD, apiCall } from './harness.mjs';

export const AGENT = resolve(DASHBOARD, process.env.GURUCONNECT_AGENT_BIN ?? '../target/debug/guruconnect-agent');

// The agent's windows, from crates/agent/src/platform/ui.rs.
export const CONSENT_TITLE = 'GuruConnect remote support';
export const INDICATOR_TITLE = 'GuruConnect session';
/** The centre of ALLOW_BUTTON = (70, 130, 140, 44) in the consent window. */
export const ALLOW = { x: 70 + 70, y: 130 + 22 };
/** The centre of END_BUTTON = (100, 126, 140, 40) in the session indicator. */
export const END = { x: 100 + 70, y: 126 + 20 };

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Whether `tool` is on PATH. */
export function have(tool) {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A test's `skip` option: false, or what is missing (the agent binary or one of `tools`). */
export function skipUnless(tools) {
  const missing = [...(existsSync(AGENT) ? [] : [AGENT]), ...tools.filter((t) => !have(t))];
  return missing.length ? `missing: ${missing.join(', ')}` : false;
}

/** Polls `pred` until it returns something truthy, which it returns; throws after `ms`. */
export async function waitFor(pred, what, ms = 20_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
    await sleep(200);
  }
}

/**
 * Starts Xvfb (`size`, 1024x768 unless told) on a random display in `[base, base + 100)`;
 * resolves once xdpyinfo answers. `x(cmd, args)` runs an X client on it.
 */
export async function startXvfb({ base = 90, size = '1024x768' } = {}) {
  const display = `:${base + Math.floor(Math.random() * 100)}`;
  const env = { ...process.env, DISPLAY: display };
  const proc = spawn('Xvfb', [display, '-screen', '0', `${size}x24`, '-noreset', '-nolisten', 'tcp'], { stdio: 'ignore' });
  const x = (cmd, args) => execFileSync(cmd, args, { env, encoding: 'utf8', timeout: 30_000 }).trim();
  const xs = {
    display,
    env,
    x,
    stop() {
      proc.kill('SIGTERM');
    },
  };
  try {
    await waitFor(() => {
      if (proc.exitCode !== null) throw new Error(`Xvfb ${display} exited (${proc.exitCode})`);
      try {
        x('xdpyinfo', []);
        return true;
      } catch {
        return false;
      }
    }, `Xvfb on ${display}`);
  } catch (e) {
    xs.stop();
    throw e;
  }
  return xs;
}

/**
 * Starts the agent on the Xvfb display `xs` with a support code and `extraArgs` (say
 * `['--terminal-user', 'root']`). `exited` resolves with its exit code; `log()` is what it
 * printed.
 */
export function startAgent(xs, serverUrl, code, extraArgs = []) {
  const proc = spawn(AGENT, ['--server', serverUrl, '--code', code, ...extraArgs], { env: { ...xs.env, RUST_LOG: 'info' } });
  let log = '';
  proc.stdout.on('data', (d) => (log += d));
  proc.stderr.on('data', (d) => (log += d));
  const exited = new Promise((r) => proc.once('exit', (code, signal) => r(code ?? signal)));
  return { proc, exited, log: () => log };
}

/**
 * Starts a managed agent (no consent, no support code) on `xs` for a new machine: an
 * administrator mints a key for a fresh machine id, and the agent runs with an owner-only
 * agent.toml and agent.key in a temp dir. Resolves with the process, `exited`, `log()`,
 * the machine's `agentId` and the `dir`.
 */
export async function startManagedAgent(xs, serverUrl, adminToken) {
  const agentId = crypto.randomUUID();
  const key = await apiCall(serverUrl, 'POST', `/api/machines/${agentId}/keys`, adminToken, { label: 'e2e' });
  assert.equal(key.status, 201, JSON.stringify(key.body));
  const dir = mkdtempSync(join(tmpdir(), 'gc-managed-agent-'));
  // The agent refuses a key (or a configuration) that others can read.
  writeFileSync(join(dir, 'agent.key'), `${key.body.agent_key}\n`, { mode: 0o600 });
  writeFileSync(join(dir, 'agent.toml'), `server = ${JSON.stringify(serverUrl)}\nkey_file = ${JSON.stringify(join(dir, 'agent.key'))}\n`, { mode: 0o600 });
  const proc = spawn(AGENT, ['run', '--config', join(dir, 'agent.toml')], { env: { ...xs.env, RUST_LOG: 'info' } });
  let log = '';
  proc.stdout.on('data', (d) => (log += d));
  proc.stderr.on('data', (d) => (log += d));
  const exited = new Promise((r) => proc.once('exit', (code, signal) => r(code ?? signal)));
  return { proc, exited, log: () => log, agentId, dir };
}

/** The id of the visible window titled exactly `title`, waiting up to `ms` for it. */
export function findWindow(xs, title, what, ms = 30_000) {
  const regex = `^${title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`;
  return waitFor(() => {
    try {
      return xs.x('xdotool', ['search', '--onlyvisible', '--name', regex]).split('\n')[0];
    } catch {
      return null; // xdotool exits 1 while there is none
    }
  }, what, ms);
}

/** Left-clicks at `at` (window coordinates) in window `wid`. */
export function clickIn(xs, wid, at) {
  xs.x('xdotool', ['mousemove', '--window', wid, String(at.x), String(at.y), 'click', '1']);
}

/** Waits for the agent's consent prompt and clicks Allow. */
export async function allowConsent(xs, agent) {
  const wid = await findWindow(xs, CONSENT_TITLE, () => `the consent window (agent log: ${agent.log()})`);
  // Give the prompt a moment to draw and select its input before the click.
  await sleep(500);
  clickIn(xs, wid, ALLOW);
}
