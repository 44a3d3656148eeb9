// Releases (admin), `#/releases`: whether agent updates are on (and the signing key's
// fingerprint), publishing a release signed offline with `guruconnect-release sign`,
// uploading each platform's file (checked by the server against the signed size and
// SHA-256), the staged rollout of stable releases, deleting, and the changelog.

import { api, ApiError, uploadFile } from '../api';
import type { PageContext } from '../router';
import { bytes, dataTable, dateTime, h, mount, pill } from '../ui/dom';
import { busy, confirmAction, errorBox, loading, showError, toast } from '../ui/feedback';
import type { ChangelogEntry, Release, ReleaseArtifact, ReleaseList, SignedRelease } from '../types';

const releasePath = (version: string) => `/api/releases/${encodeURIComponent(version)}`;

export function channelPill(channel: string): HTMLElement {
  return pill(channel, channel === 'stable' ? 'ok' : 'info');
}

/** Reads the picked `release.json`; throws an `ApiError`-like message when it is not one. */
async function readSigned(file: File): Promise<SignedRelease> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await file.text());
  } catch {
    throw new ApiError(0, `${file.name} is not JSON: pick the release.json that guruconnect-release sign wrote.`);
  }
  const p = parsed as Partial<SignedRelease> | null;
  if (!p || typeof p.manifest !== 'string' || typeof p.signature !== 'string') {
    throw new ApiError(0, `${file.name} is not a signed release: it needs "manifest" and "signature" (from guruconnect-release sign).`);
  }
  return { manifest: p.manifest, signature: p.signature };
}

export async function releasesPage({ root, signal }: PageContext): Promise<void> {
  const stateSlot = h('div', { 'data-testid': 'updates-state' });
  const list = h('div', { 'data-testid': 'releases' }, loading());
  const changelog = h('div', { 'data-testid': 'changelog' }, loading('Loading the changelog…'));

  // Publish: the signed release.json.
  const fileInput = h('input', { id: 'release-file', type: 'file', accept: '.json,application/json', required: true, 'data-testid': 'release-file' });
  const publish = h('button', { class: 'btn btn-primary', type: 'submit', 'data-testid': 'publish' }, 'Publish');
  const publishError = h('div', { 'data-testid': 'publish-error' });
  const publishForm = h(
    'form',
    { class: 'card', 'aria-labelledby': 'publish-title' },
    h('h2', { id: 'publish-title' }, 'Publish a release'),
    h(
      'p',
      { class: 'muted small' },
      'Sign on a machine that holds the private key (it never comes to this server): ',
      h('code', {}, 'guruconnect-release sign --key release.key --version 1.4.0 --channel stable --artifact linux-x86_64=guruconnect-agent --notes-from-git --out release.json'),
      '. Publish that release.json here, then upload each platform’s file below.',
    ),
    h('div', { class: 'form-inline' }, h('div', { class: 'field grow' }, h('label', { for: 'release-file' }, 'Signed release (release.json)'), fileInput), h('div', { class: 'field' }, publish)),
    publishError,
  );
  publishForm.addEventListener('submit', (e) => {
    e.preventDefault();
    publishError.replaceChildren();
    const file = fileInput.files?.[0];
    if (!file) {
      mount(publishError, errorBox(new ApiError(0, 'Pick the release.json to publish.')));
      return;
    }
    void busy(publish, async () => api.post<Release>('/api/releases', await readSigned(file)))
      .then((r) => {
        fileInput.value = '';
        toast(`Release ${r.version} (${r.channel}) published`, 'ok');
        void load();
      })
      .catch((err: unknown) => showError(publishError, err));
  });

  const drawState = (l: ReleaseList) =>
    mount(
      stateSlot,
      l.updates_enabled
        ? h(
            'div',
            { class: 'alert alert-ok', role: 'status' },
            h('strong', {}, 'Agent updates are on.'),
            ' Releases must be signed by the key with fingerprint ',
            h('code', { 'data-testid': 'key-fingerprint' }, l.key_fingerprint ?? '?'),
            '; agents verify the signature themselves before installing.',
          )
        : h('div', { class: 'alert alert-warn', role: 'status' }, h('strong', {}, 'Agent updates are off. '), h('span', { 'data-testid': 'updates-reason' }, l.reason ?? 'No reason given.')),
    );

  const artifactRow = (r: Release, a: ReleaseArtifact) => {
    const input = h('input', { type: 'file', class: 'file-input', 'aria-label': `File for ${a.platform} (${a.file})`, 'data-action': 'artifact-file' });
    const progress = h('progress', { max: '100', value: '0', hidden: true, 'aria-label': `Upload of ${a.platform}` });
    const progressText = h('span', { class: 'muted small', 'data-testid': 'upload-progress' });
    const slot = h('div', { 'data-testid': 'upload-error' });
    const upload = h('button', { class: 'btn btn-sm', type: 'button', 'data-action': 'upload' }, a.uploaded ? 'Replace' : 'Upload');
    upload.addEventListener('click', () => {
      slot.replaceChildren();
      const file = input.files?.[0];
      if (!file) {
        mount(slot, errorBox(new ApiError(0, `Pick the file for ${a.platform} first (${a.file}, ${bytes(a.size)}).`)));
        return;
      }
      progress.hidden = false;
      progress.value = 0;
      progressText.textContent = '0 %';
      void busy(upload, () =>
        uploadFile<Release>(`${releasePath(r.version)}/artifacts/${encodeURIComponent(a.platform)}`, file, (sent, total) => {
          const pct = total ? Math.floor((sent / total) * 100) : 0;
          progress.value = pct;
          progressText.textContent = `${pct} %`;
        }, signal),
      )
        .then(() => {
          toast(`${a.platform} file of ${r.version} uploaded and verified`, 'ok');
          void load();
        })
        .catch((err: unknown) => {
          if (err instanceof DOMException && err.name === 'AbortError') return;
          progress.hidden = true;
          progressText.textContent = '';
          showError(slot, err);
        });
    });
    return h(
      'tr',
      { 'data-platform': a.platform },
      h('td', { class: 'mono nowrap' }, a.platform),
      h('td', {}, h('div', { class: 'mono small nowrap' }, a.file), a.min_version ? h('div', { class: 'muted small' }, `agents from ${a.min_version} on`) : null),
      h('td', { class: 'nowrap' }, bytes(a.size)),
      h('td', { class: 'mono small nowrap', title: a.sha256 }, `${a.sha256.slice(0, 10)}…`),
      h('td', { 'data-testid': 'artifact-state' }, a.uploaded ? pill('uploaded', 'ok') : pill('upload missing', 'warn')),
      h('td', {}, h('div', { class: 'row upload-row' }, input, upload, progress, progressText), slot),
    );
  };

  const releaseCard = (r: Release) => {
    const actionsError = h('div', {});
    const remove = h('button', { class: 'btn btn-sm btn-danger', type: 'button', 'data-action': 'delete' }, 'Delete');
    remove.addEventListener('click', () => {
      void confirmAction('Delete release', `Delete release ${r.version} and its files? Agents are no longer offered it; machines already running it keep it.`, 'Delete release').then((ok) => {
        if (!ok) return;
        void busy(remove, () => api.del(releasePath(r.version)))
          .then(() => {
            toast(`Release ${r.version} deleted`, 'ok');
            void load();
          })
          .catch((err: unknown) => showError(actionsError, err));
      });
    });
    let rollout: HTMLElement | null = null;
    if (r.channel === 'stable') {
      const input = h('input', { type: 'number', min: '0', max: '100', step: '1', class: 'rollout-input', 'aria-label': `Rollout of ${r.version} (percent)`, 'data-testid': 'rollout-input' });
      input.value = String(r.rollout_percent);
      const save = h('button', { class: 'btn btn-sm', type: 'submit', 'data-action': 'rollout' }, 'Set rollout');
      rollout = h('form', { class: 'row', 'aria-label': `Rollout of ${r.version}` }, h('span', { class: 'muted small' }, 'Rollout'), input, h('span', { class: 'muted small' }, '%'), save);
      rollout.addEventListener('submit', (e) => {
        e.preventDefault();
        actionsError.replaceChildren();
        const n = Number(input.value);
        if (!Number.isInteger(n) || n < 0 || n > 100) {
          mount(actionsError, errorBox(new ApiError(0, 'The rollout is a whole percentage from 0 to 100.')));
          return;
        }
        void busy(save, () => api.patch<Release>(releasePath(r.version), { rollout_percent: n }))
          .then((fresh) => {
            toast(`Rollout of ${fresh.version} set to ${fresh.rollout_percent} %`, 'ok');
            void load();
          })
          .catch((err: unknown) => showError(actionsError, err));
      });
    }
    const missing = r.artifacts.filter((a) => !a.uploaded).length;
    return h(
      'section',
      { class: 'card release-card', 'data-version': r.version, 'aria-label': `Release ${r.version}` },
      h(
        'div',
        { class: 'toolbar release-head' },
        h('h2', { class: 'mono' }, r.version),
        channelPill(r.channel),
        h('span', { 'data-testid': 'rollout' }, r.channel === 'stable' ? pill(`${r.rollout_percent} % of machines`, r.rollout_percent >= 100 ? 'muted' : 'warn') : null),
        missing ? pill(`${missing} file${missing === 1 ? '' : 's'} to upload`, 'warn') : null,
        h('span', { class: 'muted small' }, `${dateTime(r.created_at)} · by ${r.created_by}`),
        h('span', { class: 'spacer' }),
        h('div', { class: 'row' }, rollout, remove),
      ),
      actionsError,
      r.notes ? h('pre', { class: 'notes-pre' }, r.notes) : null,
      dataTable('artifacts-table', ['Platform', 'File', 'Size', 'SHA-256', 'State', 'Upload'], r.artifacts.map((a) => artifactRow(r, a))),
    );
  };

  const load = async () => {
    try {
      const [l, log] = await Promise.all([
        api.get<ReleaseList>('/api/releases', undefined, signal),
        api.get<{ items: ChangelogEntry[] }>('/api/changelog', undefined, signal),
      ]);
      drawState(l);
      mount(
        list,
        l.items.length
          ? l.items.map(releaseCard)
          : h('div', { class: 'empty' }, h('h2', {}, 'No releases yet'), h('p', {}, 'Publish a signed release above; agents on its channel update to it once its files are uploaded.')),
      );
      mount(
        changelog,
        log.items.length
          ? log.items.map((c) =>
              h('article', { class: 'card changelog-entry', 'data-version': c.version }, h('h3', {}, h('span', { class: 'mono' }, c.version), ' ', h('span', { class: 'muted small' }, dateTime(c.date))), c.notes ? h('pre', { class: 'notes-pre' }, c.notes) : h('p', { class: 'muted' }, 'No notes.')),
            )
          : h('div', { class: 'empty' }, h('p', {}, 'No stable releases yet; betas have no changelog entry.')),
      );
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.handled) return;
      showError(list, e);
      changelog.replaceChildren();
    }
  };

  mount(
    root,
    stateSlot,
    publishForm,
    h('h2', { class: 'section-title' }, 'Releases'),
    list,
    h('h2', { class: 'section-title' }, 'Changelog'),
    changelog,
  );
  await load();
}
