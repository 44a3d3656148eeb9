// Releases and agent updates in the console against a real server: the Releases page
// (updates off without a key, publishing a release signed with the release tool, a forged
// one refused, uploading a file and a wrong one refused, rollout, delete, the changelog),
// the Machines list's agent versions with outdated ones marked and "Update selected", the
// machine page's update channel and Update now, and the Sites page's update channel.
//
// Releases are signed with `guruconnect-release` (next to the server binary, or
// GURUCONNECT_RELEASE_BIN); without it, with node's Ed25519 in the same format.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { ADMIN_PASSWORD, DASHBOARD, HTTP_4XX, apiCall, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { FakeAgent, pb } from './lib/fake-agent.mjs';

const serverBin = resolve(DASHBOARD, process.env.GURUCONNECT_SERVER_BIN ?? '../target/debug/guruconnect-server');
const releaseBin = process.env.GURUCONNECT_RELEASE_BIN ?? join(dirname(serverBin), 'guruconnect-release');
const work = mkdtempSync(join(tmpdir(), 'gc-releases-test-'));

/** A signing key: the release tool's keygen, or node's Ed25519 in the same text forms. */
function keyPair(name) {
  const raw = (pub) => Buffer.from(pub.replace(/^gcrelpub1:/, ''), 'base64');
  if (existsSync(releaseBin)) {
    const dir = join(work, name);
    execFileSync(releaseBin, ['keygen', '--out', dir], { stdio: 'pipe' });
    const pub = readFileSync(join(dir, 'release.pub'), 'utf8').trim();
    return { pub, raw: raw(pub), keyFile: join(dir, 'release.key') };
  }
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const pub = `gcrelpub1:${publicKey.export({ format: 'der', type: 'spki' }).subarray(-32).toString('base64')}`;
  return { pub, raw: raw(pub), privateKey };
}

/** The server's fingerprint of a public key: the first 8 bytes of its SHA-256, in hex. */
const fingerprint = (key) => createHash('sha256').update(key.raw).digest('hex').slice(0, 16);
const sha256 = (b) => createHash('sha256').update(b).digest('hex');

/** A signed release (the JSON text `guruconnect-release sign` writes). */
function signRelease(key, { version, channel, notes, artifacts }) {
  if (key.keyFile) {
    const dir = mkdtempSync(join(work, 'sign-'));
    const args = ['sign', '--key', key.keyFile, '--version', version, '--channel', channel, '--out', join(dir, 'release.json')];
    for (const [platform, { file, bytes }] of Object.entries(artifacts)) {
      mkdirSync(join(dir, platform), { recursive: true });
      writeFileSync(join(dir, platform, file), bytes);
      args.push('--artifact', `${platform}=${join(dir, platform, file)}`);
    }
    writeFileSync(join(dir, 'notes.txt'), notes);
    args.push('--notes-file', join(dir, 'notes.txt'));
    execFileSync(releaseBin, args, { stdio: 'pipe' });
    return readFileSync(join(dir, 'release.json'), 'utf8');
  }
  const manifest = JSON.stringify(
    {
      version,
      channel,
      notes,
      artifacts: Object.entries(artifacts).map(([platform, { file, bytes }]) => ({ platform, file, size: bytes.length, sha256: sha256(bytes) })),
    },
    null,
    2,
  );
  return JSON.stringify({ manifest, signature: sign(null, Buffer.from(manifest), key.privateKey).toString('base64') }, null, 2);
}

const AGENT_LINUX = Buffer.from('#!/bin/sh\necho guruconnect-agent 1.2.0\n'.repeat(64));
const AGENT_WINDOWS = Buffer.from('MZ fake windows agent 1.2.0 '.repeat(32));
const NOTES = '### Features\n- agents update themselves (signed releases)\n\n### Fixes\n- viewer toolbar wraps';

let key;
let forger;
let server;
let bare;
let browser;
let admin;
const agents = {};
const ids = {};

/** A managed machine whose scripted agent reports `agentVersion`. */
async function machine(hostname, agentVersion) {
  const agentId = crypto.randomUUID();
  const k = await apiCall(server.url, 'POST', `/api/machines/${agentId}/keys`, admin, { label: 'releases test' });
  assert.equal(k.status, 201, JSON.stringify(k.body));
  const agent = new FakeAgent(server.url, k.body.agent_key, { hostname, os: 'linux', osVersion: 'Debian GNU/Linux 12', agentVersion });
  await agent.connect();
  for (let i = 0; i < 100; i++) {
    const m = await apiCall(server.url, 'GET', `/api/machines/${agentId}`, admin);
    if (m.body.online) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  agents[hostname] = agent;
  ids[hostname] = agentId;
}

/** Picks `text` as the file named `name` in the file input `input` (a locator). */
async function pick(input, name, bytes) {
  await input.setInputFiles({ name, mimeType: 'application/octet-stream', buffer: Buffer.from(bytes) });
}

const card = (page, version) => page.locator(`.release-card[data-version="${version}"]`);

before(async () => {
  key = keyPair('release');
  forger = keyPair('forger');
  // One server without a key (updates off), one with it.
  delete process.env.GURUCONNECT_RELEASE_PUBLIC_KEY;
  bare = await startServer();
  process.env.GURUCONNECT_RELEASE_PUBLIC_KEY = key.pub;
  try {
    server = await startServer();
  } finally {
    delete process.env.GURUCONNECT_RELEASE_PUBLIC_KEY;
  }
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  await machine('old-pc', '1.1.0');
  await machine('beta-pc', '1.2.0-beta.1');
  await machine('current-pc', '1.2.0');
  await machine('gone-pc', '1.0.0');
  agents['gone-pc'].close();
  for (let i = 0; i < 100; i++) {
    const m = await apiCall(server.url, 'GET', `/api/machines/${ids['gone-pc']}`, admin);
    if (!m.body.online) break;
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  for (const a of Object.values(agents)) a.close();
  await browser?.close();
  await server?.stop();
  await bare?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('releases page', () => {
  test('without a release key the page says updates are off and why; publishing is refused', async () => {
    const { page, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, bare.url);
    await page.click('a[href="#/releases"]');
    await page.waitForFunction(() => document.querySelector('.page-head h1')?.textContent === 'Releases');
    const reason = page.locator('[data-testid=updates-reason]');
    await reason.waitFor();
    assert.match(await reason.innerText(), /updates are disabled.*release_public_key/);
    await pick(page.locator('#release-file'), 'release.json', signRelease(key, { version: '1.0.0', channel: 'stable', notes: 'n', artifacts: { 'linux-x86_64': { file: 'a', bytes: Buffer.from('a') } } }));
    await page.click('[data-testid=publish]');
    await page.locator('[data-testid=publish-error] .alert').waitFor();
    assert.match(await page.locator('[data-testid=publish-error]').innerText(), /release_public_key/);
    assertClean();
  });

  test('publishes a signed release; a forged one and a repeat are refused with the reason', async () => {
    const { page, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    // Admin nav: Releases right after Sites.
    const nav = await page.locator('.nav-links a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    assert.equal(nav[nav.indexOf('#/sites') + 1], '#/releases', `nav order: ${nav}`);
    await page.click('a[href="#/releases"]');
    await page.locator('[data-testid=key-fingerprint]').waitFor();
    assert.equal(await page.locator('[data-testid=key-fingerprint]').innerText(), fingerprint(key));
    assert.match(await page.locator('[data-testid=releases] .empty').innerText(), /No releases yet/);

    const release = { version: '1.2.0', channel: 'stable', notes: NOTES, artifacts: { 'linux-x86_64': { file: 'guruconnect-agent', bytes: AGENT_LINUX }, 'windows-x86_64': { file: 'guruconnect-agent.exe', bytes: AGENT_WINDOWS } } };
    // Forged: signed by another key.
    await pick(page.locator('#release-file'), 'release.json', signRelease(forger, release));
    await page.click('[data-testid=publish]');
    await page.locator('[data-testid=publish-error] .alert').waitFor();
    const refused = await page.locator('[data-testid=publish-error]').innerText();
    assert.match(refused, /signature/i);
    assert.match(refused, new RegExp(fingerprint(key)), 'the message names the key the server trusts');
    assert.equal((await apiCall(server.url, 'GET', '/api/releases', admin)).body.items.length, 0);
    // Not a release at all: said in place, nothing sent.
    await pick(page.locator('#release-file'), 'notes.txt', 'hello');
    await page.click('[data-testid=publish]');
    await page.locator('[data-testid=publish-error]', { hasText: 'not JSON' }).waitFor();

    // The real one.
    const signed = signRelease(key, release);
    await pick(page.locator('#release-file'), 'release.json', signed);
    await page.click('[data-testid=publish]');
    await page.locator('.toast', { hasText: 'Release 1.2.0 (stable) published' }).waitFor();
    const c = card(page, '1.2.0');
    await c.waitFor();
    assert.equal(await page.locator('[data-testid=publish-error]').innerText(), '');
    assert.match(await c.locator('.pill', { hasText: 'stable' }).innerText(), /stable/);
    assert.match(await c.locator('[data-testid=rollout]').innerText(), /100 % of machines/);
    assert.deepEqual(await c.locator('[data-testid=artifact-state]').allInnerTexts(), ['upload missing', 'upload missing']);
    assert.match(await c.locator('.notes-pre').innerText(), /agents update themselves/);
    // The same version again: 409 with the server's words.
    await pick(page.locator('#release-file'), 'release.json', signed);
    await page.click('[data-testid=publish]');
    await page.locator('[data-testid=publish-error]', { hasText: 'release 1.2.0 exists' }).waitFor();

    // A beta (no changelog entry, no rollout editor).
    await pick(page.locator('#release-file'), 'release.json', signRelease(key, { version: '1.3.0-beta.1', channel: 'beta', notes: 'beta notes', artifacts: { 'linux-x86_64': { file: 'guruconnect-agent', bytes: Buffer.from('beta') } } }));
    await page.click('[data-testid=publish]');
    await card(page, '1.3.0-beta.1').waitFor();
    assert.equal(await card(page, '1.3.0-beta.1').locator('[data-testid=rollout-input]').count(), 0);
    // Newest first.
    assert.deepEqual(await page.locator('.release-card').evaluateAll((cs) => cs.map((x) => x.dataset.version)), ['1.3.0-beta.1', '1.2.0']);
    assertClean();
  });

  test('uploads a file checked against the signed manifest; a wrong one is refused with the reason', async () => {
    const { page, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    await page.goto(`${server.url}/#/releases`);
    const row = card(page, '1.2.0').locator('tr[data-platform=linux-x86_64]');
    await row.waitFor();
    // Same size, one byte changed.
    const wrong = Buffer.from(AGENT_LINUX);
    wrong[10] ^= 1;
    await pick(row.locator('input[type=file]'), 'guruconnect-agent', wrong);
    await row.locator('[data-action=upload]').click();
    await row.locator('[data-testid=upload-error] .alert').waitFor();
    assert.match(await row.locator('[data-testid=upload-error]').innerText(), /does not match the signed manifest/);
    assert.equal(await row.locator('[data-testid=artifact-state]').innerText(), 'upload missing');

    await pick(row.locator('input[type=file]'), 'guruconnect-agent', AGENT_LINUX);
    await row.locator('[data-action=upload]').click();
    await page.locator('.toast', { hasText: 'linux-x86_64 file of 1.2.0 uploaded and verified' }).waitFor();
    const fresh = card(page, '1.2.0').locator('tr[data-platform=linux-x86_64] [data-testid=artifact-state]');
    await page.waitForFunction(() => document.querySelector('.release-card[data-version="1.2.0"] tr[data-platform=linux-x86_64] [data-testid=artifact-state]')?.textContent === 'uploaded');
    assert.equal(await fresh.innerText(), 'uploaded');
    assert.match(await card(page, '1.2.0').innerText(), /1 file to upload/);
    // The server serves exactly those bytes.
    const got = await fetch(`${server.url}/api/releases/1.2.0/artifacts/linux-x86_64`);
    assert.equal(got.status, 200);
    assert.equal(sha256(Buffer.from(await got.arrayBuffer())), sha256(AGENT_LINUX));
    assertClean();
  });

  test('rollout of a stable release changes and persists; the changelog shows stable notes', async () => {
    const { page, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    await page.goto(`${server.url}/#/releases`);
    const c = card(page, '1.2.0');
    await c.waitFor();
    // Out of range: the form does not send it.
    await c.locator('[data-testid=rollout-input]').fill('101');
    await c.locator('[data-action=rollout]').click();
    assert.equal(await c.locator('[data-testid=rollout-input]').evaluate((i) => i.validity.valid), false);
    assert.equal((await apiCall(server.url, 'GET', '/api/releases/1.2.0', admin)).body.rollout_percent, 100);
    await c.locator('[data-testid=rollout-input]').fill('25');
    await c.locator('[data-action=rollout]').click();
    await page.locator('.toast', { hasText: 'Rollout of 1.2.0 set to 25 %' }).waitFor();
    assert.equal((await apiCall(server.url, 'GET', '/api/releases/1.2.0', admin)).body.rollout_percent, 25);
    await page.reload();
    await card(page, '1.2.0').waitFor();
    assert.equal(await card(page, '1.2.0').locator('[data-testid=rollout-input]').inputValue(), '25');
    assert.match(await card(page, '1.2.0').locator('[data-testid=rollout]').innerText(), /25 % of machines/);

    const log = page.locator('[data-testid=changelog]');
    await log.locator('.changelog-entry').first().waitFor();
    assert.deepEqual(await log.locator('.changelog-entry').evaluateAll((es) => es.map((e) => e.dataset.version)), ['1.2.0'], 'betas get no changelog entry');
    assert.match(await log.innerText(), /### Features\n- agents update themselves/);
    // Tall enough for the whole page: the state, publishing, both releases, the changelog.
    await page.setViewportSize({ width: 1280, height: 1280 });
    await shot(page, '22-releases');
    await page.setViewportSize({ width: 1280, height: 720 });
    // Back to everyone for the machine tests.
    await c.locator('[data-testid=rollout-input]').fill('100');
    await card(page, '1.2.0').locator('[data-action=rollout]').click();
    await page.locator('.toast', { hasText: 'set to 100 %' }).waitFor();
    assertClean();
  });
});

describe('machines and updates', () => {
  test('the list shows each agent version, marks outdated ones and updates the selected machines', async () => {
    const { page, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    const row = (host) => page.locator(`[data-testid=machines-table] tr[data-agent-id="${ids[host]}"]`);
    await row('old-pc').locator('[data-testid=outdated]').waitFor();
    const version = async (host) => (await row(host).locator('[data-testid=agent-version]').innerText()).trim();
    assert.equal(await version('old-pc'), '1.1.0');
    assert.equal(await version('beta-pc'), '1.2.0-beta.1');
    assert.equal(await version('current-pc'), '1.2.0');
    assert.equal(await version('gone-pc'), '1.0.0');
    const outdated = async (host) => row(host).locator('[data-testid=outdated]').count();
    assert.equal(await outdated('old-pc'), 1);
    assert.equal(await outdated('beta-pc'), 1, 'a prerelease is older than its final');
    assert.equal(await outdated('gone-pc'), 1);
    assert.equal(await outdated('current-pc'), 0);
    assert.match(await row('old-pc').locator('[data-testid=outdated]').getAttribute('title'), /1\.2\.0 is available on the stable channel/);

    assert.equal(await page.locator('[data-testid=update-selected]').isDisabled(), true);
    await row('old-pc').locator('input[data-action=select]').check();
    await row('gone-pc').locator('input[data-action=select]').check();
    assert.equal(await page.locator('[data-testid=selected-count]').innerText(), '2 selected');
    await page.click('[data-testid=update-selected]');
    const results = page.locator('[data-testid=bulk-results-table]');
    await results.waitFor();
    const result = async (host) => (await results.locator(`tr[data-agent-id="${ids[host]}"] td`).nth(1).innerText()).trim();
    assert.equal(await result('old-pc'), 'update queued');
    assert.equal(await result('gone-pc'), 'offline: not queued');
    await page.locator('.toast', { hasText: 'Update queued on 1 of 2 machines' }).waitFor();
    // The online agent was told to check now; the list shows it queued.
    await agents['old-pc'].until((a) => a.of('updateCommand').length === 1, 'an UpdateCommand');
    await row('old-pc').locator('[data-testid=agent] .pill[data-state=queued]').waitFor();
    // The selection survives the refresh.
    assert.equal(await row('old-pc').locator('input[data-action=select]').isChecked(), true);
    await shot(page, '23-machines-updates');
    assertClean();
  });

  test('the machine page: the update channel persists, Update now queues, progress shows, offline is said', async () => {
    const { page, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    await page.goto(`${server.url}/#/machines/${ids['current-pc']}`);
    const channel = page.locator('[data-testid=update-channel]');
    await channel.waitFor();
    assert.equal(await channel.inputValue(), '');
    assert.deepEqual(await channel.locator('option').allInnerTexts(), ['Inherit (the site’s, else the agent’s own)', 'Stable', 'Beta']);
    await channel.selectOption('beta');
    await page.locator('.toast', { hasText: 'Update channel: beta' }).waitFor();
    assert.equal((await apiCall(server.url, 'GET', `/api/machines/${ids['current-pc']}`, admin)).body.update_channel, 'beta');
    await page.reload();
    await page.locator('[data-testid=update-channel]').waitFor();
    assert.equal(await page.locator('[data-testid=update-channel]').inputValue(), 'beta');
    assert.equal(await page.locator('[data-testid=update-status]').innerText(), 'No update reported yet.');

    // Update now: queued, then the agent's progress.
    await page.click('[data-testid=update-now]');
    await page.locator('.toast', { hasText: 'Update requested' }).waitFor();
    await page.locator('[data-testid=update-status][data-state=queued]').waitFor();
    const agent = agents['current-pc'];
    await agent.until((a) => a.of('updateCommand').length === 1, 'an UpdateCommand');
    const requestId = agent.of('updateCommand')[0].requestId;
    agent.send({ updateStatus: { state: pb.UpdateState.UPDATE_STATE_DOWNLOADING, version: '1.2.0', detail: '40 % of 2.4 MiB', requestId } });
    // The page's 10 s refresh picks it up.
    await page.locator('[data-testid=update-status][data-state=downloading]').waitFor({ timeout: 15_000 });
    assert.match(await page.locator('[data-testid=update-status]').innerText(), /downloading update\s+1\.2\.0\s+40 % of 2\.4 MiB/);

    // Offline: the server's reason, in place.
    await page.goto(`${server.url}/#/machines/${ids['gone-pc']}`);
    await page.locator('[data-testid=update-now]').click();
    await page.locator('[data-testid=update-error] .alert').waitFor();
    assert.match(await page.locator('[data-testid=update-error]').innerText(), /the machine is offline; it checks for updates when it reconnects/);
    assertClean();
  });

  test('the Sites page sets a site update channel that persists and updates all its machines', async () => {
    const site = await apiCall(server.url, 'POST', '/api/sites', admin, { name: 'Branch', code: 'BR-1' });
    assert.equal(site.status, 201, JSON.stringify(site.body));
    const { page, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await uiLogin(page, server.url);
    await page.goto(`${server.url}/#/sites`);
    const select = page.locator(`tr[data-site-id="${site.body.id}"] select[data-action=update-channel]`);
    await select.waitFor();
    assert.equal(await select.inputValue(), '');
    await select.selectOption('beta');
    await page.locator('.toast', { hasText: 'Update channel of BR-1: beta' }).waitFor();
    await page.reload();
    await page.locator(`tr[data-site-id="${site.body.id}"] select[data-action=update-channel]`).waitFor();
    assert.equal(await page.locator(`tr[data-site-id="${site.body.id}"] select[data-action=update-channel]`).inputValue(), 'beta');
    // Update all: a site without machines says so; with an offline one, it is counted.
    const updateAll = page.locator(`tr[data-site-id="${site.body.id}"] [data-action=update-all]`);
    await updateAll.click();
    await page.locator('dialog.modal button', { hasText: 'Update all' }).click();
    await page.locator('.toast', { hasText: 'the site has no machines' }).waitFor();
    const enrolled = await apiCall(server.url, 'POST', '/api/enroll', null, {
      site_code: 'BR-1', enrollment_key: site.body.enrollment_key, machine_uid: 'uid-br-1', hostname: 'branch-pc',
      os: 'linux', os_version: 'Debian GNU/Linux 12', agent_version: '1.0.0', labels: {},
    });
    assert.equal(enrolled.status, 201, JSON.stringify(enrolled.body));
    await updateAll.click();
    await page.locator('dialog.modal button', { hasText: 'Update all' }).click();
    await page.locator('.toast', { hasText: 'BR-1: 0 queued, 1 offline' }).waitFor();
    assertClean();
  });

  test('deleting a release asks first and removes it', async () => {
    const { page, assertClean } = await openPage(browser);
    await uiLogin(page, server.url);
    await page.goto(`${server.url}/#/releases`);
    const c = card(page, '1.3.0-beta.1');
    await c.waitFor();
    await c.locator('[data-action=delete]').click();
    await page.locator('dialog.modal button', { hasText: 'Delete release' }).click();
    await page.locator('.toast', { hasText: 'Release 1.3.0-beta.1 deleted' }).waitFor();
    await c.waitFor({ state: 'detached' });
    assert.deepEqual((await apiCall(server.url, 'GET', '/api/releases', admin)).body.items.map((r) => r.version), ['1.2.0']);
    assertClean();
  });
});
