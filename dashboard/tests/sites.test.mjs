// Browser tests of the Sites page against a real server: create a site (enrollment key
// shown once), fingerprints in the list, key rotation, the installer download, errors,
// and the page being admin-only.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
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

/** The server's public fingerprint of an enrollment key: `vN (XXXX)`. */
function fingerprint(version, key) {
  return `v${version} (${createHash('sha256').update(key).digest('hex').slice(0, 4).toUpperCase()})`;
}

const KEY_RE = /^gce_[A-Za-z0-9_-]{43}$/;

describe('sites', () => {
  test('an admin creates a site, sees its key once, rotates it and downloads the installer', async () => {
    const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    // The nav entry sits right after "Agent keys".
    const nav = await page.locator('.nav-links a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    assert.equal(nav[nav.indexOf('#/keys') + 1], '#/sites', `nav order: ${nav}`);
    await page.click('a[href="#/sites"]');
    await page.waitForFunction(() => document.querySelector('.page-head h1')?.textContent === 'Sites');
    // Empty state explains what a site is.
    const empty = page.locator('.empty');
    await empty.waitFor();
    assert.match(await empty.innerText(), /No sites yet[\s\S]*A site is/);

    // Create.
    await page.fill('#site-name', 'Head Office');
    await page.fill('#site-code', 'HQ-TEST');
    await page.click('[data-testid=create-site]');
    const keyBox = page.locator('[data-testid=enrollment-key]');
    await keyBox.waitFor();
    const key = (await keyBox.innerText()).trim();
    assert.ok(key.startsWith('gce_'), `enrollment key ${key}`);
    assert.match(key, KEY_RE);
    const card = page.locator('[data-testid=fresh-key]');
    assert.match(await card.innerText(), /shown only once\. store it now\./i);
    assert.equal((await page.locator('[data-testid=install-command]').innerText()).trim(), `sudo sh guruconnect-install-HQ-TEST.sh ${key}`);
    assert.equal(await card.locator('button', { hasText: 'Copy key' }).count(), 1);
    assert.equal(await card.locator('button', { hasText: 'Copy command' }).count(), 2, 'a Linux and a Windows command');

    // The list shows the fingerprint, never the key.
    const row = page.locator('tr[data-code="HQ-TEST"]');
    await row.waitFor();
    const fp1 = fingerprint(1, key);
    assert.equal((await row.locator('[data-testid=fingerprint]').innerText()).trim(), fp1);
    assert.match(await row.innerText(), /Head Office/);
    assert.match(await row.innerText(), /never/);
    assert.ok(!(await page.locator('[data-testid=sites-table]').innerText()).includes(key), 'the list shows the key');

    // Shown once: after a reload the key is gone from the page.
    await page.reload();
    await row.waitFor();
    assert.equal(await page.locator('[data-testid=enrollment-key]').count(), 0);
    assert.ok(!(await page.content()).includes(key), 'the key is still in the page after a reload');

    // A duplicate code is refused with the server's error envelope.
    await page.fill('#site-name', 'Head Office again');
    await page.fill('#site-code', 'HQ-TEST');
    await page.click('[data-testid=create-site]');
    const err = page.locator('.alert-bad');
    await err.waitFor();
    assert.match(await err.innerText(), /a site with that code already exists/);
    assert.match(await err.innerText(), /correlation id [0-9a-f]{16,}/);
    assert.equal(await page.locator('tr[data-site-id]').count(), 1);
    await page.fill('#site-name', '');
    await page.fill('#site-code', '');

    // Rotate: the confirm dialog explains the consequences; cancelling changes nothing.
    await row.locator('[data-action=rotate]').click();
    const dialog = page.locator('dialog.modal');
    await dialog.waitFor();
    const dialogText = await dialog.innerText();
    assert.match(dialogText, /New enrollments with the old key stop/);
    assert.match(dialogText, /already enrolled keep working/);
    await dialog.locator('button', { hasText: 'Cancel' }).click();
    await dialog.waitFor({ state: 'detached' });
    assert.equal(await page.locator('[data-testid=enrollment-key]').count(), 0);
    await row.locator('[data-action=rotate]').click();
    await page.locator('dialog.modal button', { hasText: 'Rotate key' }).click();
    await page.waitForFunction(() => /^v2 /.test(document.querySelector('tr[data-code="HQ-TEST"] [data-testid=fingerprint]')?.textContent ?? ''));
    await keyBox.waitFor();
    const key2 = (await keyBox.innerText()).trim();
    assert.match(key2, KEY_RE);
    assert.notEqual(key2, key);
    assert.equal((await row.locator('[data-testid=fingerprint]').innerText()).trim(), fingerprint(2, key2));
    assert.match(await card.innerText(), /New enrollment key for Head Office \(HQ-TEST\) — v2 \(/i);
    assert.equal((await page.locator('[data-testid=install-command]').innerText()).trim(), `sudo sh guruconnect-install-HQ-TEST.sh ${key2}`);
    assert.doesNotMatch(await row.innerText(), /never/);
    const listed = await apiCall(server.url, 'GET', '/api/sites', await login(server.url, 'admin', ADMIN_PASSWORD));
    assert.equal(listed.body[0].key_version, 2);

    // The installer (fetched with the bearer token) names the site and carries no key.
    const [download] = await Promise.all([page.waitForEvent('download'), row.locator('[data-action=installer]').click()]);
    assert.equal(download.suggestedFilename(), 'guruconnect-install-HQ-TEST.sh');
    const path = await download.path();
    assert.ok(path, `download failed: ${await download.failure()}`);
    const script = readFileSync(path, 'utf8');
    assert.ok(script.startsWith('#!/bin/sh'), script.slice(0, 80));
    assert.ok(script.includes("SITE_CODE='HQ-TEST'"), 'the installer names the site code');
    assert.ok(script.includes(fingerprint(2, key2)), 'the installer names the current fingerprint');
    assert.ok(!script.includes(key2), 'the installer contains the enrollment key');
    assert.ok(!script.includes(key), 'the installer contains the old enrollment key');
    assert.doesNotMatch(script, /gce_[A-Za-z0-9_-]{43}/, 'the installer contains a key');

    // Windows beside Linux: the fresh key's msiexec command, and a Windows button that says
    // what to configure on a server without an MSI (this one has none).
    assert.equal(
      (await page.locator('[data-testid=install-command-windows]').innerText()).trim(),
      `msiexec /i guruconnect-HQ-TEST.msi /qn ENROLLMENT_KEY=${key2}`,
    );
    const windowsButton = row.locator('[data-action=installer-windows]');
    assert.ok(await windowsButton.isDisabled(), 'the Windows download is offered without an MSI');
    assert.match((await windowsButton.getAttribute('title')) ?? '', /agent_windows_msi_path/);

    // The installer builder: labels built into the script; Windows explains what is missing.
    const builder = page.locator('[data-testid=installer-builder]');
    await builder.waitFor();
    await page.selectOption('#builder-platform', 'windows');
    assert.match(await builder.locator('[data-testid=builder-note]').innerText(), /agent_windows_msi_path/);
    assert.ok(await builder.locator('[data-testid=builder-download]').isDisabled());
    assert.match(await builder.locator('[data-testid=builder-command]').innerText(), /^msiexec \/i guruconnect-HQ-TEST\.msi \/qn ENROLLMENT_KEY=/);
    await page.selectOption('#builder-platform', 'linux');
    assert.match(await builder.locator('[data-testid=builder-note]').innerText(), /agent_binary_path/);
    await page.fill('#builder-company', 'Acme Dental');
    await page.fill('#builder-tags', 'front-desk, pos');
    const [built] = await Promise.all([page.waitForEvent('download'), builder.locator('[data-testid=builder-download]').click()]);
    assert.equal(built.suggestedFilename(), 'guruconnect-install-HQ-TEST.sh');
    const builtScript = readFileSync(await built.path(), 'utf8');
    assert.ok(builtScript.includes("BUILTIN_COMPANY='Acme Dental'"), 'the builder\'s company is in the script');
    assert.ok(builtScript.includes("BUILTIN_TAGS='front-desk,pos'"), 'the builder\'s tags are in the script');
    assert.doesNotMatch(builtScript, /gce_[A-Za-z0-9_-]{43}/, 'the built installer contains a key');

    assert.equal(await page.locator('.alert-bad').count(), 0, 'the earlier error is cleared by the new key');
    // Screenshot with the new key and the list, once the toasts are gone.
    await page.setViewportSize({ width: 1280, height: 960 });
    await page.evaluate(() => document.querySelector('.main-col')?.scrollTo(0, 0));
    await page.waitForFunction(() => !document.querySelector('#toasts .toast'), undefined, { timeout: 10_000 });
    await shot(page, 'console-16-sites');
    assertClean();
    await context.close();
  });

  test('a technician sees no Sites nav and the page is refused', async () => {
    const admin = await login(server.url, 'admin', ADMIN_PASSWORD);
    const created = await apiCall(server.url, 'POST', '/api/users', admin, { username: 'tech.site', password: 'Tech-site-pass-7!', role: 'technician' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const { page, context, assertClean } = await openPage(browser);
    await uiLogin(page, server.url, 'tech.site', 'Tech-site-pass-7!');
    assert.equal(await page.locator('[data-testid=current-user]').innerText(), 'tech.site');
    assert.equal(await page.locator('a[href="#/sites"]').count(), 0);
    assert.equal(await page.locator('a[href="#/keys"]').count(), 0);
    await page.goto(`${server.url}/#/sites`);
    const refused = page.locator('.alert-warn');
    await refused.waitFor();
    assert.match(await refused.innerText(), /for administrators/);
    assert.equal(await page.locator('[data-testid=sites-table], [data-testid=create-site]').count(), 0);
    // The API agrees.
    const tech = await login(server.url, 'tech.site', 'Tech-site-pass-7!');
    assert.equal((await apiCall(server.url, 'GET', '/api/sites', tech)).status, 403);
    assertClean();
    await context.close();
  });
});
