// First start, as a new administrator meets it: the server prints where to open the console
// and a generated password; signing in with it asks for a password of one's own before
// anything else, and once changed the console is open and no longer asks.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openPage, shot, startServer } from './lib/harness.mjs';

let server;
let browser;

before(async () => {
  server = await startServer({ generatedPassword: true });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The first-start password from the server's output. */
async function printedPassword() {
  for (let i = 0; i < 100; i++) {
    const m = /with password: (\S+)/.exec(server.log());
    if (m) return m[1];
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no generated password printed:\n${server.log()}`);
}

async function signIn(page, password) {
  await page.goto(`${server.url}/#/login`);
  await page.fill('#username', 'admin');
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  await page.waitForSelector('.page-head h1');
}

test('the generated password must be replaced before the console opens', async () => {
  const generated = await printedPassword();
  assert.match(server.log(), new RegExp(`open ${server.url.replace(/[.]/g, '\\.')}/ in a browser`));
  const { page, context, assertClean } = await openPage(browser);
  await signIn(page, generated);
  await page.waitForSelector('[data-testid=password-change-required]');
  assert.match(page.url(), /#\/account$/);
  await shot(page, '19-first-sign-in-new-password');
  // Nothing else opens until it is changed.
  await page.goto(`${server.url}/#/machines`);
  await page.waitForSelector('[data-testid=password-change-required]');
  assert.match(page.url(), /#\/account$/);

  const mine = 'My-Own-Password-2026';
  await page.fill('#current-password', generated);
  await page.fill('#new-password', mine);
  await page.fill('#confirm-password', mine);
  await page.click('form[aria-label="Change password"] button[type=submit]');
  await page.waitForFunction(() => document.querySelector('.page-head h1')?.textContent === 'Machines');

  // A later sign-in with the new password goes straight in.
  await page.evaluate(() => localStorage.clear());
  await signIn(page, mine);
  await page.waitForFunction(() => document.querySelector('.page-head h1')?.textContent === 'Machines');
  assert.equal(await page.locator('[data-testid=password-change-required]').count(), 0);
  assertClean();
  await context.close();
});
