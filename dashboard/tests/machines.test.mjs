// The technician's side of the console against a real server and scripted agents: the
// machine page (inventory, labels that persist, sessions, keys, audit trail, Remove), the
// server's field-scoped search, the OS column, Join in a new tab titled with the host
// name, and one sign-in shared by every tab of the browser.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, HTTP_4XX, apiCall, joinInNewTab, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { FakeAgent } from './lib/fake-agent.mjs';

let server;
let browser;
let admin;
const agents = [];
/** agent id of each scripted machine, by host name. */
const ids = {};

const INVENTORY = {
  cpuModel: 'Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz',
  cpuCount: 6,
  ramBytes: 16 * 1024 ** 3,
  serial: 'SN-4711',
  interfaces: [{ name: 'eth0', mac: '52:54:00:12:34:56', addresses: ['192.168.1.20', 'fe80::5054:ff:fe12:3456'] }],
  loggedOnUser: 'mjones',
  idleSeconds: 300,
  timeZone: 'Europe/Berlin',
  uptimeSeconds: 3 * 86400 + 4 * 3600,
};

/** A managed machine: a key, a scripted agent that connects, and optional labels. */
async function machine(hostname, labels, inventory) {
  const agentId = crypto.randomUUID();
  const key = await apiCall(server.url, 'POST', `/api/machines/${agentId}/keys`, admin, { label: 'browser test' });
  assert.equal(key.status, 201, JSON.stringify(key.body));
  // The real Linux agent says os "linux" and the distribution's name as the version.
  const agent = new FakeAgent(server.url, key.body.agent_key, { hostname, os: 'linux', osVersion: 'Debian GNU/Linux 12' });
  await agent.connect();
  agents.push(agent);
  if (inventory) agent.sendStatus(inventory);
  for (let i = 0; i < 100; i++) {
    const m = await apiCall(server.url, 'GET', `/api/machines/${agentId}`, admin);
    if (m.body.online && (!inventory || m.body.inventory?.logged_on_user)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (labels) {
    const r = await apiCall(server.url, 'PATCH', `/api/machines/${agentId}`, admin, labels);
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  ids[hostname] = agentId;
  return agentId;
}

before(async () => {
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  await machine('front-desk-pc', { company: 'Acme', site: 'Head Office', tags: ['front-desk'] }, INVENTORY);
  await machine('warehouse-pc', { company: 'Acme', site: 'Warehouse', tags: ['scanner'] });
});

after(async () => {
  for (const a of agents) a.close();
  await browser?.close();
  await server?.stop();
});

/** The host names in the Machines table, once it shows the answer to `q`. */
async function hostsFor(page, q) {
  await page.waitForFunction((want) => document.querySelector('[data-testid=machine-search]')?.closest('.content')?.querySelector('[data-query]')?.dataset.query === want, q.trim());
  return page.locator('[data-testid=machines-table] [data-testid=machine-link]').allInnerTexts();
}

describe('machine page', () => {
  test('shows the inventory and labels; an edited label persists', async () => {
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    await page.locator('[data-testid=machine-link]', { hasText: 'front-desk-pc' }).click();
    await page.waitForURL(new RegExp(`#/machines/${ids['front-desk-pc']}$`));
    await page.locator('[data-testid=inventory]').waitFor();
    assert.equal(await page.locator('.page-head h1').innerText(), 'front-desk-pc');
    const text = async (id) => (await page.locator(`[data-testid=${id}]`).innerText()).trim();
    assert.equal(await text('inv-os'), 'Debian GNU/Linux 12');
    assert.equal(await text('inv-cpu'), 'Intel(R) Core(TM) i5-8500 CPU @ 3.00GHz × 6');
    assert.equal(await text('inv-ram'), '16.00 GiB');
    assert.equal(await text('inv-user'), 'mjones');
    assert.equal(await text('inv-idle'), '5 min');
    assert.equal(await text('inv-uptime'), '3 d 4 h');
    assert.equal(await text('inv-agent'), '0.0.0-test');
    const nics = await text('inv-interfaces');
    assert.match(nics, /eth0/);
    assert.match(nics, /52:54:00:12:34:56/);
    assert.match(nics, /192\.168\.1\.20/);
    assert.match(await text('machine-status'), /online/);
    // Labels as the server has them.
    assert.equal(await page.inputValue('#label-site'), 'Head Office');
    assert.equal(await page.inputValue('#label-company'), 'Acme');
    assert.equal(await page.inputValue('#label-tags'), 'front-desk');
    // Its live session, its key and its audit trail.
    await page.locator('[data-testid=machine-sessions] tbody tr').first().waitFor();
    assert.match(await page.locator('[data-testid=machine-sessions]').innerText(), /managed/);
    await page.locator('[data-testid=keys-table] tbody tr').first().waitFor();
    assert.equal(await page.locator('[data-testid=keys-table] tbody tr').count(), 1);
    await page.locator('[data-testid=machine-events]').waitFor();
    assert.match(await page.locator('[data-testid=machine-events]').innerText(), /key\.issued/);

    // Edit: a department, one more tag; saved, and still there after a reload.
    await page.fill('#label-department', 'Reception');
    await page.fill('#label-tags', 'front-desk, vip');
    await page.fill('#label-notes', 'Printer on the left.\nAsk for Dana (ext. 42).');
    await page.click('[data-testid=save-labels]');
    await page.locator('.toast', { hasText: 'Labels and notes saved' }).waitFor();
    await page.reload();
    await page.locator('[data-testid=inventory]').waitFor();
    assert.equal(await page.inputValue('#label-department'), 'Reception');
    assert.equal(await page.inputValue('#label-tags'), 'front-desk, vip');
    assert.equal(await page.inputValue('#label-site'), 'Head Office');
    const stored = await apiCall(server.url, 'GET', `/api/machines/${ids['front-desk-pc']}`, admin);
    assert.equal(stored.body.department, 'Reception');
    assert.deepEqual(stored.body.tags, ['front-desk', 'vip']);
    assert.equal(stored.body.notes, 'Printer on the left.\nAsk for Dana (ext. 42).');
    assert.equal(await page.inputValue('#label-notes'), 'Printer on the left.\nAsk for Dana (ext. 42).');
    await page.locator('[data-testid=machine-events]', { hasText: 'machine.labels_changed' }).waitFor();
    // Tall enough to show sessions, keys and the audit trail too.
    await page.setViewportSize({ width: 1280, height: 1450 });
    await page.waitForTimeout(300);
    await shot(page, '18-machine-page');
    assertClean();
    await context.close();
  });

  test('a technician sees the machine but no admin actions', async () => {
    const created = await apiCall(server.url, 'POST', '/api/users', admin, { username: 'tech.tom', password: 'Tom-password-42!', role: 'technician' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url, 'tech.tom', 'Tom-password-42!');
    await page.goto(`${server.url}/#/machines/${ids['warehouse-pc']}`);
    await page.locator('[data-testid=inventory]').waitFor();
    await page.locator('[data-testid=machine-sessions] tbody tr').first().waitFor();
    assert.match(await page.locator('[data-testid=labels]').innerText(), /Warehouse/);
    assert.equal(await page.locator('[data-testid=machine-notes]').innerText(), 'No notes.');
    for (const admin of ['#label-site', '[data-testid=save-labels]', '[data-testid=remove]', '[data-testid=approve]', '[data-testid=machine-keys]', '[data-testid=machine-events]']) {
      assert.equal(await page.locator(admin).count(), 0, `${admin} is shown to a technician`);
    }
    assert.equal(await page.locator('[data-testid=join]').count(), 1);
    assertClean();
    await context.close();
  });

  test('a pending machine says why, and an admin approves it', async () => {
    const site = await apiCall(server.url, 'POST', '/api/sites', admin, { name: 'Branch', code: 'BRANCH' });
    assert.equal(site.status, 201, JSON.stringify(site.body));
    const enroll = (hostname) =>
      apiCall(server.url, 'POST', '/api/enroll', null, {
        site_code: 'BRANCH', enrollment_key: site.body.enrollment_key, machine_uid: 'uid-branch-1', hostname,
        os: 'linux', os_version: 'Debian GNU/Linux 12', agent_version: '0.0.0-test', labels: {},
      });
    assert.equal((await enroll('branch-pc')).body.status, 'active');
    // The same hardware id from another host name is quarantined.
    const clone = await enroll('branch-clone');
    assert.equal(clone.body.status, 'pending', JSON.stringify(clone.body));
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    await page.goto(`${server.url}/#/machines/${clone.body.agent_id}`);
    await page.locator('[data-testid=machine-status]', { hasText: 'pending approval' }).waitFor();
    assert.match(await page.locator('.alert-warn').innerText(), /collides with branch-pc/);
    await page.locator('[data-testid=approve]').click();
    await page.locator('dialog.modal button', { hasText: 'Approve' }).click();
    await page.locator('[data-testid=machine-status]', { hasText: 'offline' }).waitFor();
    assert.equal(await page.locator('[data-testid=approve]').count(), 0);
    assert.equal((await apiCall(server.url, 'GET', `/api/machines/${clone.body.agent_id}`, admin)).body.status, 'active');
    assertClean();
    await context.close();
  });

  test('Remove asks first, then the machine is gone', async () => {
    const agentId = crypto.randomUUID();
    const key = await apiCall(server.url, 'POST', `/api/machines/${agentId}/keys`, admin, { hostname: 'old-laptop' });
    assert.equal(key.status, 201);
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    await page.goto(`${server.url}/#/machines/${agentId}`);
    await page.locator('[data-testid=remove]').click();
    await page.locator('dialog.modal button', { hasText: 'Cancel' }).click();
    assert.equal((await apiCall(server.url, 'GET', `/api/machines/${agentId}`, admin)).status, 200);
    await page.locator('[data-testid=remove]').click();
    await page.locator('dialog.modal button', { hasText: 'Remove machine' }).click();
    await page.waitForURL(/#\/machines$/);
    assert.equal((await apiCall(server.url, 'GET', `/api/machines/${agentId}`, admin)).status, 404);
    assertClean();
    await context.close();
  });
});

describe('machines list', () => {
  test('search uses the server’s field-scoped syntax; a refused query shows the server’s message', async () => {
    const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    const everything = await hostsFor(page, '');
    assert.ok(everything.includes('front-desk-pc') && everything.includes('warehouse-pc'), `${everything}`);
    const queries = [];
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (u.pathname === '/api/machines' && u.searchParams.has('q')) queries.push(u.searchParams.get('q'));
    });
    const search = page.locator('[data-testid=machine-search]');
    // Typed key by key: one request after the pause, not one per key.
    await search.pressSequentially('site:"Head Office" tag:front-desk', { delay: 20 });
    assert.deepEqual(await hostsFor(page, 'site:"Head Office" tag:front-desk'), ['front-desk-pc']);
    // Sent to the server once typing paused: no half-typed query went out.
    assert.ok(queries.length >= 1, 'the search went to the server');
    assert.deepEqual([...new Set(queries)], ['site:"Head Office" tag:front-desk'], 'the search is debounced');
    await search.fill('site:"Head Office" tag:scanner');
    assert.deepEqual(await hostsFor(page, 'site:"Head Office" tag:scanner'), []);
    await page.locator('[data-testid=no-match]').waitFor();
    await search.fill('site:warehouse');
    assert.deepEqual(await hostsFor(page, 'site:warehouse'), ['warehouse-pc']);
    await shot(page, '19-machines-search');
    // The server refuses an over-long query: its message is shown.
    await search.fill('x'.repeat(501));
    await page.locator('[data-testid=search-error]').waitFor();
    assert.match(await page.locator('[data-testid=search-error]').innerText(), /q must be at most 500 characters/);
    await search.fill('');
    assert.equal((await hostsFor(page, '')).length, everything.length);
    assertClean();
    await context.close();
  });

  test('the OS column names the distribution without a leading "linux"', async () => {
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    const os = page.locator(`tr[data-agent-id="${ids['warehouse-pc']}"] [data-testid=os]`);
    await os.waitFor();
    assert.equal((await os.innerText()).trim(), 'Debian GNU/Linux 12');
    assertClean();
    await context.close();
  });

  test('Join opens the viewer in a new tab titled with the host name', async () => {
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    const row = page.locator(`tr[data-agent-id="${ids['front-desk-pc']}"]`);
    const viewer = await joinInNewTab(context, row.locator('a', { hasText: 'Join' }));
    // The console tab stays where it was.
    assert.match(page.url(), /#\/machines$/);
    await viewer.waitForSelector('[data-testid=conn-state][data-state=active]');
    await viewer.waitForFunction(() => document.title.includes('front-desk-pc'));
    assert.match(await viewer.title(), /front-desk-pc/);
    await viewer.close();
    assertClean();
    await context.close();
  });
});

describe('one sign-in per browser', () => {
  test('a second tab is signed in, and a sign-out in one tab signs out the other', async () => {
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    const second = await context.newPage();
    await second.goto(`${server.url}/#/sessions`);
    await second.waitForFunction(() => document.querySelector('.page-head h1')?.textContent === 'Live sessions');
    assert.equal(await second.locator('[data-testid=current-user]').innerText(), 'admin');
    await page.click('[data-testid=sign-out]');
    await page.waitForSelector('[data-testid=login-flash]');
    await second.waitForSelector('[data-testid=login-flash]');
    assert.match(await second.locator('[data-testid=login-flash]').innerText(), /signed out in another tab/);
    assert.match(second.url(), /#\/login$/);
    assertClean();
    await context.close();
  });
});
