// The remote terminal (issue 14), end to end with the real server and the real agent under
// Xvfb: an administrator opens a terminal from the Live sessions list, a shell answers
// (`echo gc-$((6*7))` prints gc-42), Ctrl+C copies a selection and Ctrl+V pastes it, a
// smaller browser window gives the shell a smaller terminal (`stty size`), `exit` ends it
// and says so, New terminal starts another, Close leaves for the machine page. A technician (no `terminal` permission) sees no Terminal
// action in the sessions list or the viewer, and the relay refuses a terminal opened by URL.
// Skipped when target/debug/guruconnect-agent, Xvfb, xdotool or xdpyinfo is missing.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, apiCall, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { allowConsent, skipUnless, startAgent, startXvfb, waitFor } from './lib/x11-agent.mjs';

const skip = skipUnless(['Xvfb', 'xdotool', 'xdpyinfo']);

let server;
let browser;
let admin;
let xs;
let agent;
let sessionId;
let agentId;

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  xs = await startXvfb({ base: 400 });
});

after(async () => {
  agent?.proc.kill('SIGTERM');
  xs?.stop();
  await browser?.close();
  await server?.stop();
});

/** What the terminal shows now (its visible rows). */
const screenText = (page) => page.locator('[data-testid=terminal] .xterm-rows').innerText();

/** Waits until the terminal's visible text matches `re`; returns the match. */
async function waitForScreen(page, re, what) {
  let last = '';
  return waitFor(
    async () => {
      last = await screenText(page);
      return re.exec(last);
    },
    () => `${what} in the terminal (it shows:\n${last}\nagent log: ${agent?.log().slice(-2000)})`,
  );
}

/** Types a command line into the terminal and presses Enter. */
async function run(page, line) {
  await page.keyboard.type(line);
  await page.keyboard.press('Enter');
}

/** `<rows> <cols>` as `stty size` prints it, tagged so the command line never matches. */
async function sttySize(page, tag) {
  await run(page, `echo ${tag}-$(stty size)`);
  const m = await waitForScreen(page, new RegExp(`${tag}-(\\d+)\\s+(\\d+)`), `the ${tag} stty size`);
  return { rows: Number(m[1]), cols: Number(m[2]) };
}

const PROMPT = /[$#%>]\s*$/;

test('an administrator opens a terminal from the sessions list; the shell answers, resizes and ends', { skip, timeout: 90_000 }, async () => {
  const code = await apiCall(server.url, 'POST', '/api/codes', admin, { note: 'terminal' });
  assert.equal(code.status, 201, JSON.stringify(code.body));
  // The agent runs as root in CI: a root shell must be asked for by name.
  agent = startAgent(xs, server.url, code.body.code, process.getuid?.() === 0 ? ['--terminal-user', 'root'] : []);
  await allowConsent(xs, agent);
  const live = await waitFor(async () => {
    const r = await apiCall(server.url, 'GET', '/api/sessions?all=true', admin);
    return r.body.find((s) => s.status === 'active' && s.live);
  }, () => `an active session (agent log: ${agent.log()})`);
  sessionId = live.id;
  agentId = live.agent_id;

  const { page: list, context, assertClean } = await openPage(browser);
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  await uiLogin(list, server.url);
  await list.click('a[href="#/sessions"]');
  const row = list.locator(`[data-testid=sessions-table] tr[data-session-id="${sessionId}"]`);
  await row.waitFor({ timeout: 20_000 });
  // Terminal opens in a new tab, next to Join.
  const [page] = await Promise.all([context.waitForEvent('page'), row.locator('[data-testid=terminal-link]').click()]);
  await page.waitForURL(/#\/terminal\//);
  await page.waitForSelector('[data-testid=terminal-state][data-state=open]', { timeout: 15_000 });
  await waitForScreen(page, PROMPT, 'the prompt');
  assert.match(await page.title(), /^Terminal · .+ · GuruConnect$/);
  await page.click('[data-testid=terminal]');

  await run(page, 'echo gc-$((6*7))');
  await waitForScreen(page, /gc-42/, 'gc-42');
  await shot(page, 'terminal');

  // Ctrl+C with a selection copies it (no ^C reaches the shell); Ctrl+V pastes it.
  const line = await page.locator('[data-testid=terminal] .xterm-rows > div', { hasText: /^gc-42\s*$/ }).boundingBox();
  await page.mouse.dblclick(line.x + 12, line.y + line.height / 2);
  await page.keyboard.press('Control+C');
  await page.keyboard.type('echo pasted-');
  await page.keyboard.press('Control+V');
  await page.keyboard.press('Enter');
  await waitForScreen(page, /\npasted-gc-42/, 'pasted-gc-42');
  assert.doesNotMatch(await screenText(page), /\^C/);

  // A smaller window: fewer rows and columns for the shell.
  const big = await sttySize(page, 'big');
  const rowsBefore = await page.locator('[data-testid=terminal] .xterm-rows > div').count();
  assert.equal(big.rows, rowsBefore, `stty says ${big.rows} rows, the terminal shows ${rowsBefore}`);
  await page.setViewportSize({ width: 820, height: 460 });
  await waitFor(async () => (await page.locator('[data-testid=terminal] .xterm-rows > div').count()) !== rowsBefore, 'the terminal to refit');
  const small = await sttySize(page, 'small');
  assert.ok(small.rows < big.rows && small.cols < big.cols, `stty size ${small.rows} ${small.cols} after the resize, ${big.rows} ${big.cols} before`);
  assert.equal(small.rows, await page.locator('[data-testid=terminal] .xterm-rows > div').count());
  await page.setViewportSize({ width: 1280, height: 720 });

  // exit ends the shell, and the page says so.
  await run(page, 'exit');
  await page.waitForSelector('[data-testid=terminal-state][data-state=ended]', { timeout: 15_000 });
  const status = page.locator('[data-testid=terminal-status]');
  assert.match(await status.innerText(), /Terminal ended: the shell exited with code 0/);
  await waitForScreen(page, /\[terminal ended: the shell exited with code 0\]/, 'the dim end line');
  await shot(page, 'terminal-ended');

  // New terminal: another shell on the same connection.
  await page.click('[data-testid=terminal-new]');
  await page.waitForSelector('[data-testid=terminal-state][data-state=open]');
  await waitForScreen(page, PROMPT, 'the new prompt');
  await page.click('[data-testid=terminal]');
  await run(page, 'echo again-$((2+3))');
  await waitForScreen(page, /again-5/, 'again-5');

  // Close ends the shell and goes to the machine's page.
  await page.click('[data-testid=terminal-close]');
  await page.waitForURL(new RegExp(`#/machines/${agentId}$`));
  await page.locator('[data-testid=terminal-link]').waitFor();

  // The viewer's toolbar has a Terminal button for the administrator.
  await list.goto(`${server.url}/#/view/${sessionId}`);
  await list.locator('[data-testid=conn-state]').waitFor();
  assert.equal(await list.locator('[data-testid=open-terminal]').count(), 1);
  assertClean();
  await context.close();

  // In the dark theme.
  const dark = await openPage(browser, { colorScheme: 'dark' });
  await uiLogin(dark.page, server.url);
  await dark.page.goto(`${server.url}/#/terminal/${sessionId}`);
  await dark.page.waitForSelector('[data-testid=terminal-state][data-state=open]', { timeout: 15_000 });
  await waitForScreen(dark.page, PROMPT, 'the prompt (dark)');
  await dark.page.click('[data-testid=terminal]');
  await run(dark.page, 'ls -d / /tmp && echo dark-$((1+1))');
  await waitForScreen(dark.page, /dark-2/, 'dark-2');
  await shot(dark.page, 'terminal-dark');
  dark.assertClean();
  await dark.context.close();
});

test('a technician has no Terminal action, and the relay refuses one opened by URL', { skip, timeout: 60_000 }, async () => {
  assert.ok(sessionId, 'the first test started a session');
  const created = await apiCall(server.url, 'POST', '/api/users', admin, { username: 'tech.terry', password: 'Terry-password-42!', role: 'technician' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const { page, context, assertClean } = await openPage(browser);
  await uiLogin(page, server.url, 'tech.terry', 'Terry-password-42!');
  await page.click('a[href="#/sessions"]');
  const row = page.locator(`[data-testid=sessions-table] tr[data-session-id="${sessionId}"]`);
  await row.locator('[data-testid=join]').waitFor({ timeout: 20_000 });
  assert.equal(await row.locator('[data-testid=terminal-link]').count(), 0, 'a technician sees Terminal in the sessions list');

  await page.goto(`${server.url}/#/view/${sessionId}`);
  await page.locator('[data-testid=conn-state]').waitFor();
  assert.equal(await page.locator('[data-testid=open-terminal]').count(), 0, 'a technician sees Terminal in the viewer');

  await page.goto(`${server.url}/#/terminal/${sessionId}`);
  await page.waitForSelector('[data-testid=terminal-state][data-state=ended]', { timeout: 15_000 });
  const status = await page.locator('[data-testid=terminal-status]').innerText();
  assert.match(status, /could not be opened: .*permission/, status);
  assert.equal(await page.locator('[data-testid=terminal-new]').isVisible(), false, 'New terminal is offered to a user who may not open one');
  await shot(page, 'terminal-refused');
  assertClean();
  await context.close();
});
