// Browser test of two-factor sign-in against a real server: enrol from the Account page
// (QR code, key, confirm with a real code), sign out, sign in with a code computed here
// (RFC 6238 over node:crypto), sign in with a recovery code, and an administrator's
// "Reset 2FA" on the Users page.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
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

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of text.replace(/=+$/, '').toUpperCase()) {
    const idx = alphabet.indexOf(ch);
    assert.ok(idx >= 0, `not base32: ${ch}`);
    value = (value << 5) | idx;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** RFC 6238 TOTP: HMAC-SHA1, 30-second steps, 6 digits, at Unix time `seconds`. */
function totp(secret, seconds) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(seconds / 30)));
  const mac = createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const binary = mac.readUInt32BE(offset) & 0x7fffffff;
  return String(binary % 1_000_000).padStart(6, '0');
}

test('RFC 6238 test vector', () => {
  // Appendix B: the ASCII secret "12345678901234567890" at T = 59 s gives 94287082 (8 digits).
  const secret = 'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ';
  assert.equal(totp(secret, 59), '287082');
});

async function signOut(page) {
  await page.click('[data-testid=sign-out]');
  await page.waitForSelector('[data-testid=login-flash]');
}

async function passwordStep(page, username, password) {
  await page.goto(`${server.url}/#/login`);
  await page.fill('#username', username);
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  await page.waitForSelector('[data-testid=totp-form]');
}

test('enrol, sign out, sign in with a real code and with a recovery code; an admin resets it', async () => {
  const admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  const password = 'Tina-Password-42';
  const created = await apiCall(server.url, 'POST', '/api/users', admin, { username: 'tina', password, role: 'technician' });
  assert.equal(created.status, 201);

  const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
  await uiLogin(page, server.url, 'tina', password);
  await page.click('a[href="#/account"]');
  await page.click('[data-testid=totp-start]');
  await page.waitForSelector('[data-testid=totp-qr]');
  const qr = await page.locator('[data-testid=totp-qr]').getAttribute('src');
  assert.match(qr, /^data:image\/svg\+xml;base64,/);
  const secret = (await page.locator('[data-testid=totp-secret]').innerText()).trim();
  assert.match(secret, /^[A-Z2-7]{32}$/);
  await shot(page, 'totp-01-setup');
  const t0 = Math.floor(Date.now() / 1000);
  await page.fill('#totp-confirm-code', totp(secret, t0));
  await page.click('form[aria-label="Confirm two-factor sign-in"] button[type=submit]');
  await page.waitForSelector('[data-testid=recovery-codes]');
  const recovery = await page.locator('[data-testid=recovery-codes] li').allInnerTexts();
  assert.equal(recovery.length, 10);
  await shot(page, 'totp-02-recovery-codes');
  await page.click('[data-testid=totp-done]');
  await page.waitForFunction(() => document.querySelector('.page-head h1')?.textContent === 'Machines');

  // Sign out; the password alone now leads to the second step.
  await signOut(page);
  await passwordStep(page, 'tina', password);
  assert.equal(await page.evaluate(() => localStorage.getItem('gc.token')), null);
  await shot(page, 'totp-03-second-step');
  // A wrong code is refused with the envelope's detail.
  const right = totp(secret, t0 + 30);
  await page.fill('#totp-code', right === '000000' ? '111111' : '000000');
  await page.click('[data-testid=totp-form] button[type=submit]');
  await page.locator('[data-testid=totp-error] .alert-bad').waitFor();
  assert.match(await page.locator('[data-testid=totp-error]').innerText(), /code is not valid/);
  // The next step's code (the enrolment used this one's) signs in.
  await page.fill('#totp-code', right);
  await page.click('[data-testid=totp-form] button[type=submit]');
  await page.waitForFunction(() => document.querySelector('.page-head h1')?.textContent === 'Machines');
  assert.equal(await page.locator('[data-testid=current-user]').innerText(), 'tina');

  // A recovery code signs in once.
  await signOut(page);
  await passwordStep(page, 'tina', password);
  await page.click('[data-testid=use-recovery-code]');
  await page.fill('#totp-code', recovery[4]);
  await page.click('[data-testid=totp-form] button[type=submit]');
  await page.waitForFunction(() => document.querySelector('.page-head h1')?.textContent === 'Machines');
  await signOut(page);
  await passwordStep(page, 'tina', password);
  await page.click('[data-testid=use-recovery-code]');
  await page.fill('#totp-code', recovery[4]);
  await page.click('[data-testid=totp-form] button[type=submit]');
  await page.locator('[data-testid=totp-error] .alert-bad').waitFor();

  // The administrator resets it from the Users page; tina signs in with her password only.
  await page.reload();
  await uiLogin(page, server.url);
  await page.click('a[href="#/users"]');
  const row = page.locator('tr[data-username="tina"]');
  await row.waitFor();
  await row.locator('button', { hasText: 'Reset 2FA' }).click();
  await page.locator('dialog.modal button', { hasText: 'Reset 2FA' }).click();
  await row.locator('td', { hasText: 'off' }).waitFor();
  await shot(page, 'totp-04-users-reset');
  const plain = await apiCall(server.url, 'POST', '/api/auth/login', null, { username: 'tina', password });
  assert.equal(plain.status, 200);
  assert.ok(plain.body.token, JSON.stringify(plain.body));

  const events = await apiCall(server.url, 'GET', '/api/events?limit=500', admin);
  const types = events.body.items.map((e) => e.event_type);
  for (const t of ['totp.enrolled', 'totp.failed', 'recovery_code.used', 'totp.reset']) {
    assert.ok(types.includes(t), `audit has ${t}: ${types.join(', ')}`);
  }
  assertClean();
  await context.close();
});
