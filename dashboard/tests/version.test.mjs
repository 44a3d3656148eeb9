// Unit tests of src/version.ts (the console's semver order): compiled with Vite's esbuild
// transform into a temporary module, so no browser or server is needed.

import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { transformWithEsbuild } from 'vite';
import { DASHBOARD } from './lib/harness.mjs';

let v;

before(async () => {
  const file = join(DASHBOARD, 'src/version.ts');
  const { code } = await transformWithEsbuild(readFileSync(file, 'utf8'), file, { loader: 'ts', format: 'esm' });
  const dir = mkdtempSync(join(tmpdir(), 'gc-version-'));
  writeFileSync(join(dir, 'version.mjs'), code);
  v = await import(pathToFileURL(join(dir, 'version.mjs')).href);
  rmSync(dir, { recursive: true, force: true });
});

test('parses versions and refuses what is not one', () => {
  assert.deepEqual(v.parseVersion('1.5.0-beta.2'), { major: 1, minor: 5, patch: 0, pre: ['beta', 2] });
  assert.deepEqual(v.parseVersion('v2.0.1+abc.7'), { major: 2, minor: 0, patch: 1, pre: [] });
  for (const bad of ['', 'dev', '1.2', '01.2.3', '1.2.3-', null, undefined]) assert.equal(v.parseVersion(bad), null, String(bad));
});

test('orders by SemVer precedence; prereleases are older than their final', () => {
  const ordered = ['0.0.0-test', '0.9.9', '1.0.0-alpha', '1.0.0-alpha.1', '1.0.0-alpha.beta', '1.0.0-beta', '1.0.0-beta.2', '1.0.0-beta.11', '1.0.0-rc.1', '1.0.0', '1.0.1', '1.2.0', '1.10.0', '2.0.0'];
  for (let i = 0; i < ordered.length; i++) {
    for (let j = 0; j < ordered.length; j++) {
      assert.equal(v.compareVersions(ordered[i], ordered[j]), Math.sign(i - j), `${ordered[i]} vs ${ordered[j]}`);
    }
  }
  assert.equal(v.compareVersions('1.0.0+build.1', '1.0.0'), 0, 'build metadata is ignored');
  assert.equal(v.newestVersion(['1.2.0', 'garbage', '1.10.0', '1.10.0-beta.3']), '1.10.0');
  assert.equal(v.newestVersion([]), null);
});

test('outdated: older than the newest, never when a version is unknown', () => {
  assert.equal(v.isOutdated('1.2.0-beta.1', '1.2.0'), true);
  assert.equal(v.isOutdated('0.0.0-test', '1.2.0'), true);
  assert.equal(v.isOutdated('1.2.0', '1.2.0'), false);
  assert.equal(v.isOutdated('1.3.0-beta.1', '1.2.0'), false);
  assert.equal(v.isOutdated('', '1.2.0'), false);
  assert.equal(v.isOutdated('dev', '1.2.0'), false);
  assert.equal(v.isOutdated('1.0.0', null), false);
});
