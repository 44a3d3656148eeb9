// The customer's End session button (issue 13), end to end with the real server and the
// real agent under Xvfb: a technician watches an attended session in the browser viewer,
// the person at the machine clicks End session in the agent's session indicator (with
// xdotool), and the session ends for everyone: the viewer says the person at the machine
// ended it, the agent exits, and the audit log has session.ended_by_customer.
// Skipped when target/debug/guruconnect-agent, Xvfb, xdotool, xdpyinfo or xprop is missing.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, apiCall, joinActiveSession, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { END, INDICATOR_TITLE, allowConsent, clickIn, findWindow, skipUnless, sleep, startAgent, startXvfb, waitFor } from './lib/x11-agent.mjs';

const skip = skipUnless(['Xvfb', 'xdotool', 'xdpyinfo', 'xprop']);

let server;
let browser;
let admin;
let xs;
let agent;

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  xs = await startXvfb({ base: 300 });
});

after(async () => {
  agent?.proc.kill('SIGTERM');
  xs?.stop();
  await browser?.close();
  await server?.stop();
});

/** The indicator's text as the person sees it (its _GURUCONNECT_TEXT property). */
function indicatorText(wid) {
  try {
    return xs.x('xprop', ['-id', wid, '_GURUCONNECT_TEXT']);
  } catch {
    return '';
  }
}

test("the customer's End session button ends the session for everyone", { skip, timeout: 120_000 }, async () => {
  const code = await apiCall(server.url, 'POST', '/api/codes', admin, { note: 'customer end' });
  assert.equal(code.status, 201, JSON.stringify(code.body));
  agent = startAgent(xs, server.url, code.body.code);
  await allowConsent(xs, agent);

  // The technician joins the attended session from the sessions list.
  const { page: list, context, assertClean } = await openPage(browser);
  await uiLogin(list, server.url);
  const page = await joinActiveSession(context, list);
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 10_000 });
  const sessionId = decodeURIComponent(new URL(page.url()).hash.replace(/^#\/view\//, '').split(/[/?]/)[0]);

  // The indicator is on the customer's screen and names the technician.
  const wid = await findWindow(xs, INDICATOR_TITLE, () => `the session indicator (agent log: ${agent.log()})`);
  await waitFor(() => /admin is controlling/.test(indicatorText(wid)), () => `"admin is controlling" in the indicator (got ${indicatorText(wid)})`);
  // Drawn and listening before the click (as after the consent prompt appears).
  await sleep(500);

  // The person at the machine clicks End session.
  clickIn(xs, wid, END);

  // The viewer says who ended it.
  await page.waitForSelector('[data-testid=conn-state][data-state=ended]', { timeout: 15_000 });
  assert.match(await page.locator('.stage-overlay').innerText(), /Session ended: ended by the person at the machine/);
  await shot(page, '21-viewer-ended-by-customer');

  // The agent exits, cleanly.
  const exit = await Promise.race([agent.exited, sleep(15_000).then(() => 'still running after 15 s')]);
  assert.equal(exit, 0, `agent exit: ${exit}\n${agent.log()}`);
  assert.match(agent.log(), /ended by the person at the machine/);

  // The audit log has it, once, for this session.
  const events = await waitFor(async () => {
    const r = await apiCall(server.url, 'GET', '/api/events?type=session.ended_by_customer', admin);
    return r.body.items.length ? r.body.items : null;
  }, 'session.ended_by_customer in the audit log', 10_000);
  assert.equal(events.length, 1, JSON.stringify(events));
  assert.equal(events[0].session_id, sessionId, JSON.stringify(events[0]));
  assert.equal(events[0].details.kind, 'attended', JSON.stringify(events[0]));

  // And the indicator is gone from the customer's screen.
  await waitFor(() => {
    try {
      xs.x('xdotool', ['search', '--onlyvisible', '--name', `^${INDICATOR_TITLE}$`]);
      return false;
    } catch {
      return true;
    }
  }, 'the indicator to close', 10_000);
  assertClean();
  await context.close();
});
