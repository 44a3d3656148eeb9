// End to end with the real agent under Xvfb: support code → agent → consent (clicked with
// xdotool) → the browser viewer shows the X screen (#3366cc root), typing and mouse
// arrive on the X server, and a view-only user cannot control. With a German layout set on
// the X server (setxkbmap de), text typed in the viewer arrives exactly as typed by character,
// and with y and z swapped by position.
// Skipped when target/debug/guruconnect-agent, Xvfb, xdotool, xev, xsetroot or setxkbmap is
// missing.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { ADMIN_PASSWORD, apiCall, joinActiveSession, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { allowConsent, skipUnless, sleep, startAgent, startXvfb, waitFor } from './lib/x11-agent.mjs';

const skip = skipUnless(['Xvfb', 'xdotool', 'xev', 'xsetroot', 'xdpyinfo', 'setxkbmap']);

let server;
let browser;
let admin;
let xs;
let agent;
let xev;
let xevOut = '';
const x = (cmd, args) => xs.x(cmd, args);

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  xs = await startXvfb();
  x('xsetroot', ['-solid', '#3366cc']);
  xev = spawn('xev', ['-root', '-event', 'keyboard'], { env: xs.env });
  xev.stdout.on('data', (d) => (xevOut += d));
});

after(async () => {
  agent?.proc.kill('SIGTERM');
  xev?.kill('SIGTERM');
  xs?.stop();
  await browser?.close();
  await server?.stop();
});

test('the real agent streams an X screen and takes input; view-only cannot', { skip, timeout: 120_000 }, async () => {
  const code = await apiCall(server.url, 'POST', '/api/codes', admin, { note: 'e2e' });
  assert.equal(code.status, 201);
  agent = startAgent(xs, server.url, code.body.code);

  // Consent: the prompt window appears; click Allow.
  await allowConsent(xs, agent);

  const { page: console_, context, assertClean } = await openPage(browser);
  await uiLogin(console_, server.url);
  if (process.env.GC_LOSSLESS) await console_.evaluate(() => localStorage.setItem('gc.viewer.lossless', '1'));
  // Join opens the viewer in a new tab.
  const page = await joinActiveSession(context, console_);
  await page.waitForFunction(() => document.querySelector('canvas.screen').width === 1024, null, { timeout: 10_000 });
  await sleep(1000);
  const px = await page.evaluate(() => {
    const c = document.querySelector('canvas.screen');
    const g = c.getContext('2d');
    return [Array.from(g.getImageData(5, 5, 1, 1).data), Array.from(g.getImageData(c.width - 5, c.height - 5, 1, 1).data)];
  });
  // GC_E2E_SKIP_PIXELS=1 runs the input checks even where the capture is wrong.
  if (!process.env.GC_E2E_SKIP_PIXELS) for (const p of px) {
    for (const [i, want] of [0x33, 0x66, 0xcc].entries()) assert.ok(Math.abs(p[i] - want) <= 8, `pixel ${p} is not #3366cc`);
  }
  await shot(page, '16-viewer-real-agent');

  // Mouse: a move to frame pixel (200, 150) moves the X pointer there.
  const box = await page.locator('canvas.screen').boundingBox();
  const sx = box.width / 1024;
  const sy = box.height / 768;
  await page.mouse.move(box.x + 200 * sx + sx / 2, box.y + 150 * sy + sy / 2);
  await page.mouse.click(box.x + 200 * sx + sx / 2, box.y + 150 * sy + sy / 2);
  await waitFor(() => /x:(19[89]|20[012]) y:(14[89]|15[012])/.test(x('xdotool', ['getmouselocation'])), 'the X pointer at 200,150');

  // Keyboard: 'a' arrives as keysym a.
  await page.keyboard.press('a');
  await waitFor(() => /keysym 0x61, a\)/.test(xevOut), `KeyPress a in xev (got ${xevOut.slice(-300)})`);
  assertClean();

  // A view-only user: VIEW ONLY, and neither mouse nor keys reach X.
  const created = await apiCall(server.url, 'POST', '/api/users', admin, { username: 'e2e.viewer', password: 'Viewer-pass-1!', role: 'viewer' });
  assert.equal(created.status, 201);
  const v = await openPage(browser);
  await uiLogin(v.page, server.url, 'e2e.viewer', 'Viewer-pass-1!');
  v.page = await joinActiveSession(v.context, v.page);
  await v.page.locator('[data-testid=view-only]').waitFor();
  const before = x('xdotool', ['getmouselocation']);
  const vbox = await v.page.locator('canvas.screen').boundingBox();
  await v.page.mouse.click(vbox.x + vbox.width * 0.8, vbox.y + vbox.height * 0.8);
  await v.page.keyboard.press('b');
  await sleep(1500);
  assert.equal(x('xdotool', ['getmouselocation']), before);
  assert.ok(!/keysym 0x62, b\)/.test(xevOut), 'a view-only key reached X');
  await shot(v.page, '17-viewer-real-agent-view-only');
  v.assertClean();
  await v.context.close();
  await context.close();
});

/** The characters xev decoded from key presses since `from` (its XLookupString lines). */
function typedSince(from) {
  let text = '';
  for (const block of xevOut.slice(from).split(/\n\s*\n/)) {
    if (!block.trimStart().startsWith('KeyPress event')) continue;
    const m = /XLookupString gives 1 bytes: \([0-9a-f]+\) "([^"]|")"/.exec(block);
    if (m) text += m[1];
  }
  return text;
}

test('typing reaches a German-layout machine as the characters typed, or by position when chosen', { skip, timeout: 120_000 }, async () => {
  assert.ok(agent, 'the first test started the agent');
  x('setxkbmap', ['-layout', 'de']);
  const { page: console_, context, assertClean } = await openPage(browser);
  await uiLogin(console_, server.url);
  const page = await joinActiveSession(context, console_);
  await page.locator('[data-testid=key-mode]', { hasText: 'by character' }).waitFor();
  await page.locator('canvas.screen').focus();

  // By character (the default): a US-layout browser's keys arrive as the characters meant,
  // though German y/z swap and ?, /, @, +, = sit elsewhere or behind AltGr.
  const sentence = 'Hello, World! yz ?/@ 1+1=2';
  let from = xevOut.length;
  await page.keyboard.type(sentence);
  await waitFor(() => typedSince(from) === sentence, `"${sentence}" in xev (got "${typedSince(from)}")`);

  // By position: the remote layout decides, so US y and z land on German z and y.
  await page.click('[data-testid=key-mode]');
  await page.locator('[data-testid=key-mode]', { hasText: 'by position' }).waitFor();
  await page.locator('canvas.screen').focus();
  from = xevOut.length;
  await page.keyboard.type('yz');
  await waitFor(() => typedSince(from) === 'zy', `"zy" in xev (got "${typedSince(from)}")`);
  await shot(page, '18-viewer-key-mode');

  // The system keys menu sends Alt+F4 as a special key (the agent presses Alt and F4).
  from = xevOut.length;
  await page.selectOption('[data-testid=keys-menu]', { label: 'Alt+F4' });
  await waitFor(() => /keysym 0xffc1, F4\)/.test(xevOut.slice(from)), `F4 in xev (got ${xevOut.slice(from, from + 600)})`);
  assertClean();
  x('setxkbmap', ['-layout', 'us']);
  await context.close();
});
