// The viewer follows its managed machine to the machine's next session: after a server
// restart (the old session is ended, its agent reconnects as a new one) the same browser page
// shows the machine again, without a click. And what ends a session for good stays ended:
// End session (ENDED) and a sign-out elsewhere (REVOKED) do not reconnect, even though the
// machine is still there to reconnect to.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, HTTP_4XX, apiCall, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { FakeAgent, LEFT, RIGHT, WIDTH } from './lib/fake-agent.mjs';

let server;
let browser;
let admin;
const agents = [];

// The server is down for a moment (restart): the console's requests then fail.
const SERVER_DOWN = /ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE|WebSocket connection to .* failed/;

before(async () => {
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
});

after(async () => {
  for (const a of agents) a.close();
  await browser?.close();
  await server?.stop();
});

/** A managed machine with its own key, connected: `{ agentId, key, agent }`. */
async function machine(hostname) {
  const agentId = crypto.randomUUID();
  const key = await apiCall(server.url, 'POST', `/api/machines/${agentId}/keys`, admin, { label: hostname });
  assert.equal(key.status, 201, JSON.stringify(key.body));
  const agent = await connectAgent(key.body.agent_key, hostname);
  const sessionId = await liveSession(agentId);
  return { agentId, key: key.body.agent_key, agent, sessionId };
}

async function connectAgent(key, hostname) {
  const agent = new FakeAgent(server.url, key, { hostname });
  await agent.connect();
  agents.push(agent);
  return agent;
}

/** Waits until the machine is online with a live session other than `not`; its id. */
async function liveSession(agentId, not = null) {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const m = await apiCall(server.url, 'GET', `/api/machines/${agentId}`, admin);
    if (m.status === 200 && m.body.online && m.body.session_id && m.body.session_id !== not) return m.body.session_id;
    if (Date.now() > deadline) throw new Error(`machine ${agentId} has no new live session: ${JSON.stringify(m.body)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const frames = (page) => page.evaluate(() => Number(document.querySelector('canvas.screen')?.dataset.frames ?? 0));
const connState = (page) => page.getAttribute('[data-testid=conn-state]', 'data-state');

async function pixel(page, x, y) {
  return page.evaluate(
    ([x, y]) => Array.from(document.querySelector('canvas.screen').getContext('2d').getImageData(x, y, 1, 1).data),
    [x, y],
  );
}

/** Opens the viewer of `sessionId` and waits for its first frame. */
async function view(page, sessionId) {
  await page.goto(`${server.url}/#/view/${sessionId}`);
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 15_000 });
  await page.waitForFunction(() => Number(document.querySelector('canvas.screen')?.dataset.frames ?? 0) >= 1, null, { timeout: 15_000 });
}

/** Viewer tokens minted for `sessionId` (each reconnect mints one). */
async function mints(sessionId) {
  const r = await apiCall(server.url, 'GET', `/api/events?type=session.viewer_token_minted&limit=200`, admin);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.items.filter((e) => e.session_id === sessionId).length;
}

test('after a server restart the open viewer follows the machine to its new session', async () => {
  const { agentId, key, agent, sessionId: first } = await machine('restart-pc');
  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX, SERVER_DOWN] });
  await uiLogin(page, server.url);
  await view(page, first);
  // A mark on this very document: a reload or a navigation through the console would lose it.
  await page.evaluate(() => {
    window.__sameDocument = true;
  });
  const before = await frames(page);

  await server.restart();
  agent.close();
  // The viewer knows the session is gone and waits for the machine, without a click.
  await page.waitForSelector('[data-testid=conn-state][data-state=reconnecting]', { timeout: 15_000 });
  const old = await apiCall(server.url, 'GET', `/api/sessions/${first}`, admin);
  assert.equal(old.body.status, 'ended', 'the restart ended the old session');

  // The agent reconnects, as a real one does after a restart: a new session.
  const again = await connectAgent(key, 'restart-pc');
  const second = await liveSession(agentId, first);
  assert.notEqual(second, first);

  await page.waitForFunction((sid) => location.hash === `#/view/${sid}`, second, { timeout: 45_000 });
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 15_000 });
  await page.waitForFunction((n) => Number(document.querySelector('canvas.screen')?.dataset.frames ?? 0) > n, before, { timeout: 15_000 });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the same page, not a reload');
  assert.deepEqual(await pixel(page, 10, 10), [...LEFT, 255]);
  assert.deepEqual(await pixel(page, WIDTH - 10, 10), [...RIGHT, 255]);
  assert.equal(await page.locator('[data-testid=session-id]').innerText(), second.slice(0, 8));
  assert.match(await page.title(), /restart-pc/);
  assert.equal(await page.locator('.stage-overlay').isVisible(), false, 'nothing over the picture');
  // The new session streams to this viewer (it asked for a picture and the agent sent it).
  assert.ok(again.of('startStream').length + again.of('refreshRequest').length >= 1);
  await shot(page, '60-viewer-followed-restart');
  assertClean();
  await context.close();
});

test('End session ends the viewer for good: it does not follow the machine back', async () => {
  const { agentId, key, sessionId: first } = await machine('end-pc');
  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
  await uiLogin(page, server.url);
  await view(page, first);
  const before = await frames(page);
  await page.click('[data-testid=end-session]');
  await page.locator('dialog.modal button', { hasText: 'End session' }).click();
  await page.waitForSelector('[data-testid=conn-state][data-state=ended]', { timeout: 15_000 });
  assert.match(await page.locator('.stage-overlay').innerText(), /Session ended: ended by admin/);

  // The machine is back at once with a new session (a real agent reconnects): the viewer,
  // ended on purpose, stays ended and does not join it.
  await connectAgent(key, 'end-pc');
  const second = await liveSession(agentId, first);
  await page.waitForTimeout(5000);
  assert.equal(await connState(page), 'ended');
  assert.equal(await page.evaluate(() => location.hash), `#/view/${first}`);
  assert.equal(await frames(page), before, 'no picture after the end');
  assert.equal(await mints(second), 0, 'no viewer token for the new session');
  assert.equal(await mints(first), 1, 'no reconnect to the ended session');
  assertClean();
  await context.close();
});

test('a sign-out elsewhere ends the viewer (revoked) without reconnecting', async () => {
  const created = await apiCall(server.url, 'POST', '/api/users', admin, { username: 'tech-follow', password: 'Tech-follow-pass-1!', role: 'technician' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const { sessionId } = await machine('revoke-pc');
  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
  await uiLogin(page, server.url, 'tech-follow', 'Tech-follow-pass-1!');
  await view(page, sessionId);
  const before = await frames(page);

  // The same user signs out on another computer: their viewers everywhere are closed. This
  // browser's own sign-in stays valid, so a viewer that reconnected would get back in.
  const elsewhere = await login(server.url, 'tech-follow', 'Tech-follow-pass-1!');
  const out = await apiCall(server.url, 'POST', '/api/auth/logout', elsewhere);
  assert.ok(out.status < 300, JSON.stringify(out.body));
  await page.waitForSelector('[data-testid=conn-state][data-state=ended]', { timeout: 15_000 });
  assert.match(await page.locator('.stage-overlay').innerText(), /Session ended: signed out/);
  await page.waitForTimeout(5000);
  assert.equal(await connState(page), 'ended');
  assert.equal(await frames(page), before);
  assert.equal(await mints(sessionId), 1, 'no reconnect after the sign-out');
  // The browser's sign-in was not the one signed out: the console still works.
  const me = await page.evaluate(async () => (await fetch('/api/auth/me', { headers: { Authorization: `Bearer ${localStorage.getItem('gc.token')}` } })).status);
  assert.equal(me, 200);
  assertClean();
  await context.close();
});

test('a managed agent that reconnects supersedes its session: the viewer follows at once', async () => {
  const { agentId, key, agent, sessionId: first } = await machine('wifi-pc');
  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
  await uiLogin(page, server.url);
  await view(page, first);
  const before = await frames(page);
  // The connection drops; the session waits for the machine (offline, not ended)…
  agent.close();
  await page.waitForSelector('[data-testid=conn-state][data-state=reconnecting]', { timeout: 15_000 });
  assert.equal(await page.evaluate(() => location.hash), `#/view/${first}`);
  // …and its new connection is a new session that ends the old one (AGENT_GONE).
  await connectAgent(key, 'wifi-pc');
  const second = await liveSession(agentId, first);
  await page.waitForFunction((sid) => location.hash === `#/view/${sid}`, second, { timeout: 15_000 });
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 15_000 });
  await page.waitForFunction((n) => Number(document.querySelector('canvas.screen')?.dataset.frames ?? 0) > n, before, { timeout: 15_000 });
  assert.equal(await page.locator('[data-testid=session-id]').innerText(), second.slice(0, 8));
  assertClean();
  await context.close();
});

test('a support-code session does not follow: its agent leaving ends the viewer', async () => {
  const code = await apiCall(server.url, 'POST', '/api/codes', admin, { note: 'follow test' });
  assert.equal(code.status, 201, JSON.stringify(code.body));
  const agent = await connectAgent(code.body.code, 'customer-laptop');
  let sessionId = null;
  for (let i = 0; i < 100 && !sessionId; i++) {
    const list = await apiCall(server.url, 'GET', '/api/sessions', admin);
    sessionId = (list.body.items ?? list.body).find((s) => s.kind === 'attended' && s.status !== 'ended')?.id ?? null;
    if (!sessionId) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(sessionId, 'the attended session is listed');
  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
  await uiLogin(page, server.url);
  await page.goto(`${server.url}/#/view/${sessionId}`);
  await agent.until((a) => a.of('consentRequest').length >= 1, 'consent request');
  agent.send({ consentResponse: { granted: true } });
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 15_000 });
  agent.close();
  await page.waitForSelector('[data-testid=conn-state][data-state=ended]', { timeout: 15_000 });
  assert.match(await page.locator('.stage-overlay').innerText(), /Session ended/);
  await page.waitForTimeout(3000);
  assert.equal(await connState(page), 'ended');
  assert.equal(await page.evaluate(() => location.hash), `#/view/${sessionId}`);
  assertClean();
  await context.close();
});

// Last: it restarts the server, which disconnects every machine of the earlier tests.
test('the viewer gives up on a machine that does not come back, and can keep waiting', async () => {
  const { agentId, key, agent, sessionId: first } = await machine('gone-pc');
  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX, SERVER_DOWN] });
  await uiLogin(page, server.url);
  // Five minutes in production; a few seconds here.
  await page.evaluate(() => localStorage.setItem('gc.viewer.follow-limit-ms', '4000'));
  await view(page, first);
  await server.restart();
  agent.close();
  await page.waitForSelector('[data-testid=conn-state][data-state=ended]', { timeout: 30_000 });
  const overlay = page.locator('.stage-overlay');
  assert.match(await overlay.innerText(), /has not come back in 4 seconds/);
  await shot(page, '61-viewer-gave-up');
  // The technician keeps waiting; the machine comes back; the viewer follows it.
  await overlay.locator('button', { hasText: 'Keep waiting' }).click();
  await page.waitForSelector('[data-testid=conn-state][data-state=reconnecting]');
  await connectAgent(key, 'gone-pc');
  const second = await liveSession(agentId, first);
  await page.waitForFunction((sid) => location.hash === `#/view/${sid}`, second, { timeout: 15_000 });
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 15_000 });
  assertClean();
  await context.close();
});
