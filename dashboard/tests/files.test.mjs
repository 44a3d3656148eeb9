// File transfer in the viewer (issue 14), end to end with the real server and a managed
// agent under Xvfb: an administrator uploads a 20 MB file through the Files panel (same bytes
// on disk, same SHA-256 in the row), the same name again is refused without Overwrite and
// replaced with it, two picked files and one dropped on the screen follow one another, a
// 5 MB file comes back as a browser download with its hash, and a 150 MB upload cancelled
// midway leaves nothing behind. A technician sees Files; a user with the role `viewer` does
// not. Skipped when target/debug/guruconnect-agent, Xvfb, xdotool or xdpyinfo is missing.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { execFileSync } from 'node:child_process';
import { ADMIN_PASSWORD, apiCall, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';
import { skipUnless, sleep, startManagedAgent, startXvfb, waitFor } from './lib/x11-agent.mjs';

const skip = skipUnless(['Xvfb', 'xdotool', 'xdpyinfo']);

const MB = 1024 * 1024;

let server;
let browser;
let admin;
let xs;
let agent;
let sessionId;
/** Where the agent writes (the test reads it back: same user, same machine). */
let dest;
/** Files the browser picks, outside `dest`. */
let src;

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

/** Writes `size` random bytes to `path` in 1 MiB pieces; resolves with their SHA-256. */
async function randomFile(path, size) {
  const out = createWriteStream(path);
  const hash = createHash('sha256');
  for (let left = size; left > 0; left -= MB) {
    const piece = randomBytes(Math.min(MB, left));
    hash.update(piece);
    if (!out.write(piece)) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
  return hash.digest('hex');
}

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await launch();
  admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  xs = await startXvfb({ base: 500 });
  dest = mkdtempSync(join(tmpdir(), 'gc-files-dest-'));
  src = mkdtempSync(join(tmpdir(), 'gc-files-src-'));
  agent = await startManagedAgent(xs, server.url, admin);
  const machine = await waitFor(async () => {
    const r = await apiCall(server.url, 'GET', `/api/machines/${agent.agentId}`, admin);
    return r.status === 200 && r.body.online && r.body.session_id ? r.body : null;
  }, () => `the managed machine online (agent log: ${agent.log().slice(-2000)})`);
  sessionId = machine.session_id;
});

after(async () => {
  agent?.proc.kill('SIGTERM');
  xs?.stop();
  await browser?.close();
  await server?.stop();
  for (const d of [dest, src, agent?.dir]) if (d) rmSync(d, { recursive: true, force: true });
});

/** Opens the viewer for the managed session, waits for control, and opens Files. */
async function openFiles(page) {
  await page.goto(`${server.url}/#/view/${sessionId}`);
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 20_000 });
  await page.click('[data-testid=files-button]');
  await page.locator('[data-testid=files-panel]').waitFor();
}

/** The newest transfer row (the list puts new ones first). */
const newest = (page) => page.locator('[data-testid=transfer]').first();

/** Waits until the newest row is over; resolves with its state and text. */
async function settled(page, what, ms = 60_000) {
  const row = newest(page);
  await page.waitForFunction(() => /^(done|failed|cancelled)$/.test(document.querySelector('[data-testid=transfer]')?.dataset.state ?? ''), null, { timeout: ms }).catch(async (e) => {
    throw new Error(`${what} did not finish: ${await row.innerText().catch(() => '?')} (agent log: ${agent.log().slice(-2000)})`, { cause: e });
  });
  return { state: await row.getAttribute('data-state'), text: await row.innerText() };
}

test('an administrator uploads, downloads and cancels transfers in the Files panel', { skip, timeout: 120_000 }, async () => {
  const { page, assertClean } = await openPage(browser);
  await uiLogin(page, server.url);
  await openFiles(page);
  assert.equal(await page.locator('[aria-controls=viewer-side][data-testid=files-button]').getAttribute('aria-pressed'), 'true');
  await page.fill('[data-testid=files-dir]', dest);

  // 20 MB up: the same bytes on disk, and the row shows the hash.
  const bigPath = join(src, 'random-20mb.bin');
  const bigHash = await randomFile(bigPath, 20 * MB);
  let started = Date.now();
  await page.setInputFiles('[data-testid=files-input]', bigPath);
  let r = await settled(page, 'the 20 MB upload');
  const upMs = Date.now() - started;
  assert.equal(r.state, 'done', r.text);
  assert.equal(sha256(readFileSync(join(dest, 'random-20mb.bin'))), bigHash);
  assert.equal(await newest(page).locator('[data-testid=transfer-sha]').innerText(), bigHash.slice(0, 12));
  assert.match(r.text, new RegExp(`Saved to ${join(dest, 'random-20mb.bin').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  assert.equal(await newest(page).locator('[role=progressbar]').getAttribute('aria-valuenow'), '100');
  assert.equal(await newest(page).locator('[data-testid=transfer-cancel]').isVisible(), false);
  console.log(`# upload 20 MiB: ${upMs} ms in the test, ${await newest(page).locator('[data-testid=transfer-speed]').innerText()} in the row`);
  // The folder is remembered for this machine.
  assert.equal(await page.evaluate((id) => localStorage.getItem(`gc.files.dir.${id}`), agent.agentId), dest);

  // The same name again: refused without Overwrite, the file untouched.
  const small = join(src, 'again', 'random-20mb.bin');
  mkdirSync(join(src, 'again'));
  const smallHash = await randomFile(small, 300 * 1024);
  await page.setInputFiles('[data-testid=files-input]', small);
  r = await settled(page, 'the refused upload');
  assert.equal(r.state, 'failed', r.text);
  assert.match(r.text, /exists/, r.text);
  assert.equal(sha256(readFileSync(join(dest, 'random-20mb.bin'))), bigHash, 'a refused upload changed the file');
  // With Overwrite it is replaced.
  await page.check('[data-testid=files-overwrite]');
  await page.setInputFiles('[data-testid=files-input]', small);
  r = await settled(page, 'the overwriting upload');
  assert.equal(r.state, 'done', r.text);
  assert.equal(sha256(readFileSync(join(dest, 'random-20mb.bin'))), smallHash);
  await page.uncheck('[data-testid=files-overwrite]');

  // Two files picked at once go one after another; a file dropped on the screen goes too.
  writeFileSync(join(src, 'one.txt'), 'first\n');
  writeFileSync(join(src, 'two.txt'), 'second\n');
  await page.setInputFiles('[data-testid=files-input]', [join(src, 'one.txt'), join(src, 'two.txt')]);
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=transfer]')].slice(0, 2).every((r) => r.dataset.state === 'done'), null, { timeout: 20_000 });
  assert.equal(readFileSync(join(dest, 'one.txt'), 'utf8'), 'first\n');
  assert.equal(readFileSync(join(dest, 'two.txt'), 'utf8'), 'second\n');
  const dropped = await page.evaluateHandle(() => {
    const dt = new DataTransfer();
    dt.items.add(new File(['dropped on the screen\n'], 'dropped.txt', { type: 'text/plain' }));
    return dt;
  });
  await page.dispatchEvent('[data-testid=screen]', 'drop', { dataTransfer: dropped });
  r = await settled(page, 'the dropped file');
  assert.equal(r.state, 'done', r.text);
  assert.equal(readFileSync(join(dest, 'dropped.txt'), 'utf8'), 'dropped on the screen\n');

  // 5 MB down: a browser download with the same hash.
  const fetchMe = join(dest, 'fetch-me.bin');
  const fetchHash = await randomFile(fetchMe, 5 * MB);
  await page.fill('[data-testid=files-path]', fetchMe);
  started = Date.now();
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.click('[data-testid=files-download]')]);
  assert.equal(download.suggestedFilename(), 'fetch-me.bin');
  const saved = join(src, 'downloaded.bin');
  await download.saveAs(saved);
  const downMs = Date.now() - started;
  assert.equal(sha256(readFileSync(saved)), fetchHash);
  r = await settled(page, 'the download');
  assert.equal(r.state, 'done', r.text);
  assert.equal(await newest(page).locator('[data-testid=transfer-sha]').innerText(), fetchHash.slice(0, 12));
  console.log(`# download 5 MiB: ${downMs} ms in the test, ${await newest(page).locator('[data-testid=transfer-speed]').innerText()} in the row`);

  // A folder comes down as <folder>.tar holding its files.
  const folder = join(dest, 'reports');
  mkdirSync(join(folder, 'march'), { recursive: true });
  writeFileSync(join(folder, 'summary.txt'), 'all good\n');
  writeFileSync(join(folder, 'march', 'week1.csv'), 'a,b\n1,2\n');
  await page.fill('[data-testid=files-path]', folder);
  const [tarDownload] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.click('[data-testid=files-download]')]);
  assert.equal(tarDownload.suggestedFilename(), 'reports.tar');
  const tarSaved = join(src, 'reports.tar');
  await tarDownload.saveAs(tarSaved);
  r = await settled(page, 'the folder download');
  assert.equal(r.state, 'done', r.text);
  const listing = execFileSync('tar', ['-tf', tarSaved], { encoding: 'utf8' }).split('\n').filter(Boolean).sort();
  // Folder entries carry the directory type flag (the tar crate writes no trailing '/').
  assert.deepEqual(listing, ['reports', 'reports/march', 'reports/march/week1.csv', 'reports/summary.txt']);
  const unpacked = mkdtempSync(join(tmpdir(), 'gc-untar-'));
  execFileSync('tar', ['-xf', tarSaved, '-C', unpacked]);
  assert.equal(readFileSync(join(unpacked, 'reports', 'summary.txt'), 'utf8'), 'all good\n');
  rmSync(unpacked, { recursive: true, force: true });
  assert.equal(execFileSync('tar', ['-xOf', tarSaved, 'reports/march/week1.csv'], { encoding: 'utf8' }), 'a,b\n1,2\n');

  // A missing file: the machine's error in the row.
  await page.fill('[data-testid=files-path]', join(dest, 'no-such-file.bin'));
  await page.click('[data-testid=files-download]');
  r = await settled(page, 'the download of a missing file');
  assert.equal(r.state, 'failed', r.text);
  await shot(page, 'files');

  // 150 MB up, cancelled midway: nothing is left, neither the file nor a partial one.
  const hugePath = join(src, 'huge-150mb.bin');
  await randomFile(hugePath, 150 * MB);
  await page.setInputFiles('[data-testid=files-input]', hugePath);
  const row = newest(page);
  await waitFor(async () => Number(await row.locator('[role=progressbar]').getAttribute('aria-valuenow')) >= 1 || (await row.getAttribute('data-state')) !== 'running', 'the 150 MB upload under way', 30_000);
  assert.equal(await row.getAttribute('data-state'), 'running', await row.innerText());
  const at = await row.locator('[role=progressbar]').getAttribute('aria-valuenow');
  await row.locator('[data-testid=transfer-cancel]').click();
  r = await settled(page, 'the cancelled upload', 20_000);
  assert.equal(r.state, 'cancelled', r.text);
  console.log(`# cancelled the 150 MiB upload at ${at} %: ${r.text.replace(/\s+/g, ' ')}`);
  await shot(page, 'files-cancelled');
  await sleep(3000);
  const left = readdirSync(dest);
  assert.ok(!left.some((f) => f.startsWith('huge-150mb') || f.endsWith('.gcpart')), `left in the folder: ${left.join(', ')}`);

  // The same upload cut off by the viewer's connection going away (a reload) resumes
  // where it stopped when the file is sent again, and the whole file's hash still agrees.
  const hugeHash = sha256(readFileSync(hugePath));
  await page.setInputFiles('[data-testid=files-input]', hugePath);
  const cut = newest(page);
  await waitFor(async () => Number(await cut.locator('[role=progressbar]').getAttribute('aria-valuenow')) >= 5 || (await cut.getAttribute('data-state')) !== 'running', 'the upload to cut off under way', 30_000);
  assert.equal(await cut.getAttribute('data-state'), 'running', await cut.innerText());
  await page.reload();
  await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 20_000 });
  if (!(await page.locator('[data-testid=files-panel]').isVisible())) await page.click('[data-testid=files-button]');
  await waitFor(async () => readdirSync(dest).includes('.huge-150mb.bin.gcpart'), 'the partial file kept for a resume', 10_000);
  await page.fill('[data-testid=files-dir]', dest);
  await page.setInputFiles('[data-testid=files-input]', hugePath);
  r = await settled(page, 'the resumed upload');
  assert.equal(r.state, 'done', r.text);
  assert.match(r.text, /resumed at \d/, r.text);
  assert.equal(sha256(readFileSync(join(dest, 'huge-150mb.bin'))), hugeHash);
  assert.ok(!readdirSync(dest).some((f) => f.endsWith('.gcpart')));
  console.log(`# resumed upload: ${r.text.replace(/\s+/g, ' ')}`);
  assertClean();
  await page.context().close();
});

test('a technician sees Files; a user with the role viewer does not', { skip, timeout: 60_000 }, async () => {
  assert.ok(sessionId, 'the machine came online');
  for (const [username, role, files] of [
    ['tech.fiona', 'technician', true],
    ['watch.walt', 'viewer', false],
  ]) {
    const password = `${username}-Password-42!`;
    const created = await apiCall(server.url, 'POST', '/api/users', admin, { username, password, role });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    // The technician's panel in the dark theme, for the screenshot.
    const { page, context, assertClean } = await openPage(browser, { colorScheme: files ? 'dark' : 'light' });
    await uiLogin(page, server.url, username, password);
    await page.goto(`${server.url}/#/view/${sessionId}`);
    await page.waitForSelector('[data-testid=conn-state][data-state=active]', { timeout: 20_000 });
    assert.equal(await page.locator('[data-testid=files-button]').count(), files ? 1 : 0, `${role}: Files button`);
    if (files) {
      assert.equal(await page.locator('[data-testid=files-button]').isVisible(), true);
      await page.click('[data-testid=files-button]');
      await page.locator('[data-testid=files-panel]').waitFor();
      assert.equal(await page.locator('[data-testid=transfers] [data-testid=transfer]').count(), 0);
      await shot(page, 'files-dark');
    }
    assertClean();
    await context.close();
  }
});
