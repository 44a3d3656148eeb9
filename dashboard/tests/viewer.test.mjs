// The in-browser viewer against a real server and a scripted agent (tests/lib/fake-agent):
// frames drawn pixel-exact, input arriving as set-1 scancodes, chat both ways, display
// switching, Ctrl+Alt+Del, a view-only user unable to control, and the session end.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, apiCall, joinInNewTab, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { FakeAgent, HEIGHT, LEFT, RIGHT, WIDTH, pb } from './lib/fake-agent.mjs';

let server;
let browser;
let agent;
let admin;

before(async () => {
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  const agentId = crypto.randomUUID();
  const key = await apiCall(server.url, 'POST', `/api/machines/${agentId}/keys`, admin, { hostname: 'fake-pc', label: 'browser test' });
  assert.equal(key.status, 201, JSON.stringify(key.body));
  agent = new FakeAgent(server.url, key.body.agent_key, { hostname: 'reception-pc' });
  await agent.connect();
  for (let i = 0; i < 50; i++) {
    const m = await apiCall(server.url, 'GET', '/api/machines', admin);
    if (m.body.items.some((x) => x.online)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  agent?.close();
  await browser?.close();
  await server?.stop();
});

async function pixel(page, x, y) {
  return page.evaluate(
    ([x, y]) => {
      const c = document.querySelector('canvas.screen');
      return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data);
    },
    [x, y],
  );
}

test('a controlling technician sees the screen and drives it', async () => {
  const { page: list, context, assertClean } = await openPage(browser);
  await uiLogin(list, server.url);
  const row = list.locator('tr', { hasText: 'reception-pc' });
  await row.waitFor();
  assert.match(await row.innerText(), /online/);
  await shot(list, '12-machines-online');
  const page = await joinInNewTab(context, row.locator('a', { hasText: 'Join' }));
  await page.waitForFunction(() => Number(document.querySelector('canvas.screen')?.dataset.frames ?? 0) >= 1);
  await page.waitForSelector('[data-testid=conn-state][data-state=active]');

  // Pixel-exact lossless frame, two rects in order, BGRA swizzled, alpha forced opaque.
  assert.deepEqual(await page.evaluate(() => [document.querySelector('canvas.screen').width, document.querySelector('canvas.screen').height]), [WIDTH, HEIGHT]);
  assert.deepEqual(await pixel(page, 10, 10), [...LEFT, 255]);
  assert.deepEqual(await pixel(page, WIDTH - 10, HEIGHT - 10), [...RIGHT, 255]);
  assert.equal(await page.locator('[data-testid=view-only]').isVisible(), false);
  // No statistics over the picture until asked for; no focus ring drawn over it.
  assert.equal(await page.locator('[aria-label="Connection statistics"]').isVisible(), false);
  await page.focus('canvas.screen');
  const ring = await page.evaluate(() => {
    const st = getComputedStyle(document.querySelector('canvas.screen'));
    return [st.outlineStyle, st.boxShadow];
  });
  assert.deepEqual(ring, ['none', 'none']);
  // Leave (this viewer) and End session (everyone) are two buttons.
  assert.equal(await page.locator('button', { hasText: /^Leave$/ }).isVisible(), true);
  assert.equal(await page.locator('[data-testid=end-session]').isVisible(), true);

  // Viewer hello advertised the lossless codec.
  // (The relay consumes ViewerHello; the agent sees the resulting StartStream.)
  assert.ok(agent.of('startStream').length >= 1);

  // Mouse: click a quarter of the way in; coordinates are scaled to frame pixels.
  const box = await page.locator('canvas.screen').boundingBox();
  await page.mouse.click(box.x + box.width / 4, box.y + box.height / 2);
  await agent.until((a) => a.of('mouseEvent').some((m) => m.action === pb.MouseAction.MOUSE_ACTION_UP), 'mouse up');
  const down = agent.of('mouseEvent').find((m) => m.action === pb.MouseAction.MOUSE_ACTION_DOWN);
  assert.equal(down.button, pb.MouseButton.MOUSE_BUTTON_LEFT);
  assert.ok(Math.abs(down.x - WIDTH / 4) <= 2, `x ${down.x}`);
  assert.ok(Math.abs(down.y - HEIGHT / 2) <= 2, `y ${down.y}`);

  // Keyboard: 'a' is scancode 0x1e; ArrowLeft is extended 0x4b.
  await page.keyboard.press('a');
  await page.keyboard.press('ArrowLeft');
  await agent.until((a) => a.of('keyEvent').filter((k) => !k.down).length >= 2, 'key ups');
  const keys = agent.of('keyEvent').map((k) => [k.scancode, k.extended, k.down]);
  assert.deepEqual(keys, [
    [0x1e, false, true],
    [0x1e, false, false],
    [0x4b, true, true],
    [0x4b, true, false],
  ]);
  // Each key carries the character it produced (none for the arrow) and the mode.
  assert.deepEqual(agent.of('keyEvent').map((k) => [k.text, k.mode]), [
    ['a', pb.KeyInputMode.KEY_INPUT_MODE_BY_CHARACTER],
    ['a', pb.KeyInputMode.KEY_INPUT_MODE_BY_CHARACTER],
    ['', pb.KeyInputMode.KEY_INPUT_MODE_BY_CHARACTER],
    ['', pb.KeyInputMode.KEY_INPUT_MODE_BY_CHARACTER],
  ]);

  // Ctrl+Alt+Del button.
  await page.click('button:has-text("Ctrl+Alt+Del")');
  await agent.until((a) => a.of('specialKey').length === 1, 'special key');
  assert.equal(agent.of('specialKey')[0].kind, pb.SpecialKeyKind.SPECIAL_KEY_CTRL_ALT_DEL);
  // The keys menu: Alt+F4 as a special key.
  await page.selectOption('[data-testid=keys-menu]', { label: 'Alt+F4' });
  await agent.until((a) => a.of('specialKey').length === 2, 'Alt+F4');
  assert.equal(agent.of('specialKey')[1].kind, pb.SpecialKeyKind.SPECIAL_KEY_ALT_F4);

  // Display switcher from the DisplayList.
  await page.selectOption('select[aria-label=Display]', '1');
  await agent.until((a) => a.of('switchDisplay').length === 1, 'switch display');
  assert.equal(agent.of('switchDisplay')[0].displayId, 1);

  // Chat both ways.
  await page.click('button:has-text("Chat")');
  await page.fill('input[aria-label="Chat message"]', 'Hello from support');
  await page.keyboard.press('Enter');
  await agent.until((a) => a.of('chat').length === 1, 'chat');
  assert.equal(agent.of('chat')[0].text, 'Hello from support');
  agent.send({ chat: { from: 'Mrs. Jones', text: 'Hi, thanks!', sentAtMs: Date.now() } });
  await page.locator('[data-testid=chat-log]', { hasText: 'Hi, thanks!' }).waitFor();

  // Clipboard both ways.
  await page.click('button:has-text("Clipboard")');
  await page.fill('textarea[aria-label="Text to send"]', 'copied text');
  await page.click('button:has-text("Send to remote")');
  await agent.until((a) => a.of('clipboard').length === 1, 'clipboard');
  assert.equal(agent.of('clipboard')[0].text, 'copied text');
  agent.send({ clipboard: { text: 'remote text' } });
  await page.waitForFunction(() => document.querySelector('[data-testid=remote-clipboard]').value === 'remote text');
  // The same text typed as characters (layout-independent), then an agent's notice shown.
  await page.fill('textarea[aria-label="Text to send"]', 'Grüße, 1+1=2');
  await page.click('button:has-text("Type on remote")');
  await agent.until((a) => a.of('typeText').length === 1, 'type text');
  assert.equal(agent.of('typeText')[0].text, 'Grüße, 1+1=2');
  agent.send({ agentNotice: { level: 1, text: 'Ctrl+Alt+Del was not sent. SendSAS is not available' } });
  await page.locator('.toast', { hasText: 'Ctrl+Alt+Del was not sent' }).waitFor();
  await page.click('button:has-text("Chat")');

  // Stats overlay, once switched on, shows a measured round trip.
  await page.click('button:has-text("Stats")');
  assert.equal(await page.locator('[aria-label="Connection statistics"]').isVisible(), true);
  await page.waitForFunction(() => /RTT \d+ ms/.test(document.querySelector('[data-testid=stats]')?.textContent ?? ''), null, { timeout: 8000 });
  // Drawn frames are acknowledged to the agent, and the agent's stream mode shows in the
  // toolbar, in full on hover and in the statistics (issue 16: adaptive quality).
  await agent.until((a) => a.of('frameAck').some((ack) => Number(ack.sequence) > 0), 'a frame acknowledgement');
  agent.send({ streamMode: { codec: pb.Codec.CODEC_H264, adaptive: true, fps: 12, bitrateKbps: 800, bandwidthKbps: 1000, rttMs: 150, reason: 'link limited' } });
  const mode = page.locator('[data-testid=stream-mode]');
  await page.waitForFunction(() => document.querySelector('[data-testid=stream-mode]')?.textContent === 'H.264 · 12 fps · ≤ 800 kbit/s');
  assert.equal(await mode.isVisible(), true);
  assert.match(await mode.getAttribute('title'), /adapts to the link · link 1\.0 Mbit\/s · round trip 150 ms \(link limited\)/);
  await page.waitForFunction(() => /Mode: H\.264/.test(document.querySelector('[data-testid=stats]')?.textContent ?? ''), null, { timeout: 5000 });
  // Every control of the toolbar is on screen at 1280 px: none cut off or scrolled away.
  const offScreen = await page.$$eval('[role=toolbar] > *', (els) =>
    els
      .filter((e) => {
        const r = e.getBoundingClientRect();
        return r.width > 0 && (r.left < 0 || r.right > window.innerWidth);
      })
      .map((e) => e.textContent?.trim() || e.getAttribute('aria-label')),
  );
  assert.deepEqual(offScreen, []);
  for (const name of ['Leave', 'End session']) assert.equal(await page.locator('[role=toolbar] button', { hasText: name }).isVisible(), true, name);
  await shot(page, '13-viewer');

  // The live session lists this viewer.
  const other = await openPage(browser);
  await uiLogin(other.page, server.url);
  await other.page.click('a[href="#/sessions"]');
  const live = other.page.locator('[data-testid=sessions-table] tr', { hasText: 'reception-pc' });
  await live.waitFor();
  assert.match(await live.innerText(), /admin/);
  await shot(other.page, '14-sessions-live');
  other.assertClean();
  await other.context.close();

  assertClean();
  await context.close();
});

test('a view-only user sees VIEW ONLY and cannot control', async () => {
  const created = await apiCall(server.url, 'POST', '/api/users', admin, { username: 'watcher', password: 'Watcher-pass-1!', role: 'viewer' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const { page: list, context, assertClean } = await openPage(browser);
  await uiLogin(list, server.url, 'watcher', 'Watcher-pass-1!');
  const row = list.locator('tr', { hasText: 'reception-pc' });
  const page = await joinInNewTab(context, row.locator('a', { hasText: 'Join' }));
  await page.waitForFunction(() => Number(document.querySelector('canvas.screen')?.dataset.frames ?? 0) >= 1);
  await page.locator('[data-testid=view-only]').waitFor();
  assert.equal(await page.locator('button:has-text("Ctrl+Alt+Del")').isVisible(), false);
  assert.equal(await page.locator('[data-testid=end-session]').isVisible(), false, 'a watcher cannot end the session');
  const before = agent.received.filter((e) => ['mouseEvent', 'keyEvent', 'specialKey', 'clipboard', 'typeText'].includes(e.payload)).length;
  const box = await page.locator('canvas.screen').boundingBox();
  await page.mouse.click(box.x + 20, box.y + 20);
  await page.keyboard.press('b');
  await page.waitForTimeout(800);
  const afterCount = agent.received.filter((e) => ['mouseEvent', 'keyEvent', 'specialKey', 'clipboard', 'typeText'].includes(e.payload)).length;
  assert.equal(afterCount, before, 'a view-only viewer must send no input');
  assert.deepEqual(await pixel(page, 10, 10), [...LEFT, 255]);
  await shot(page, '15-viewer-view-only');
  assertClean();
  await context.close();
});

test('the viewer waits while the managed machine is offline and shows the end when an admin ends it', async () => {
  const { page: list, context, assertClean } = await openPage(browser);
  await uiLogin(list, server.url);
  const page = await joinInNewTab(context, list.locator('tr', { hasText: 'reception-pc' }).locator('a', { hasText: 'Join' }));
  await page.waitForSelector('[data-testid=conn-state][data-state=active]');
  const sessions = await apiCall(server.url, 'GET', '/api/sessions', admin);
  const session = sessions.body.find((s) => s.hostname === 'reception-pc') ?? sessions.body[0];
  assert.ok(session?.id, JSON.stringify(sessions.body));
  // A managed session outlives its agent's connection: the viewer waits for it.
  agent.close();
  await page.waitForSelector('[data-testid=conn-state][data-state=reconnecting]', { timeout: 15_000 });
  assert.match(await page.locator('.stage-overlay').innerText(), /offline/);
  // Ending it for good reaches the viewer.
  const ended = await apiCall(server.url, 'DELETE', `/api/sessions/${session.id}`, admin);
  assert.ok(ended.status < 300, JSON.stringify(ended.body));
  await page.waitForSelector('[data-testid=conn-state][data-state=ended]', { timeout: 15_000 });
  assert.match(await page.locator('.stage-overlay').innerText(), /Session ended/);
  assertClean();
  await context.close();
});

test('End session in the viewer ends it for everyone', async () => {
  const agentId = crypto.randomUUID();
  const key = await apiCall(server.url, 'POST', `/api/machines/${agentId}/keys`, admin, { label: 'end test' });
  assert.equal(key.status, 201, JSON.stringify(key.body));
  const second = new FakeAgent(server.url, key.body.agent_key, { hostname: 'lab-pc' });
  await second.connect();
  const { page: list, context, assertClean } = await openPage(browser);
  await uiLogin(list, server.url);
  const row = list.locator('tr', { hasText: 'lab-pc' });
  await row.locator('a', { hasText: 'Join' }).waitFor();
  const page = await joinInNewTab(context, row.locator('a', { hasText: 'Join' }));
  await page.waitForSelector('[data-testid=conn-state][data-state=active]');
  await page.click('[data-testid=end-session]');
  await page.locator('dialog.modal button', { hasText: 'End session' }).click();
  await page.waitForSelector('[data-testid=conn-state][data-state=ended]', { timeout: 15_000 });
  assert.match(await page.locator('.stage-overlay').innerText(), /Session ended: ended by admin/);
  const events = await apiCall(server.url, 'GET', '/api/events?type=session.ended_by_user', admin);
  assert.equal(events.body.items.length, 1, JSON.stringify(events.body));
  second.close();
  assertClean();
  await context.close();
});
