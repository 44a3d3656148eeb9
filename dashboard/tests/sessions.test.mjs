// Live sessions against a real server and scripted agents: each row names the customer
// (the support code's note) and the machine's company and site, and the filters by kind,
// company, site and watched narrow the list to exactly the matching sessions.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, apiCall, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { FakeAgent } from './lib/fake-agent.mjs';

let server;
let browser;
let admin;
const agents = [];

async function connect(credential, hostname) {
  const agent = new FakeAgent(server.url, credential, { hostname });
  await agent.connect();
  agents.push(agent);
}

before(async () => {
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  // Two managed machines with labels.
  for (const [hostname, labels] of [
    ['acme-front-desk', { company: 'Acme', site: 'Head Office' }],
    ['globex-lab', { company: 'Globex', site: 'Lab' }],
  ]) {
    const agentId = crypto.randomUUID();
    const key = await apiCall(server.url, 'POST', `/api/machines/${agentId}/keys`, admin, {});
    assert.equal(key.status, 201, JSON.stringify(key.body));
    await connect(key.body.agent_key, hostname);
    const r = await apiCall(server.url, 'PATCH', `/api/machines/${agentId}`, admin, labels);
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  // An attended session for a customer named in the code's note.
  const code = await apiCall(server.url, 'POST', '/api/codes', admin, { note: 'Mrs Jones, ticket 4711' });
  assert.equal(code.status, 201, JSON.stringify(code.body));
  await connect(code.body.code, 'jones-laptop');
});

after(async () => {
  for (const a of agents) a.close();
  await browser?.close();
  await server?.stop();
});

/** Host names in the sessions table, sorted. */
async function listed(page) {
  await page.waitForTimeout(200);
  const names = await page.locator('[data-testid=sessions-table] tbody tr td:first-child .strong').allInnerTexts();
  return names.sort();
}

test('live sessions name the customer and filter by kind, company, site and watched', async () => {
  const { page, context, assertClean } = await openPage(browser);
  await uiLogin(page, server.url);
  await page.goto(`${server.url}/#/sessions`);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=sessions-table] tbody tr').length === 3);
  const jones = page.locator('tr', { hasText: 'jones-laptop' }).locator('[data-testid=session-customer]');
  assert.match(await jones.innerText(), /Mrs Jones, ticket 4711/);
  const acme = page.locator('tr', { hasText: 'acme-front-desk' }).locator('[data-testid=session-customer]');
  assert.match(await acme.innerText(), /Acme · Head Office/);
  await shot(page, '20-live-sessions-filters');

  await page.selectOption('[data-testid=filter-kind]', 'attended');
  assert.deepEqual(await listed(page), ['jones-laptop']);
  await page.selectOption('[data-testid=filter-kind]', '');
  await page.selectOption('[data-testid=filter-company]', 'Globex');
  assert.deepEqual(await listed(page), ['globex-lab']);
  await page.selectOption('[data-testid=filter-company]', '');
  await page.selectOption('[data-testid=filter-site]', 'Head Office');
  assert.deepEqual(await listed(page), ['acme-front-desk']);
  await page.selectOption('[data-testid=filter-site]', '');
  await page.selectOption('[data-testid=filter-watched]', 'yes');
  assert.equal(await page.locator('[data-testid=sessions-table]').count(), 0, 'nobody is watching any session');
  await page.selectOption('[data-testid=filter-watched]', 'no');
  assert.deepEqual(await listed(page), ['acme-front-desk', 'globex-lab', 'jones-laptop']);
  assertClean();
  await context.close();
});
