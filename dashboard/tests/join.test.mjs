// Browser tests of the customer's join page against a real server: the technician copies
// the link of a new code, the customer (not signed in) sees who is asking and the note,
// gives their name and gets the Linux and Windows downloads; a wrong code says so; a server
// without agent binaries says what to configure. With the real agent, Xvfb and xdotool present, the downloaded script run
// with `sh` starts a support session that waits for consent.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ADMIN_PASSWORD, DASHBOARD, HTTP_4XX, apiCall, launch, login, openPage, shot, startServer, uiLogin } from './lib/harness.mjs';

const AGENT = resolve(DASHBOARD, process.env.GURUCONNECT_AGENT_BIN ?? '../target/debug/guruconnect-agent');
const have = (t) => {
  try {
    execFileSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const e2eMissing = [...(existsSync(AGENT) ? [] : [AGENT]), ...['Xvfb', 'xdotool', 'xdpyinfo', 'curl'].filter((t) => !have(t))];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const CODE_RE = /^[2-9A-HJKMNP-Z]{3}-[2-9A-HJKMNP-Z]{3}-[2-9A-HJKMNP-Z]{3}$/;

let served; // a server with agent_binary_path
let bare; // a server without
let browser;
let scratch;

before(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'gc-join-test-'));
  // The real agent when it is built, otherwise a stand-in file (the page only needs one).
  let binary = AGENT;
  if (!existsSync(binary)) {
    binary = join(scratch, 'guruconnect-agent');
    writeFileSync(binary, '#!/bin/sh\necho stand-in agent "$@"\n', { mode: 0o755 });
  }
  // The Windows agent when it is cross-built, otherwise a stand-in .exe.
  let exe = process.env.GURUCONNECT_WINDOWS_AGENT_EXE;
  if (!exe || !existsSync(exe)) {
    exe = join(scratch, 'guruconnect-agent.exe');
    writeFileSync(exe, 'MZ stand-in Windows agent');
  }
  // The harness passes its environment on to the server.
  process.env.GURUCONNECT_AGENT_BINARY_PATH = binary;
  process.env.GURUCONNECT_AGENT_WINDOWS_EXE_PATH = exe;
  try {
    served = await startServer();
  } finally {
    delete process.env.GURUCONNECT_AGENT_BINARY_PATH;
    delete process.env.GURUCONNECT_AGENT_WINDOWS_EXE_PATH;
  }
  served.windowsExe = exe;
  bare = await startServer();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await served?.stop();
  await bare?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** A code with a note, created over the API. */
async function newCode(server, note) {
  const admin = await login(server.url, 'admin', ADMIN_PASSWORD);
  const r = await apiCall(server.url, 'POST', '/api/codes', admin, { note });
  assert.equal(r.status, 201);
  return { code: r.body.code, id: r.body.id, admin };
}

async function codeStatus(server, admin, id) {
  const r = await apiCall(server.url, 'GET', '/api/codes', admin);
  return r.body.items.find((c) => c.id === id)?.status;
}

describe('join page', () => {
  test('the technician copies the link; the customer sees who is asking and downloads the agent', async () => {
    // The technician's side: a new code and its link, from the card and from the row.
    const tech = await openPage(browser);
    await tech.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: served.url });
    await uiLogin(tech.page, served.url);
    await tech.page.click('a[href="#/codes"]');
    await tech.page.fill('#code-note', 'Printer in room 4');
    await tech.page.click('[data-testid=create-code]');
    const big = tech.page.locator('[data-testid=code-big]');
    await big.waitFor();
    const code = (await big.innerText()).trim();
    assert.match(code, CODE_RE);
    const link = `${served.url}/join/${code}`;
    assert.equal((await tech.page.locator('[data-testid=join-link]').innerText()).trim(), link);
    await tech.page.locator('.code-card button', { hasText: 'Copy link' }).click();
    assert.equal(await tech.page.evaluate(() => navigator.clipboard.readText()), link);
    const codeId = await big.getAttribute('data-code-id');
    const row = tech.page.locator(`tr[data-code-id="${codeId}"]`);
    await row.waitFor();
    await tech.page.evaluate(() => navigator.clipboard.writeText(''));
    await row.locator('[data-testid=copy-link]').click();
    assert.equal(await tech.page.evaluate(() => navigator.clipboard.readText()), link);
    // After a reload the row still offers the link (this tab created the code).
    await tech.page.reload();
    await row.locator('[data-testid=copy-link]').waitFor();
    tech.assertClean();
    await tech.context.close();

    // The customer's side: a fresh browser, nobody signed in.
    const customer = await openPage(browser);
    await customer.page.goto(link);
    const who = customer.page.locator('[data-testid=join-technician]');
    await who.waitFor();
    assert.equal(await who.innerText(), 'admin');
    assert.equal(await customer.page.locator('[data-testid=join-note]').innerText(), 'Printer in room 4');
    assert.match(await customer.page.locator('[data-testid=join-expires]').innerText(), /expires in \d+:\d\d/);
    assert.equal(await customer.page.title(), 'Join a support session · GuruConnect');
    const download = customer.page.locator('[data-testid=download-linux] a', { hasText: 'Download for Linux' });
    const href = await download.getAttribute('href');
    assert.equal(href, `/join/${code}/guruconnect-support.sh`);
    assert.equal((await customer.page.locator('[data-testid=run-command]').innerText()).trim(), 'sh guruconnect-support.sh');
    // The customer says who they are; the technician's codes list shows it.
    await customer.page.fill('#join-name', '  Dana at the front desk ');
    await customer.page.click('[data-testid=join-name-save]');
    await customer.page.locator('[data-testid=join-name-status]', { hasText: 'Saved: your technician sees "Dana at the front desk"' }).waitFor();
    {
      const admin = await login(served.url, 'admin', ADMIN_PASSWORD);
      const r = await apiCall(served.url, 'GET', '/api/codes', admin);
      assert.equal(r.body.items.find((c) => c.id === codeId)?.customer_name, 'Dana at the front desk');
    }
    // Windows: the signed .exe as it is, named so that it needs no flags.
    const port = new URL(served.url).port;
    const winLink = customer.page.locator('[data-testid=download-windows] a', { hasText: 'Download for Windows' });
    assert.equal(await winLink.getAttribute('href'), `/join/${code}/windows`);
    const [exe] = await Promise.all([customer.page.waitForEvent('download'), winLink.click()]);
    assert.equal(exe.suggestedFilename(), `GuruConnect-Support_${code}_127.0.0.1+${port}_http.exe`);
    assert.deepEqual(readFileSync(await exe.path()), readFileSync(served.windowsExe));
    await shot(customer.page, '19-join-page');
    // The browser's download is the script with this server and the code built in.
    const [file] = await Promise.all([customer.page.waitForEvent('download'), download.click()]);
    assert.equal(file.suggestedFilename(), 'guruconnect-support.sh');
    const script = await (await fetch(served.url + href)).text();
    assert.ok(script.includes(`SERVER='${served.url}'`), script);
    assert.ok(script.includes(`CODE='${code}'`), script);
    // A preview only: the code still works.
    const admin = await login(served.url, 'admin', ADMIN_PASSWORD);
    assert.equal(await codeStatus(served, admin, codeId), 'pending');
    customer.assertClean();
    await customer.context.close();
  });

  test('a wrong code says so; a code typed on /join is found', async () => {
    const { page, context, assertClean } = await openPage(browser, { allow: [HTTP_4XX] });
    await page.goto(`${served.url}/join/ZZZ-ZZZ-ZZZ`);
    const err = page.locator('[data-testid=join-error]');
    await err.waitFor();
    assert.match(await err.innerText(), /ZZZ-ZZZ-ZZZ is not valid: it may be mistyped, expired or already used/);
    await shot(page, '20-join-wrong-code');
    // Malformed input is refused before asking the server.
    await page.goto(`${served.url}/join`);
    await page.fill('#join-code', 'abc');
    await page.click('[data-testid=join-continue]');
    await page.locator('[data-testid=join-form-error]', { hasText: 'nine letters and digits' }).waitFor();
    // Typed as a customer might: lower case, with spaces.
    const { code } = await newCode(served, 'Accounts laptop');
    await page.fill('#join-code', code.toLowerCase().replaceAll('-', ' '));
    await page.click('[data-testid=join-continue]');
    await page.waitForURL(`${served.url}/join/${code}`);
    await page.locator('[data-testid=join-note]', { hasText: 'Accounts laptop' }).waitFor();
    // Back goes to the code form again.
    await page.goBack();
    await page.locator('#join-code').waitFor();
    assertClean();
    await context.close();
  });

  test('without an agent binary the page says what the administrator must configure', async () => {
    const { code } = await newCode(bare, '');
    const { page, context, assertClean } = await openPage(browser);
    await page.goto(`${bare.url}/join/${code}`);
    await page.locator('[data-testid=join-technician]').waitFor();
    const linux = page.locator('[data-testid=download-linux]');
    assert.match(await linux.innerText(), /not available[\s\S]*agent_binary_path/);
    assert.equal(await linux.locator('a').count(), 0);
    const windows = page.locator('[data-testid=download-windows]');
    assert.match(await windows.innerText(), /not available[\s\S]*agent_windows_exe_path/);
    assert.equal(await windows.locator('a').count(), 0);
    assert.equal(await page.locator('[data-testid=join-note]').count(), 0, 'no note, no note line');
    assertClean();
    await context.close();
  });

  test('the downloaded script, run with sh, starts a session that waits for consent', { skip: e2eMissing.length ? `missing: ${e2eMissing.join(', ')}` : false, timeout: 90_000 }, async () => {
    const display = `:${200 + Math.floor(Math.random() * 100)}`;
    const env = { ...process.env, DISPLAY: display, TMPDIR: scratch };
    delete env.GURUCONNECT_AGENT_BIN;
    delete env.GURUCONNECT_SERVER;
    const xvfb = spawn('Xvfb', [display, '-screen', '0', '1024x768x24', '-nolisten', 'tcp'], { stdio: 'ignore' });
    let run;
    let log = '';
    try {
      for (let i = 0; ; i++) {
        try {
          execFileSync('xdpyinfo', [], { env, stdio: 'ignore' });
          break;
        } catch {
          if (i > 100) throw new Error('Xvfb did not start');
          await sleep(200);
        }
      }
      const { code, id, admin } = await newCode(served, 'e2e join');
      const path = join(scratch, 'guruconnect-support.sh');
      writeFileSync(path, await (await fetch(`${served.url}/join/${code}/guruconnect-support.sh`)).text());
      run = spawn('sh', [path], { env, detached: true });
      run.stdout.on('data', (d) => (log += d));
      run.stderr.on('data', (d) => (log += d));
      // The session is there, waiting for the customer to allow it.
      let waiting = null;
      for (let end = Date.now() + 30_000; !waiting; ) {
        const r = await apiCall(served.url, 'GET', '/api/sessions', admin);
        waiting = (r.body.items ?? r.body).find((s) => s.live?.phase === 'waiting_consent');
        if (!waiting) {
          if (Date.now() > end || run.exitCode !== null) throw new Error(`no session waiting for consent; script output:\n${log}`);
          await sleep(300);
        }
      }
      assert.equal(await codeStatus(served, admin, id), 'consumed');
      // …and the consent prompt is on the customer's screen.
      const wid = execFileSync('xdotool', ['search', '--sync', '--name', 'GuruConnect'], { env, encoding: 'utf8', timeout: 15_000 }).trim();
      assert.ok(wid, 'consent window');
    } finally {
      // The script's process group: sh and the agent it started.
      if (run && run.exitCode === null) process.kill(-run.pid, 'SIGTERM');
      xvfb.kill('SIGTERM');
    }
  });
});
