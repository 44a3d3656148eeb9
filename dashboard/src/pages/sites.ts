// Sites (admin): zero-touch fleet enrollment. Create a site (its enrollment key is shown
// once), list sites with their key fingerprints, rotate a key (the new one is shown once),
// download the per-site Linux installer.

import { api, saveBlob } from '../api';
import type { PageContext } from '../router';
import { dateTime, h, icon, mount, dataTable } from '../ui/dom';
import { busy, confirmAction, copyButton, loading, showError, toast, toastError } from '../ui/feedback';
import type { Site, SiteWithKey } from '../types';

/** The installer's file name when the server sends none. */
function installerName(code: string): string {
  return `guruconnect-install-${code}.sh`;
}

/** The exact command an administrator runs on a machine (codes and keys need no quoting). */
export function installCommand(code: string, key: string): string {
  return `sudo sh ${installerName(code)} ${key}`;
}

export async function sitesPage({ root, signal }: PageContext): Promise<void> {
  let sites: Site[] = [];
  const name = h('input', { id: 'site-name', placeholder: 'e.g. Head Office', maxlength: '100', required: true, autocomplete: 'off' });
  const code = h('input', {
    id: 'site-code',
    placeholder: 'derived from the name',
    maxlength: '32',
    pattern: '[A-Za-z0-9_\\-]{2,32}',
    title: '2-32 letters, digits, - or _',
    autocomplete: 'off',
  });
  const create = h('button', { class: 'btn btn-primary', type: 'submit', 'data-testid': 'create-site' }, 'Create site');
  const form = h(
    'form',
    { class: 'card form-inline', 'aria-label': 'Create a site' },
    h('div', { class: 'field grow' }, h('label', { for: 'site-name' }, 'Site name'), name),
    h('div', { class: 'field' }, h('label', { for: 'site-code' }, 'Code (optional)'), code),
    h('div', { class: 'field' }, create),
  );
  const formError = h('div', {});
  const fresh = h('div', { class: 'fresh-slot' });
  const list = h('div', {}, loading());

  const downloadInstaller = (btn: HTMLButtonElement, s: Site) =>
    void busy(btn, () => api.download(`/api/sites/${encodeURIComponent(s.id)}/installer`))
      .then(({ blob, filename }) => {
        saveBlob(blob, filename ?? installerName(s.code));
        toast(`Installer for ${s.code} downloaded`, 'ok');
      })
      .catch(toastError);

  const installerButton = (s: Site, label: string, extra = '') => {
    const btn = h('button', { class: `btn ${extra}`.trim(), type: 'button', 'data-action': 'installer', 'aria-label': `Download the installer for ${s.code}` }, icon('download'), h('span', {}, label));
    btn.addEventListener('click', () => downloadInstaller(btn, s));
    return btn;
  };

  const showFresh = (s: SiteWithKey, rotated: boolean) => {
    const key = s.enrollment_key;
    const command = installCommand(s.code, key);
    const done = h('button', { class: 'btn btn-plain', type: 'button' }, 'I have stored it');
    done.addEventListener('click', () => fresh.replaceChildren());
    // A new key supersedes an earlier failed attempt.
    formError.replaceChildren();
    mount(
      fresh,
      h(
        'section',
        { class: 'code-card', 'aria-label': 'New enrollment key', 'data-testid': 'fresh-key', 'data-site-id': s.id },
        h('div', { class: 'code-card-label' }, `${rotated ? 'New enrollment key' : 'Enrollment key'} for ${s.name} (${s.code}) — ${s.key_fingerprint}`),
        h(
          'div',
          { class: 'alert alert-warn fresh-notice', role: 'note' },
          h('strong', {}, 'Shown only once. Store it now.'),
          ' The server keeps only a hash and cannot show this key again; if it is lost, rotate the key.',
          rotated ? ' The previous key no longer enrolls new machines.' : null,
        ),
        h('div', { class: 'key-big mono', 'data-testid': 'enrollment-key' }, key),
        h('div', { class: 'code-card-meta' }, copyButton(() => key, 'Copy key')),
        h('div', { class: 'code-card-label fresh-sub' }, 'Install command (Linux, as root)'),
        h('div', { class: 'key-big key-cmd mono', 'data-testid': 'install-command' }, command),
        h(
          'div',
          { class: 'code-card-meta' },
          copyButton(() => command, 'Copy command'),
          installerButton(s, 'Download installer'),
          h('span', { class: 'spacer' }),
          done,
        ),
        h(
          'p',
          { class: 'muted small' },
          `Copy the installer to each machine and run the command there: the agent is installed and enrolls into ${s.name} on its first start. The installer file does not contain the key.`,
        ),
      ),
    );
  };

  const draw = () => {
    if (!sites.length) {
      mount(
        list,
        h(
          'div',
          { class: 'empty' },
          h('h2', {}, 'No sites yet'),
          h(
            'p',
            {},
            'A site is a location or customer whose machines you install in bulk. Each site has an enrollment key: run the site installer with it and the machine enrolls into the site on its own, with no per-machine key to issue.',
          ),
        ),
      );
      return;
    }
    mount(
      list,
      dataTable('sites-table', ['Name', 'Code', 'Enrollment key', 'Created', 'Rotated', ''], sites.map((s) => {
        const rotate = h('button', { class: 'btn btn-sm btn-danger', type: 'button', 'data-action': 'rotate', 'aria-label': `Rotate the enrollment key of ${s.code}` }, 'Rotate key');
        rotate.addEventListener('click', () => {
          void confirmAction(
            'Rotate enrollment key',
            `Rotate the enrollment key of ${s.name} (${s.key_fingerprint})? New enrollments with the old key stop working: installers and scripts must use the new key, which is shown once. Machines already enrolled keep working; they use their own per-machine keys.`,
            'Rotate key',
          ).then((ok) => {
            if (!ok) return;
            void busy(rotate, () => api.post<SiteWithKey>(`/api/sites/${encodeURIComponent(s.id)}/rotate-key`))
              .then((k) => {
                showFresh(k, true);
                toast(`Enrollment key of ${k.code} rotated to ${k.key_fingerprint}`, 'ok');
                void load();
              })
              .catch(toastError);
          });
        });
        return h(
          'tr',
          { 'data-site-id': s.id, 'data-code': s.code },
          h('td', { class: 'strong' }, s.name),
          h('td', { class: 'mono nowrap' }, s.code),
          h('td', { class: 'mono nowrap', 'data-testid': 'fingerprint' }, s.key_fingerprint),
          h('td', { class: 'nowrap' }, dateTime(s.created_at)),
          h('td', { class: 'nowrap' }, s.rotated_at ? dateTime(s.rotated_at) : h('span', { class: 'muted' }, 'never')),
          h('td', { class: 'actions' }, installerButton(s, 'Installer', 'btn-sm'), rotate),
        );
      }), { class: 'nowrap' }),
    );
  };

  const load = async () => {
    try {
      sites = await api.get<Site[]>('/api/sites', undefined, signal);
      draw();
    } catch (e) {
      if (!signal.aborted) showError(list, e);
    }
  };

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    formError.replaceChildren();
    const body: { name: string; code?: string } = { name: name.value.trim() };
    const c = code.value.trim();
    if (c) body.code = c;
    void busy(create, () => api.post<SiteWithKey>('/api/sites', body))
      .then((s) => {
        name.value = '';
        code.value = '';
        showFresh(s, false);
        toast(`Site ${s.name} created`, 'ok');
        void load();
      })
      .catch((err: unknown) => showError(formError, err));
  });

  mount(
    root,
    h('p', { class: 'muted' }, 'Sites enroll machines without a per-machine key: install the agent with the site installer and the site enrollment key.'),
    form,
    formError,
    fresh,
    h('h2', { class: 'section-title' }, 'Sites'),
    list,
  );
  await load();
}
