// Session recordings (docs/recordings.md): `#/recordings` lists them (administrators also
// set the recording policy there) and `#/recordings/<id>` plays one back: play/pause,
// speed, a seek bar with the session's events, and the events beside the picture.

import { api, fetchFile } from '../api';
import * as session from '../session';
import type { PageContext } from '../router';
import { bytes, dataTable, dateTime, duration, h, mount, pill } from '../ui/dom';
import { busy, confirmAction, copyButton, loading, showError, toast, toastError } from '../ui/feedback';
import type { Recording, RecordingDetail, RecordingEvent, RecordingPolicy, Site } from '../types';
import { RecordingPlayer, skipBytes, type PlayerState } from '../viewer/recording';

const SPEEDS = [0.5, 1, 2, 4, 8];
/** Arrow keys on the picture move this far. */
const STEP_MS = 5000;

function statusPill(r: Recording): HTMLElement {
  if (r.status === 'recording') return pill('recording', 'info');
  if (r.status === 'complete') return pill('complete', 'ok');
  if (r.status === 'failed') {
    const p = pill('failed', 'bad');
    if (r.error) p.title = r.error;
    return p;
  }
  return pill(r.status, 'muted');
}

function kindPill(kind: string): HTMLElement {
  return kind === 'attended' ? pill('attended', 'info') : pill(kind || 'managed', 'muted');
}

/** The recorded time: still growing while the session is recorded. */
function recordedFor(r: Recording): string {
  return r.status === 'recording' ? duration(Date.now() - r.started_at) : duration(r.duration_ms);
}

function policyText(p: RecordingPolicy): string {
  const which = p.mode === 'all' ? 'every session is recorded' : p.mode === 'sites' ? `sessions of machines in ${p.sites.length} site${p.sites.length === 1 ? '' : 's'} are recorded` : 'recording is off';
  return `Policy: ${which}; recordings are kept ${p.retention_days} day${p.retention_days === 1 ? '' : 's'}.`;
}

// ---- the list ----

/** The administrators' policy form: mode, sites (for mode `sites`) and retention. */
function policyForm(signal: AbortSignal, onSaved: (p: RecordingPolicy) => void): { el: HTMLElement; load: () => Promise<RecordingPolicy | null> } {
  const mode = h(
    'select',
    { id: 'policy-mode', 'data-testid': 'policy-mode' },
    h('option', { value: 'off' }, 'Off'),
    h('option', { value: 'all' }, 'All sessions'),
    h('option', { value: 'sites' }, 'Sessions of chosen sites'),
  );
  // Disabled until the saved policy is shown: a choice made before would be overwritten
  // by it, and a save would send the blank form.
  const retention = h('input', { id: 'policy-retention', type: 'number', min: '1', max: '3650', required: true, disabled: true, 'data-testid': 'policy-retention' });
  mode.disabled = true;
  const sitesBox = h('fieldset', { class: 'policy-sites', 'data-testid': 'policy-sites' });
  const save = h('button', { class: 'btn btn-primary', type: 'submit', disabled: true, 'data-testid': 'policy-save' }, 'Save policy');
  const formError = h('div', {});
  const form = h(
    'form',
    { class: 'card', 'aria-label': 'Recording policy', 'aria-busy': 'true', 'data-state': 'loading', 'data-testid': 'policy-form' },
    h('h2', {}, 'Recording policy'),
    h(
      'div',
      { class: 'form-inline' },
      h('div', { class: 'field' }, h('label', { for: 'policy-mode' }, 'Record'), mode),
      h('div', { class: 'field' }, h('label', { for: 'policy-retention' }, 'Keep (days)'), retention),
      h('div', { class: 'field' }, save),
    ),
    sitesBox,
    h('p', { class: 'muted small' }, 'A change applies to sessions that start after it. Older recordings are deleted by the daily sweep.'),
    formError,
  );
  let sites: Site[] = [];
  let chosen = new Set<string>();
  const drawSites = () => {
    sitesBox.hidden = mode.value !== 'sites';
    if (!sites.length) {
      mount(sitesBox, h('legend', {}, 'Sites'), h('p', { class: 'muted small' }, 'There are no sites yet. ', h('a', { href: '#/sites' }, 'Create one'), ' first.'));
      return;
    }
    mount(
      sitesBox,
      h('legend', {}, 'Sites'),
      h(
        'div',
        { class: 'chips' },
        sites.map((s) => {
          const box = h('input', { type: 'checkbox', value: s.id, checked: chosen.has(s.id) });
          box.addEventListener('change', () => (box.checked ? chosen.add(s.id) : chosen.delete(s.id)));
          return h('label', { class: 'toggle chip' }, box, `${s.name} (${s.code})`);
        }),
      ),
    );
  };
  mode.addEventListener('change', drawSites);
  const show = (p: RecordingPolicy) => {
    mode.value = p.mode;
    retention.value = String(p.retention_days);
    chosen = new Set(p.sites);
    drawSites();
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    formError.replaceChildren();
    const body: RecordingPolicy = {
      mode: mode.value as RecordingPolicy['mode'],
      // Only sites that still exist: a removed one would be refused.
      sites: mode.value === 'sites' ? sites.filter((s) => chosen.has(s.id)).map((s) => s.id) : [],
      retention_days: Number(retention.value),
    };
    void busy(save, () => api.put<RecordingPolicy>('/api/settings/recording', body))
      .then((p) => {
        show(p);
        onSaved(p);
        toast('Recording policy saved', 'ok');
      })
      .catch((err: unknown) => showError(formError, err));
  });
  const load = async () => {
    try {
      const [p, s] = await Promise.all([api.get<RecordingPolicy>('/api/settings/recording', undefined, signal), api.get<Site[]>('/api/sites', undefined, signal)]);
      sites = s;
      show(p);
      mode.disabled = retention.disabled = save.disabled = false;
      form.removeAttribute('aria-busy');
      form.dataset.state = 'ready';
      return p;
    } catch (e) {
      if (!signal.aborted) {
        form.removeAttribute('aria-busy');
        form.dataset.state = 'error';
        showError(formError, e);
      }
      return null;
    }
  };
  return { el: form, load };
}

function recordingRow(r: Recording, onDeleted: () => void): HTMLTableRowElement {
  const play = h('a', { class: 'btn btn-primary btn-sm', href: `#/recordings/${encodeURIComponent(r.id)}`, 'aria-label': `Play the recording of ${r.hostname}`, 'data-testid': 'recording-play' }, 'Play');
  let del: HTMLButtonElement | null = null;
  if (session.isAdmin()) {
    const btn = h('button', { class: 'btn btn-danger btn-sm', type: 'button', 'data-testid': 'recording-delete', 'aria-label': `Delete the recording of ${r.hostname}` }, 'Delete');
    btn.addEventListener('click', () => {
      void confirmAction('Delete recording', `Delete the recording of ${r.hostname} from ${dateTime(r.started_at)}? The file is removed for good.`, 'Delete').then((ok) => {
        if (!ok) return;
        void busy(btn, () => api.del(`/api/recordings/${encodeURIComponent(r.id)}`))
          .then(() => {
            toast('Recording deleted', 'ok');
            onDeleted();
          })
          .catch(toastError);
      });
    });
    del = btn;
  }
  return h(
    'tr',
    { 'data-recording-id': r.id, 'data-status': r.status },
    h('td', {}, h('a', { class: 'strong', href: `#/machines/${encodeURIComponent(r.agent_id)}` }, r.hostname || r.agent_id), h('div', { class: 'muted small mono' }, r.session_id.slice(0, 8))),
    h('td', {}, kindPill(r.kind)),
    h('td', { class: 'nowrap' }, dateTime(r.started_at)),
    h('td', { class: 'mono', ...(r.status === 'recording' ? { 'data-started': String(r.started_at) } : {}) }, recordedFor(r)),
    h('td', { class: 'nowrap' }, bytes(r.bytes)),
    h('td', { 'data-testid': 'recording-status' }, statusPill(r)),
    h('td', { class: 'mono small', title: r.sha256 ?? 'computed when the recording closes', 'data-testid': 'recording-sha' }, r.sha256 ? r.sha256.slice(0, 12) : h('span', { class: 'muted' }, '—')),
    h('td', { class: 'actions' }, play, del),
  );
}

export async function recordingsPage({ root, signal }: PageContext): Promise<() => void> {
  let recordings: Recording[] = [];
  let policy: RecordingPolicy | null = null;
  const list = h('div', {}, loading());
  const policyLine = h('p', { class: 'muted', 'data-testid': 'policy-line' });
  const form = session.isAdmin() ? policyForm(signal, (p) => {
    policy = p;
    draw();
  }) : null;

  const draw = () => {
    if (!recordings.length) {
      const hint = policy?.mode === 'off' ? 'Recording is off: sessions are recorded once the policy says so.' : 'Recordings appear here when a recorded session starts.';
      mount(list, h('div', { class: 'empty' }, h('h2', {}, 'No recordings'), h('p', {}, hint)));
      return;
    }
    mount(list, dataTable('recordings-table', ['Machine', 'Kind', 'Started', 'Duration', 'Size', 'Status', 'SHA-256', ''], recordings.map((r) => recordingRow(r, () => void load()))));
  };
  const load = async () => {
    try {
      const r = await api.get<{ recordings: Recording[] }>('/api/recordings', { limit: 200 }, signal);
      recordings = r.recordings;
      draw();
    } catch (e) {
      if (!signal.aborted) showError(list, e);
    }
  };

  mount(root, form?.el ?? policyLine, h('h2', { class: 'section-title' }, 'Recordings'), list);
  const loadPolicy = async () => {
    if (form) {
      policy = await form.load();
      return;
    }
    try {
      policy = await api.get<RecordingPolicy>('/api/settings/recording', undefined, signal);
      policyLine.textContent = policyText(policy);
    } catch {
      // The list says what went wrong, if anything.
    }
  };
  await Promise.all([loadPolicy(), load()]);
  draw();
  // While a session is recorded its row changes: refresh until it closes.
  const poll = window.setInterval(() => {
    if (recordings.some((r) => r.status === 'recording')) void load();
  }, 5000);
  const tick = window.setInterval(() => {
    list.querySelectorAll<HTMLElement>('td[data-started]').forEach((td) => {
      td.textContent = duration(Date.now() - Number(td.dataset.started));
    });
  }, 1000);
  return () => {
    window.clearInterval(poll);
    window.clearInterval(tick);
  };
}

// ---- the player ----

/** One line of the event list (and one marker on the seek bar). */
interface Moment {
  t: number;
  /** Input activity: the end of the run of seconds with input. */
  until?: number;
  type: string;
  label: string;
  text?: string;
}

/** The index's events as the list shows them; seconds with input merge into runs. */
function moments(events: RecordingEvent[]): Moment[] {
  const out: Moment[] = [];
  let run: Moment | null = null;
  for (const e of [...events].sort((a, b) => a.t - b.t)) {
    if (e.type === 'input') {
      if (run && e.t - (run.until ?? run.t) <= 1000) run.until = e.t + 1000;
      else {
        run = { t: e.t, until: e.t + 1000, type: 'input', label: 'Input' };
        out.push(run);
      }
      continue;
    }
    if (e.type === 'chat') out.push({ t: e.t, type: 'chat', label: `Chat · ${e.from || 'unknown'}`, text: e.text ?? '' });
    else if (e.type === 'viewer_joined') out.push({ t: e.t, type: e.type, label: `${e.user ?? 'A viewer'} joined${e.mode ? ` (${e.mode === 'view' ? 'view only' : e.mode})` : ''}` });
    else if (e.type === 'viewer_left') out.push({ t: e.t, type: e.type, label: `${e.user ?? 'A viewer'} left` });
    else if (e.type === 'consent') out.push({ t: e.t, type: e.type, label: e.granted ? 'Consent given' : 'Consent refused' });
    else out.push({ t: e.t, type: e.type, label: e.type });
  }
  return out.sort((a, b) => a.t - b.t);
}

export async function recordingPage({ root, params, signal }: PageContext): Promise<(() => void) | void> {
  const id = params[0] ?? '';
  const back = h('a', { class: 'btn btn-sm', href: '#/recordings' }, '← Recordings');
  mount(root, loading());
  let rec: RecordingDetail;
  try {
    rec = await api.get<RecordingDetail>(`/api/recordings/${encodeURIComponent(id)}`, undefined, signal);
  } catch (e) {
    if (signal.aborted) return;
    const slot = h('div', {});
    mount(root, h('div', { class: 'toolbar' }, back), slot);
    showError(slot, e);
    return;
  }
  document.title = `Recording · ${rec.hostname} · GuruConnect`;
  const endT = Math.max(0, rec.end_t);
  const events = moments(rec.events ?? []);

  // ---- layout ----
  const canvas = h('canvas', { class: 'rec-canvas', width: '0', height: '0', 'aria-label': 'Recorded screen', 'data-testid': 'rec-canvas' });
  const cursor = h('canvas', { class: 'rec-cursor', 'aria-hidden': 'true', 'data-testid': 'rec-cursor' });
  const overlay = h('div', { class: 'rec-overlay', role: 'status', 'aria-live': 'polite' }, 'Loading…');
  const stage = h('div', { class: 'rec-stage', tabindex: '0', 'aria-label': 'Recording; Space plays or pauses, arrow keys move 5 s' }, h('div', { class: 'rec-screen' }, canvas, cursor), overlay);
  const playBtn = h('button', { class: 'btn btn-primary btn-sm rec-play', type: 'button', 'data-testid': 'rec-play', disabled: true }, 'Play');
  const timeText = h('span', { class: 'mono rec-time', 'data-testid': 'rec-time' }, `${duration(0)} / ${duration(endT)}`);
  const speed = h('select', { class: 'select-sm', 'aria-label': 'Speed', 'data-testid': 'rec-speed' }, SPEEDS.map((s) => h('option', { value: String(s), selected: s === 1 }, `${s}×`)));
  const seekBar = h('input', { type: 'range', class: 'rec-seek', min: '0', max: String(endT), step: '1', value: '0', 'aria-label': 'Position', 'data-testid': 'rec-seek', disabled: endT === 0 });
  const markers = h(
    'div',
    { class: 'rec-markers' },
    events.map((m) => {
      const left = endT ? (m.t / endT) * 100 : 0;
      const width = m.until !== undefined && endT ? (Math.min(endT, m.until) / endT) * 100 - left : 0;
      return h('button', {
        class: `rec-marker rec-marker-${m.type}`,
        type: 'button',
        style: `left:${left}%${width ? `;width:${width}%` : ''}`,
        title: `${duration(m.t)} ${m.label}${m.text ? `: ${m.text}` : ''}`,
        'aria-label': `${m.label} at ${duration(m.t)}`,
        'data-type': m.type,
        'data-t': String(m.t),
        'data-testid': 'rec-marker',
        tabindex: '-1',
        onclick: () => void player.seek(m.t),
      });
    }),
  );
  const eventItems = events.map((m) =>
    h(
      'li',
      { 'data-type': m.type, 'data-t': String(m.t) },
      h(
        'button',
        { type: 'button', class: 'rec-event', onclick: () => void player.seek(m.t) },
        h('span', { class: 'mono rec-event-t' }, m.until !== undefined ? `${duration(m.t)}–${duration(Math.min(endT, m.until))}` : duration(m.t)),
        h('span', { class: `rec-dot rec-marker-${m.type}`, 'aria-hidden': 'true' }),
        h('span', { class: 'rec-event-label' }, m.label, m.text ? h('span', { class: 'rec-event-text' }, m.text) : null),
      ),
    ),
  );
  const eventList = h('ol', { class: 'rec-events', 'data-testid': 'rec-events' }, eventItems);
  const errorSlot = h('div', {});
  const playerEl = h(
    'div',
    { class: 'rec-player', 'data-testid': 'player', 'data-state': 'loading', 'data-t': '0', 'data-end': String(endT) },
    h('div', { class: 'rec-main' }, stage, h('div', { class: 'rec-timeline' }, markers, seekBar), h('div', { class: 'rec-controls' }, playBtn, timeText, speed, h('span', { class: 'spacer' }), h('span', { class: 'muted small' }, `${rec.keyframes.length} keyframe${rec.keyframes.length === 1 ? '' : 's'}`))),
    h('aside', { class: 'rec-side', 'aria-label': 'Events' }, h('h2', {}, 'Events'), events.length ? eventList : h('p', { class: 'muted small' }, 'No chat, viewers or input in this recording.')),
  );
  mount(
    root,
    h(
      'div',
      { class: 'toolbar' },
      back,
      h('div', { class: 'rec-title' }, h('strong', { 'data-testid': 'rec-host' }, rec.hostname || rec.agent_id), h('span', { class: 'muted small' }, `${dateTime(rec.started_at)} · ${duration(endT)} · ${bytes(rec.bytes)}`)),
      kindPill(rec.kind),
      statusPill(rec),
      h('span', { class: 'spacer' }),
      rec.sha256 ? h('span', { class: 'mono small muted', title: `SHA-256 ${rec.sha256}` }, `SHA-256 ${rec.sha256.slice(0, 12)}…`) : null,
      rec.sha256 ? copyButton(() => rec.sha256 ?? '', 'Copy SHA-256') : null,
    ),
    rec.status === 'failed' && rec.error ? h('div', { class: 'alert alert-warn', role: 'alert' }, `The recording failed: ${rec.error}. It plays up to where it stopped.`) : null,
    errorSlot,
    playerEl,
  );

  // ---- the player ----
  let dragging = false;
  let lastSecond = -1;
  let current: HTMLElement | null = null;
  const showTime = (t: number) => {
    playerEl.dataset.t = String(Math.round(t));
    if (!dragging) seekBar.value = String(Math.round(t));
    const second = Math.floor(t / 1000);
    if (second !== lastSecond) {
      lastSecond = second;
      timeText.textContent = `${duration(t)} / ${duration(endT)}`;
    }
    // The event list marks the last event at or before now.
    let now: HTMLElement | null = null;
    for (let i = 0; i < events.length && (events[i] as Moment).t <= t; i++) now = eventItems[i] as HTMLElement;
    if (now !== current) {
      current?.removeAttribute('aria-current');
      now?.setAttribute('aria-current', 'true');
      current = now;
    }
    showOverlay();
  };
  const showOverlay = () => {
    const s = player.state;
    const text = s === 'loading' ? 'Loading…' : s === 'seeking' && !player.framesSinceSeek ? 'Seeking…' : !player.framesSinceSeek && s !== 'error' ? 'No picture recorded at this point (nobody was watching yet).' : '';
    if (overlay.textContent !== text) overlay.textContent = text;
    overlay.hidden = !text;
  };
  const onState = (s: PlayerState, err?: unknown) => {
    playerEl.dataset.state = s;
    playBtn.disabled = s === 'loading' || s === 'error' || endT === 0;
    playBtn.textContent = s === 'playing' ? 'Pause' : s === 'ended' ? 'Replay' : 'Play';
    playBtn.setAttribute('aria-pressed', String(s === 'playing'));
    if (s === 'error') showError(errorSlot, err);
    showOverlay();
  };
  const player = new RecordingPlayer({
    canvas,
    cursor,
    keyframes: rec.keyframes ?? [],
    endT,
    open: async (offset, sig) => {
      const res = await fetchFile(`/api/recordings/${encodeURIComponent(id)}/file`, offset > 0 ? { Range: `bytes=${offset}-` } : {}, sig);
      if (!res.body) throw new Error('The recording could not be read: the server sent no data.');
      // A server that ignored the range sent the whole file.
      return offset > 0 && res.status === 200 ? skipBytes(res.body, offset) : res.body;
    },
    onState,
    onTime: showTime,
  });

  // ---- controls ----
  const toggle = () => (player.state === 'playing' ? player.pause() : player.play());
  playBtn.addEventListener('click', toggle);
  speed.addEventListener('change', () => player.setSpeed(Number(speed.value)));
  seekBar.addEventListener('input', () => {
    dragging = true;
    timeText.textContent = `${duration(Number(seekBar.value))} / ${duration(endT)}`;
  });
  seekBar.addEventListener('change', () => {
    dragging = false;
    void player.seek(Number(seekBar.value));
  });
  stage.addEventListener('keydown', (e) => {
    if (e.key === ' ') toggle();
    else if (e.key === 'ArrowLeft') void player.seek(player.time - STEP_MS);
    else if (e.key === 'ArrowRight') void player.seek(player.time + STEP_MS);
    else return;
    e.preventDefault();
  });
  stage.addEventListener('click', () => stage.focus());

  void player.start(0);
  return () => player.dispose();
}
