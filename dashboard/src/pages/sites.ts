// Sites (admin): zero-touch fleet enrollment. Create a site (its enrollment key is shown
// once), list sites with their key fingerprints, rotate a key (the new one is shown once),
// download the per-site installers (Linux script, Windows MSI) and build one with labels,
// and choose each site's agent update channel.

import { api, saveBlob } from '../api';
import type { PageContext } from '../router';
import { dateTime, h, icon, mount, dataTable } from '../ui/dom';
import { busy, confirmAction, copyButton, loading, showError, toast, toastError } from '../ui/feedback';
import type { InstallerAvailability, InstallerPlatform, Site, SiteWithKey, UpdateChannel } from '../types';

/** The installer's file name when the server sends none. */
function installerName(code: string, platform: InstallerPlatform = 'linux'): string {
  return platform === 'windows' ? `guruconnect-${code}.msi` : `guruconnect-install-${code}.sh`;
}

/** The exact command an administrator runs on a machine (codes and keys need no quoting). */
export function installCommand(code: string, key: string, platform: InstallerPlatform = 'linux'): string {
  return platform === 'windows'
    ? `msiexec /i ${installerName(code, 'windows')} /qn ENROLLMENT_KEY=${key}`
    : `sudo sh ${installerName(code)} ${key}`;
}

/** Labels an installer carries. */
interface BuilderLabels {
  company: string;
  department: string;
  device_type: string;
  tags: string;
}

/** `/api/sites/:id/installer` with the platform and the non-empty labels. */
export function installerPath(siteId: string, platform: InstallerPlatform, labels?: BuilderLabels): string {
  const q = new URLSearchParams({ platform });
  for (const [k, v] of Object.entries(labels ?? {})) {
    if (v.trim()) q.set(k, v.trim());
  }
  return `/api/sites/${encodeURIComponent(siteId)}/installer?${q.toString()}`;
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

  let availability: InstallerAvailability | null = null;
  const platformName = (p: InstallerPlatform) => (p === 'windows' ? 'Windows MSI' : 'Linux script');

  const downloadInstaller = (btn: HTMLButtonElement, s: Site, platform: InstallerPlatform, labels?: BuilderLabels) =>
    void busy(btn, () => api.download(installerPath(s.id, platform, labels)))
      .then(({ blob, filename }) => {
        saveBlob(blob, filename ?? installerName(s.code, platform));
        toast(`${platformName(platform)} for ${s.code} downloaded`, 'ok');
      })
      .catch(toastError);

  const installerButton = (s: Site, label: string, extra = '', platform: InstallerPlatform = 'linux') => {
    const btn = h(
      'button',
      {
        class: `btn ${extra}`.trim(),
        type: 'button',
        'data-action': platform === 'windows' ? 'installer-windows' : 'installer',
        'aria-label': `Download the ${platformName(platform)} for ${s.code}`,
      },
      icon('download'),
      h('span', {}, label),
    );
    const missing = availability?.[platform];
    if (missing && !missing.available) {
      btn.disabled = true;
      btn.title = missing.hint ?? 'not available on this server';
    }
    btn.addEventListener('click', () => downloadInstaller(btn, s, platform));
    return btn;
  };

  // The installer builder: a site, a platform and labels -> a download and its command.
  const builder = h('section', { class: 'card', 'aria-label': 'Installer builder', 'data-testid': 'installer-builder' });
  const builderSite = h('select', { id: 'builder-site' }) as HTMLSelectElement;
  const builderPlatform = h(
    'select',
    { id: 'builder-platform' },
    h('option', { value: 'linux' }, 'Linux (shell script)'),
    h('option', { value: 'windows' }, 'Windows (MSI)'),
  ) as HTMLSelectElement;
  const labelInput = (id: string, placeholder: string) =>
    h('input', { id: `builder-${id}`, placeholder, maxlength: '128', autocomplete: 'off' }) as HTMLInputElement;
  const builderFields = {
    company: labelInput('company', 'e.g. Acme Dental'),
    department: labelInput('department', 'e.g. Front desk'),
    device_type: labelInput('device_type', 'desktop, laptop, server…'),
    tags: labelInput('tags', 'comma-separated, e.g. pos,kiosk'),
  };
  const builderNote = h('div', { class: 'muted small', 'data-testid': 'builder-note' });
  const builderDownload = h('button', { class: 'btn btn-primary', type: 'button', 'data-testid': 'builder-download' }, icon('download'), h('span', {}, 'Download'));
  const builderCommand = h('div', { class: 'key-big key-cmd mono', 'data-testid': 'builder-command' });
  const builderLabels = (): BuilderLabels => ({
    company: builderFields.company.value,
    department: builderFields.department.value,
    device_type: builderFields.device_type.value,
    tags: builderFields.tags.value,
  });
  const builderChoice = () => {
    const site = sites.find((x) => x.id === builderSite.value);
    const platform = builderPlatform.value as InstallerPlatform;
    return { site, platform };
  };
  const refreshBuilder = () => {
    const { site, platform } = builderChoice();
    const state = availability?.[platform];
    builderDownload.disabled = !site || (state ? !state.available : false);
    builderCommand.textContent = site ? installCommand(site.code, '<enrollment key>', platform) : '';
    const notes: string[] = [];
    if (state?.hint) notes.push(state.hint);
    if (platform === 'windows' && state?.available) {
      notes.push(state.signed ? 'The MSI is Authenticode-signed by this server.' : 'The MSI is not signed: this server has no signing certificate (installer_signing_pkcs12).');
      notes.push('Deploy it with your RMM or a GPO; the enrollment key goes on the command line, never in the file.');
    }
    builderNote.replaceChildren(...notes.map((n) => h('p', {}, n)));
  };
  builderSite.addEventListener('change', refreshBuilder);
  builderPlatform.addEventListener('change', refreshBuilder);
  builderDownload.addEventListener('click', () => {
    const { site, platform } = builderChoice();
    if (site) downloadInstaller(builderDownload, site, platform, builderLabels());
  });
  const drawBuilder = () => {
    const chosen = builderSite.value;
    builderSite.replaceChildren(...sites.map((x) => h('option', { value: x.id }, `${x.name} (${x.code})`)));
    if (chosen && sites.some((x) => x.id === chosen)) builderSite.value = chosen;
    mount(
      builder,
      h('h2', { class: 'section-title' }, 'Installer builder'),
      h(
        'div',
        { class: 'form-inline' },
        h('div', { class: 'field' }, h('label', { for: 'builder-site' }, 'Site'), builderSite),
        h('div', { class: 'field' }, h('label', { for: 'builder-platform' }, 'Platform'), builderPlatform),
        ...Object.entries(builderFields).map(([k, input]) =>
          h('div', { class: 'field' }, h('label', { for: `builder-${k}` }, k === 'device_type' ? 'Device type' : k[0].toUpperCase() + k.slice(1)), input),
        ),
      ),
      builderNote,
      h('div', { class: 'code-card-label fresh-sub' }, 'Run on each machine (as root / administrator)'),
      builderCommand,
      h('div', { class: 'code-card-meta' }, builderDownload, copyButton(() => builderCommand.textContent ?? '', 'Copy command')),
    );
    refreshBuilder();
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
        ),
        h('div', { class: 'code-card-label fresh-sub' }, 'Install command (Windows, as administrator)'),
        h('div', { class: 'key-big key-cmd mono', 'data-testid': 'install-command-windows' }, installCommand(s.code, key, 'windows')),
        h(
          'div',
          { class: 'code-card-meta' },
          copyButton(() => installCommand(s.code, key, 'windows'), 'Copy command'),
          installerButton(s, 'Download MSI', '', 'windows'),
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

  /** The site's update channel: its machines without a channel of their own follow it. */
  const channelSelect = (s: Site) => {
    const select = h(
      'select',
      { class: 'select-sm', 'data-action': 'update-channel', 'aria-label': `Update channel of ${s.code}` },
      h('option', { value: '' }, 'Default (the agent’s own, else stable)'),
      h('option', { value: 'stable' }, 'Stable'),
      h('option', { value: 'beta' }, 'Beta'),
    );
    let saved = s.update_channel ?? '';
    select.value = saved;
    select.addEventListener('change', () => {
      const channel = (select.value || null) as UpdateChannel | null;
      select.disabled = true;
      api
        .put<{ channel: UpdateChannel | null }>(`/api/sites/${encodeURIComponent(s.id)}/update-channel`, { channel })
        .then((r) => {
          saved = r.channel ?? '';
          select.value = saved;
          s.update_channel = r.channel;
          toast(`Update channel of ${s.code}: ${r.channel ?? 'default'}`, 'ok');
        })
        .catch((err: unknown) => {
          select.value = saved;
          toastError(err);
        })
        .finally(() => (select.disabled = false));
    });
    return select;
  };

  /** Tells every connected machine of the site to update now; offline ones check later. */
  const updateAllButton = (s: Site) => {
    const button = h('button', { class: 'btn btn-sm', type: 'button', 'data-action': 'update-all', 'aria-label': `Update the machines of ${s.code}` }, 'Update all');
    button.addEventListener('click', () => {
      void confirmAction('Update all machines', `Tell every connected machine of ${s.name} to install the newest release of its channel now? Offline machines check when they reconnect.`, 'Update all', 'primary').then((ok) => {
        if (!ok) return;
        void busy(button, () => api.post<{ items: { agent_id: string; state: string }[] }>('/api/machines/update', { site_id: s.id }))
          .then((r) => {
            const queued = r.items.filter((i) => i.state === 'queued').length;
            toast(`${s.code}: ${queued} queued, ${r.items.length - queued} offline (they check when they reconnect)`, 'ok');
          })
          .catch(toastError);
      });
    });
    return button;
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
      dataTable('sites-table', ['Name', 'Code', 'Enrollment key', 'Created', 'Rotated', 'Updates', ''], sites.map((s) => {
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
          h('td', { class: 'nowrap' }, channelSelect(s), ' ', updateAllButton(s)),
          h('td', { class: 'actions' }, installerButton(s, 'Linux', 'btn-sm'), installerButton(s, 'Windows', 'btn-sm', 'windows'), rotate),
        );
      }), { class: 'nowrap' }),
    );
  };

  const load = async () => {
    try {
      [sites, availability] = await Promise.all([
        api.get<Site[]>('/api/sites', undefined, signal),
        api.get<InstallerAvailability>('/api/installers', undefined, signal),
      ]);
      draw();
      drawBuilder();
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
    builder,
  );
  await load();
}
