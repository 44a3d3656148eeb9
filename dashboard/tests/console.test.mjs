// Browser tests of the console against a real server: sign-in, support codes, users,
// and an expired/revoked token sending the user back to sign-in.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, HTTP_4XX, apiCall, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe('sign in', () => {
  test('a wrong password shows the error detail and correlation id', async () => {
    const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await page.goto(`${server.url}/`);
    await page.waitForSelector('#username');
    await shot(page, '01-sign-in');
    await page.fill('#username', 'admin');
    await page.fill('#password', 'not-the-password');
    await page.click('button[type=submit]');
    const error = page.locator('[data-testid=login-error] .alert-bad');
    await error.waitFor();
    const text = await error.innerText();
    assert.match(text, /invalid username or password/);
    assert.match(text, /correlation id [0-9a-f]{16,}/);
    await shot(page, '02-sign-in-error');
    assertClean();
    await context.close();
  });

  test('the right password lands on machines; sign out returns to sign-in', async () => {
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    assert.equal(await page.locator('.page-head h1').innerText(), 'Machines');
    assert.match(page.url(), /#\/machines$/);
    await page.waitForSelector('.empty, [data-testid=machines-table]');
    assert.equal(await page.locator('[data-testid=current-user]').innerText(), 'admin');
    await shot(page, '03-machines-empty');
    // Every page renders without errors.
    for (const [path, heading, name] of [
      ['sessions', 'Live sessions', '04-sessions'],
      ['keys', 'Agent keys', '05-keys'],
      ['audit', 'Audit log', '06-audit'],
      ['account', 'Account', '07-account'],
    ]) {
      await page.click(`a[href="#/${path}"]`);
      await page.waitForFunction((h) => document.querySelector('.page-head h1')?.textContent === h, heading);
      await page.waitForTimeout(300);
      await shot(page, name);
    }
    // Dark theme toggle.
    await page.click('[data-testid=theme-toggle]');
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
    await page.click('a[href="#/machines"]');
    await page.waitForSelector('.empty, [data-testid=machines-table]');
    await shot(page, '08-machines-dark');
    await page.click('[data-testid=theme-toggle]');
    await page.click('[data-testid=sign-out]');
    await page.waitForSelector('[data-testid=login-flash]');
    assert.match(await page.locator('[data-testid=login-flash]').innerText(), /signed out/);
    assert.equal(await page.evaluate(() => localStorage.getItem('gc.token')), null);
    assertClean();
    await context.close();
  });
});

describe('support codes', () => {
  test('create shows a big code that is listed; cancel marks it cancelled', async () => {
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    await page.click('a[href="#/codes"]');
    await page.waitForSelector('[data-testid=create-code]');
    await page.fill('#code-note', 'Ticket 4711 — Mrs. Jones');
    await page.click('[data-testid=create-code]');
    const big = page.locator('[data-testid=code-big]');
    await big.waitFor();
    const code = (await big.innerText()).trim();
    assert.match(code, /^[2-9A-HJKMNP-Z]{3}-[2-9A-HJKMNP-Z]{3}-[2-9A-HJKMNP-Z]{3}$/);
    const size = await big.evaluate((el) => parseFloat(getComputedStyle(el).fontSize));
    assert.ok(size >= 40, `code font size ${size}px is not large`);
    const codeId = await big.getAttribute('data-code-id');
    assert.ok(codeId, 'the new code carries its id');
    const row = page.locator(`tr[data-code-id="${codeId}"]`);
    await row.waitFor();
    assert.match(await row.innerText(), /pending/);
    // Lists never show the full code again (SPEC §4.10), only its last group.
    assert.ok(!(await row.innerText()).includes(code), 'the list masks the code');
    assert.ok((await row.innerText()).includes(code.slice(-3)));
    assert.match(await page.locator('.code-card .countdown').innerText(), /^\d+:\d\d$/);
    await shot(page, '09-codes-created');
    await row.locator('button', { hasText: 'Cancel' }).click();
    await page.locator('dialog.modal button', { hasText: 'Cancel code' }).click();
    await page.waitForFunction((c) => document.querySelector(`tr[data-code-id="${c}"]`)?.textContent?.includes('cancelled'), codeId);
    assert.equal(await page.locator('[data-testid=code-big]').count(), 0);
    assertClean();
    await context.close();
  });
});

describe('users', () => {
  test('an admin creates and deletes a user', async () => {
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    await page.click('a[href="#/users"]');
    await page.waitForSelector('[data-testid=users-table]');
    await page.fill('#new-username', 'tech.sam');
    await page.fill('#new-password', 'Sam-password-42!');
    await page.selectOption('#new-role', 'technician');
    await page.click('[data-testid=create-user]');
    const row = page.locator('tr[data-username="tech.sam"]');
    await row.waitFor();
    assert.equal(await row.locator('select').inputValue(), 'technician');
    await shot(page, '10-users');
    // The new user can sign in.
    assert.ok(await login(server.url, 'tech.sam', 'Sam-password-42!'));
    await row.locator('button', { hasText: 'Delete' }).click();
    await page.locator('dialog.modal button', { hasText: 'Delete user' }).click();
    await row.waitFor({ state: 'detached' });
    const users = await apiCall(server.url, 'GET', '/api/users', await login(server.url, 'admin', ADMIN_PASSWORD));
    assert.ok(!users.body.some((u) => u.username === 'tech.sam'));
    assertClean();
    await context.close();
  });
});

describe('expired or revoked token', () => {
  test('a token signed out elsewhere sends the user back to sign-in', async () => {
    const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    const token = await page.evaluate(() => localStorage.getItem('gc.token'));
    assert.ok(token);
    // "Another tab" signs this token out through the API.
    const out = await apiCall(server.url, 'POST', '/api/auth/logout', token);
    assert.equal(out.status, 200);
    await page.click('a[href="#/sessions"]');
    await page.waitForSelector('[data-testid=login-flash]');
    assert.match(await page.locator('[data-testid=login-flash]').innerText(), /expired or was signed out/);
    assert.match(page.url(), /#\/login$/);
    assert.equal(await page.evaluate(() => localStorage.getItem('gc.token')), null);
    await shot(page, '11-session-expired');
    assertClean();
    await context.close();
  });

  test('a corrupted token in localStorage sends the user back to sign-in', async () => {
    const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    await page.evaluate(() => localStorage.setItem('gc.token', 'eyJhbGciOiJIUzI1NiJ9.garbage.garbage'));
    await page.reload();
    await page.waitForSelector('[data-testid=login-flash]');
    assert.match(page.url(), /#\/login$/);
    assertClean();
    await context.close();
  });
});
