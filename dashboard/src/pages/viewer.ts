// The in-browser viewer: `#/view/<session_id>`.
//
// Mints a viewer token, opens /ws/viewer, says ViewerHello with the codecs this browser
// decodes, draws frames on a canvas, sends mouse/keyboard (set-1 scancodes plus the
// character typed, so the agent can type by character whatever the remote layout) unless
// the session is view-only, and reconnects with a fresh token when the socket drops.
//
// How a session ends decides what follows (`SessionEnd.code`): ended, revoked or a protocol
// error is the end; the agent or the server going away is not. A managed machine then comes
// back as a new session (its agent reconnects, or the server restarted): the viewer looks the
// machine up and follows it there, in the same tab. A support-code session does not follow:
// its code was good for one session.

import { api, ApiError } from '../api';
import * as session from '../session';
import { navigate, type PageContext } from '../router';
import { bytes, h, mount, pill } from '../ui/dom';
import { confirmAction, copyButton, copyText, toast, toastError } from '../ui/feedback';
import type { Machine, Session, ViewerToken } from '../types';
import { FileTransfers } from '../viewer/files';
import { decode, encode, nowUs, pb, type EnvelopeProps } from '../viewer/protocol';
import { codecName, describeMode, drawRawZstd, H264Renderer, h264Supported } from '../viewer/render';
import { epochMs, traceFrame, traceSink } from '../viewer/trace';
import { isSystemKey, scancodeFor } from '../viewer/scancodes';
import { sparkline, Stats } from '../viewer/stats';

type ConnState = 'connecting' | 'waiting' | 'active' | 'reconnecting' | 'ended' | 'error';

// How long a viewer waits for a managed machine to come back (the server's offline TTL).
const FOLLOW_LIMIT_MS = 5 * 60_000;
// A server from before end codes (SessionEnd.code unset) said it in words.
const FINAL_REASON = /ended|removed|administrator|denied|timed out|revoked/i;

/** True when a SessionEnd means the session is over for good (no reconnect, no follow). */
function endIsFinal(code: number, reason: string): boolean {
  switch (code) {
    case pb.EndCode.END_CODE_ENDED:
    case pb.EndCode.END_CODE_REVOKED:
    case pb.EndCode.END_CODE_PROTOCOL:
      return true;
    case pb.EndCode.END_CODE_AGENT_GONE:
    case pb.EndCode.END_CODE_SERVER_GOING_AWAY:
      return false;
    default:
      return FINAL_REASON.test(reason);
  }
}

const trimStop = (s: string) => s.replace(/[.\s]+$/, '');

const BUTTONS = [pb.MouseButton.MOUSE_BUTTON_LEFT, pb.MouseButton.MOUSE_BUTTON_MIDDLE, pb.MouseButton.MOUSE_BUTTON_RIGHT, pb.MouseButton.MOUSE_BUTTON_BACK, pb.MouseButton.MOUSE_BUTTON_FORWARD];

export function viewerPage({ root, params }: PageContext): () => void {
  // The session shown; it changes when the viewer follows its machine to a new session.
  let sessionId = params[0] ?? '';
  // What the session is (from GET /api/sessions/:id): only a managed machine is followed.
  let agentId = '';
  let kind = '';
  // Following the machine: since when, and why the session we had is gone.
  let following = false;
  let followSince = 0;
  let followWhy = '';
  // A SessionEnd that asked for a reconnect: the close that follows acts on it.
  let lostReason: string | null = null;
  // `localStorage['gc.viewer.follow-limit-ms']` shortens the wait (diagnostics, tests).
  const followLimit = Number(localStorage.getItem('gc.viewer.follow-limit-ms')) || FOLLOW_LIMIT_MS;
  const me = session.currentUser();
  let ws: WebSocket | null = null;
  let state: ConnState = 'connecting';
  let accessMode: number = pb.AccessMode.ACCESS_MODE_UNSPECIFIED;
  let streamCodec = 0;
  let streamMode = '';
  let displayId = 0;
  let attempts = 0;
  let disposed = false;
  let reconnectTimer = 0;
  let sendSystemKeys = false;
  // Per session: characters for text (the default), positions for games and shortcuts.
  const keyModeKey = () => `gc.viewer.keymode.${sessionId}`;
  let byPosition = sessionStorage.getItem(keyModeKey()) === 'position';
  let scaleMode: 'fit' | 'actual' = (localStorage.getItem('gc.viewer.scale') as 'fit' | 'actual') || 'fit';
  const pressed = new Map<string, { code: number; extended: boolean }>();
  const stats = new Stats();
  let h264ok = false;
  let lastRefreshAsk = 0;
  let sawFrame = false;

  // ---- layout ----
  const canvas = h('canvas', { class: 'screen', tabindex: '0', 'aria-label': 'Remote screen', 'data-testid': 'screen', width: '0', height: '0' });
  const ctx = canvas.getContext('2d', { alpha: false }) as CanvasRenderingContext2D;
  const overlay = h('div', { class: 'stage-overlay', role: 'status', 'aria-live': 'polite' });
  const stage = h('div', { class: 'stage' }, canvas, overlay);
  const titleName = h('strong', {}, 'Remote session');
  const titleId = h('span', { class: 'muted small mono', 'data-testid': 'session-id' }, sessionId.slice(0, 8));
  const title = h('div', { class: 'viewer-title' }, titleName, titleId);
  const statusPill = h('span', { 'data-testid': 'conn-state' });
  const viewOnlyBadge = h('span', { class: 'view-only-badge', hidden: true, 'data-testid': 'view-only', role: 'status' }, 'VIEW ONLY');
  // How the agent sends now (issue 16: it adapts to the link); the full text on hover.
  const modeChip = h('span', { class: 'mode-chip small mono', 'data-testid': 'stream-mode', role: 'status', hidden: true });
  // "Sharp text": lossless tiles while the link carries them; the agent turns to H.264 on a slow link.
  const pictureSelect = h(
    'select',
    { class: 'select-sm', 'aria-label': 'Picture', 'data-testid': 'picture-menu', title: 'Smooth: H.264, adapted to the link. Sharp text: lossless while the link carries it.' },
    h('option', { value: 'smooth' }, 'Smooth'),
    h('option', { value: 'sharp' }, 'Sharp text'),
  ) as HTMLSelectElement;
  pictureSelect.value = localStorage.getItem('gc.viewer.picture') === 'sharp' ? 'sharp' : 'smooth';
  const displaySelect = h('select', { 'aria-label': 'Display', class: 'select-sm', hidden: true });
  const scaleBtn = h('button', { class: 'btn btn-sm', type: 'button', 'aria-pressed': 'false' });
  const sysKeys = h('input', { type: 'checkbox', id: 'sys-keys' });
  const sysKeysLabel = h('label', { class: 'toggle', for: 'sys-keys', title: 'Forward the Windows/Super key and try to capture browser shortcuts (full screen)' }, sysKeys, 'System keys');
  const cadBtn = h('button', { class: 'btn btn-sm', type: 'button', title: 'Send Ctrl+Alt+Del' }, 'Ctrl+Alt+Del');
  const keyModeBtn = h('button', { class: 'btn btn-sm', type: 'button', 'data-testid': 'key-mode', 'aria-pressed': 'false' });
  const keysMenu = h(
    'select',
    { class: 'select-sm', 'aria-label': 'Send keys', 'data-testid': 'keys-menu' },
    h('option', { value: '' }, 'Keys…'),
    h('option', { value: String(pb.SpecialKeyKind.SPECIAL_KEY_WIN) }, 'Super / Windows'),
    h('option', { value: String(pb.SpecialKeyKind.SPECIAL_KEY_ALT_TAB) }, 'Alt+Tab'),
    h('option', { value: String(pb.SpecialKeyKind.SPECIAL_KEY_ALT_F4) }, 'Alt+F4'),
    h('option', { value: String(pb.SpecialKeyKind.SPECIAL_KEY_PRINT_SCREEN) }, 'Print Screen'),
    h('option', { value: String(pb.SpecialKeyKind.SPECIAL_KEY_LOCK_SCREEN) }, 'Lock screen'),
    h('option', { value: String(pb.SpecialKeyKind.SPECIAL_KEY_CTRL_ALT_DEL) }, 'Ctrl+Alt+Del'),
    h('option', { value: 'type-clipboard' }, 'Type my clipboard text'),
  );
  const refreshBtn = h('button', { class: 'btn btn-sm', type: 'button', title: 'Ask for a full refresh' }, 'Refresh');
  const fullBtn = h('button', { class: 'btn btn-sm', type: 'button' }, 'Full screen');
  const chatBtn = h('button', { class: 'btn btn-sm', type: 'button', 'aria-pressed': 'false', 'aria-controls': 'viewer-side' }, 'Chat');
  const clipBtn = h('button', { class: 'btn btn-sm', type: 'button', 'aria-pressed': 'false', 'aria-controls': 'viewer-side' }, 'Clipboard');
  // Off by default: the numbers are for diagnosing, not for every session.
  const statsBtn = h('button', { class: 'btn btn-sm', type: 'button', 'aria-pressed': 'false' }, 'Stats');
  // A shell on the machine, in its own tab (permission `terminal`).
  const terminalBtn = session.can('terminal')
    ? h('button', { class: 'btn btn-sm', type: 'button', title: 'Open a terminal on the remote machine in a new tab', 'data-testid': 'open-terminal', onclick: () => window.open(`${location.pathname}#/terminal/${encodeURIComponent(sessionId)}`, '_blank') }, 'Terminal')
    : null;
  // Upload and download (permission `files`), in a side panel; hidden in view-only mode.
  const filesBtn = session.can('files')
    ? h('button', { class: 'btn btn-sm', type: 'button', 'aria-pressed': 'false', 'aria-controls': 'viewer-side', 'data-testid': 'files-button', title: 'Upload files to the machine, or download from it' }, 'Files')
    : null;
  const leaveBtn = h('button', { class: 'btn btn-sm', type: 'button', title: 'Close this viewer; the session goes on' }, 'Leave');
  const endBtn = h('button', { class: 'btn btn-sm btn-danger', type: 'button', title: 'End the session for everyone', 'data-testid': 'end-session' }, 'End session');
  const controlsOnly = [cadBtn, sysKeysLabel, keyModeBtn, keysMenu, endBtn, ...(terminalBtn ? [terminalBtn] : []), ...(filesBtn ? [filesBtn] : [])];

  const statsText = h('div', { class: 'stats-text mono', 'data-testid': 'stats' });
  const graph = h('canvas', { class: 'sparkline', width: '160', height: '36', 'aria-hidden': 'true' });
  const statsBox = h('div', { class: 'stats-overlay', 'aria-label': 'Connection statistics', hidden: true }, statsText, h('div', { class: 'graph-label' }, 'fps, last 60 s'), graph);

  const chatLog = h('div', { class: 'chat-log', role: 'log', 'aria-live': 'polite', 'data-testid': 'chat-log' });
  const chatInput = h('input', { placeholder: 'Message the end user…', 'aria-label': 'Chat message', maxlength: '2000' });
  const chatForm = h('form', { class: 'chat-form' }, chatInput, h('button', { class: 'btn btn-primary btn-sm', type: 'submit' }, 'Send'));
  const clipOut = h('textarea', { rows: '4', placeholder: 'Text to send to the remote clipboard', 'aria-label': 'Text to send' });
  const clipIn = h('textarea', { rows: '4', readonly: true, placeholder: 'Nothing received yet', 'aria-label': 'Remote clipboard', 'data-testid': 'remote-clipboard' });
  const clipSend = h('button', { class: 'btn btn-primary btn-sm', type: 'button' }, 'Send to remote');
  const clipPaste = h('button', { class: 'btn btn-sm', type: 'button' }, 'Paste from my clipboard');
  const clipType = h('button', { class: 'btn btn-sm', type: 'button', title: 'Type this text on the remote machine as keystrokes, whatever its keyboard layout' }, 'Type on remote');
  const chatPanel = h('section', { class: 'side-panel', 'aria-label': 'Chat', hidden: true }, h('h2', {}, 'Chat'), chatLog, chatForm);
  const clipPanel = h(
    'section',
    { class: 'side-panel', 'aria-label': 'Clipboard', hidden: true },
    h('h2', {}, 'Clipboard'),
    h('label', {}, 'Send to the remote machine'),
    clipOut,
    h('div', { class: 'row' }, clipPaste, clipType, clipSend),
    h('label', {}, 'Received from the remote machine'),
    clipIn,
    h('div', { class: 'row' }, copyButton(() => clipIn.value, 'Copy')),
  );
  // Sends through whichever socket is current (see `send` below).
  const files = filesBtn ? new FileTransfers({ send: (props) => send(props) }, sessionId) : null;
  const side = h('aside', { class: 'viewer-side', id: 'viewer-side', hidden: true }, chatPanel, clipPanel, files?.panel);

  mount(
    root,
    h(
      'div',
      { class: 'viewer' },
      h(
        'div',
        { class: 'viewer-bar', role: 'toolbar', 'aria-label': 'Viewer controls' },
        h('button', { class: 'btn btn-ghost btn-sm', type: 'button', onclick: () => navigate('/machines'), 'aria-label': 'Back to machines' }, '← Back'),
        title,
        statusPill,
        viewOnlyBadge,
        modeChip,
        h('span', { class: 'spacer' }),
        pictureSelect,
        displaySelect,
        scaleBtn,
        sysKeysLabel,
        keyModeBtn,
        keysMenu,
        cadBtn,
        refreshBtn,
        fullBtn,
        chatBtn,
        clipBtn,
        statsBtn,
        filesBtn,
        terminalBtn,
        leaveBtn,
        endBtn,
      ),
      h('div', { class: 'viewer-body' }, h('div', { class: 'stage-wrap' }, stage, statsBox), side),
    ),
  );

  // ---- state display ----
  const canControl = () => accessMode === pb.AccessMode.ACCESS_MODE_CONTROL && state === 'active';
  const setState = (s: ConnState, message?: string) => {
    state = s;
    const map: Record<ConnState, [string, 'ok' | 'warn' | 'bad' | 'info' | 'muted']> = {
      connecting: ['connecting', 'info'],
      waiting: ['waiting for consent', 'warn'],
      active: ['connected', 'ok'],
      reconnecting: ['reconnecting', 'warn'],
      ended: ['ended', 'muted'],
      error: ['error', 'bad'],
    };
    const [text, tone] = map[s];
    mount(statusPill, pill(text, tone));
    statusPill.dataset.state = s;
    if (message !== undefined) showOverlay(message);
    else if (s === 'active' && sawFrame) showOverlay(null);
    const viewOnly = accessMode === pb.AccessMode.ACCESS_MODE_VIEW_ONLY;
    viewOnlyBadge.hidden = !viewOnly;
    canvas.classList.toggle('controllable', canControl());
    for (const el of controlsOnly) el.toggleAttribute('hidden', viewOnly);
    clipSend.disabled = viewOnly;
    if (files) {
      if (viewOnly && !files.panel.hidden) showPanel(null);
      files.setReady(canControl(), s === 'reconnecting' ? 'the remote machine went offline' : s === 'ended' ? 'the session ended' : 'the session is no longer active');
    }
  };
  const showOverlay = (message: string | null, actions: HTMLElement[] = []) => {
    if (!message) {
      overlay.hidden = true;
      overlay.replaceChildren();
      return;
    }
    overlay.hidden = false;
    mount(overlay, h('div', { class: 'overlay-card' }, state === 'connecting' || state === 'reconnecting' || state === 'waiting' ? h('span', { class: 'spinner' }) : null, h('p', {}, message), actions.length ? h('div', { class: 'row' }, actions) : null));
  };

  // ---- scaling ----
  const applyScale = () => {
    scaleBtn.textContent = scaleMode === 'fit' ? 'Fit' : '1:1';
    scaleBtn.title = scaleMode === 'fit' ? 'Scaled to fit; click for actual size' : 'Actual size; click to fit';
    scaleBtn.setAttribute('aria-pressed', String(scaleMode === 'actual'));
    stage.classList.toggle('actual', scaleMode === 'actual');
    const wrap = stage.parentElement as HTMLElement;
    if (!canvas.width || !canvas.height) return;
    if (scaleMode === 'actual') {
      canvas.style.width = `${canvas.width}px`;
      canvas.style.height = `${canvas.height}px`;
    } else {
      const s = Math.min(wrap.clientWidth / canvas.width, wrap.clientHeight / canvas.height);
      canvas.style.width = `${Math.floor(canvas.width * s)}px`;
      canvas.style.height = `${Math.floor(canvas.height * s)}px`;
    }
  };
  let lastSize = '';
  const checkSize = () => {
    const size = `${canvas.width}x${canvas.height}`;
    if (size !== lastSize) {
      lastSize = size;
      applyScale();
    }
  };
  const ro = new ResizeObserver(() => applyScale());
  ro.observe(stage.parentElement as HTMLElement);
  scaleBtn.addEventListener('click', () => {
    scaleMode = scaleMode === 'fit' ? 'actual' : 'fit';
    localStorage.setItem('gc.viewer.scale', scaleMode);
    applyScale();
  });
  applyScale();

  // ---- sending ----
  // What this viewer decodes, and whether it asks for sharp text.
  const sendHello = () => {
    const codecs = [pb.Codec.CODEC_RAW_ZSTD];
    // `localStorage['gc.viewer.lossless'] = '1'` forces the lossless codec (diagnostics).
    if (h264ok && localStorage.getItem('gc.viewer.lossless') !== '1') codecs.push(pb.Codec.CODEC_H264);
    send({ viewerHello: { protocolVersion: pb.ProtocolVersion.PROTOCOL_VERSION_CURRENT, codecs, preferLossless: pictureSelect.value === 'sharp' } });
  };
  pictureSelect.addEventListener('change', () => {
    localStorage.setItem('gc.viewer.picture', pictureSelect.value);
    sendHello();
  });
  const send = (props: EnvelopeProps): boolean => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(encode(props) as Uint8Array<ArrayBuffer>);
    return true;
  };
  const requestRefresh = (why: string) => {
    const now = performance.now();
    if (now - lastRefreshAsk < 500) return;
    lastRefreshAsk = now;
    if (state === 'active') send({ refreshRequest: {} });
    void why;
  };
  const h264 = new H264Renderer(canvas, ctx, () => { stats.frames++; stats.totalFrames++; checkSize(); }, requestRefresh);

  // ---- receiving ----
  const trace = traceSink();
  const onMessage = (ev: MessageEvent) => {
    if (!(ev.data instanceof ArrayBuffer)) return;
    const receivedMs = trace ? epochMs() : 0;
    let env;
    try {
      env = decode(ev.data);
    } catch (e) {
      console.warn('undecodable message from the relay', e);
      return;
    }
    if (files?.onMessage(env)) return;
    switch (env.payload) {
      case 'videoFrame': {
        const f = env.videoFrame;
        if (!f) return;
        if (f.codec) streamCodec = f.codec;
        if (f.captureTimestampUs) stats.frameAgeMs = Math.max(0, (nowUs() - f.captureTimestampUs) / 1000);
        if (!sawFrame) {
          sawFrame = true;
          if (state === 'active') showOverlay(null);
        }
        const traced = traceFrame(trace, f, ev.data.byteLength, receivedMs);
        // The agent paces itself by these (issue 16): a frame counts once it is drawn.
        const sequence = f.sequence;
        const ack = () => send({ frameAck: { sequence } });
        if (f.codec === pb.Codec.CODEC_H264) {
          stats.bytesIn(ev.data.byteLength);
          try {
            h264.decode(f, () => {
              if (traced) traced.drawnMs = epochMs();
              ack();
            });
          } catch (e) {
            console.warn('H.264 frame failed', e);
            requestRefresh('h264 failure');
          }
        } else {
          stats.frame(ev.data.byteLength);
          try {
            drawRawZstd(canvas, ctx, f);
            if (traced) traced.drawnMs = epochMs();
            ack();
          } catch (e) {
            console.warn('lossless frame failed', e);
            requestRefresh('raw failure');
          }
          checkSize();
        }
        canvas.dataset.frames = String(stats.totalFrames);
        break;
      }
      case 'sessionState': {
        const s = env.sessionState;
        if (!s) return;
        // The relay moved this viewer to the machine's new session.
        if (s.sessionId && s.sessionId !== sessionId) {
          switchSession(s.sessionId);
          h264.close();
          requestRefresh('moved to a new session');
        }
        // The session is live: whatever we were looking for is found.
        following = false;
        followSince = 0;
        if (s.accessMode) accessMode = s.accessMode;
        if (s.codec) streamCodec = s.codec;
        if (s.phase === pb.SessionPhase.SESSION_PHASE_WAITING_FOR_CONSENT) setState('waiting', 'Waiting for the end user to accept the connection…');
        else if (s.phase === pb.SessionPhase.SESSION_PHASE_ACTIVE) {
          const first = state !== 'active';
          setState('active', sawFrame ? undefined : 'Connected. Waiting for the first picture…');
          if (first) send({ refreshRequest: {} });
          attempts = 0;
        } else if (s.phase === pb.SessionPhase.SESSION_PHASE_AGENT_OFFLINE) setState('reconnecting', 'The remote machine is offline. Waiting for it to come back…');
        break;
      }
      case 'displayList': {
        const d = env.displayList;
        if (!d) return;
        displayId = d.activeDisplayId ?? 0;
        const displays = d.displays ?? [];
        mount(
          displaySelect,
          displays.map((x, i) => h('option', { value: String(x.id ?? 0), selected: (x.id ?? 0) === displayId }, `${x.name || `Display ${i + 1}`}${x.primary ? ' (primary)' : ''} — ${x.width}×${x.height}`)),
        );
        displaySelect.hidden = displays.length < 2;
        break;
      }
      case 'chat': {
        const c = env.chat;
        if (c) addChat(c.from || 'remote', c.text ?? '', false);
        break;
      }
      case 'clipboard': {
        const c = env.clipboard;
        if (!c) return;
        clipIn.value = c.text ?? '';
        toast('Clipboard received from the remote machine', 'info');
        break;
      }
      case 'pong': {
        const p = env.pong;
        if (p?.pingTimestampUs) stats.rttMs = Math.max(0, (nowUs() - p.pingTimestampUs) / 1000);
        break;
      }
      case 'cursorShape': {
        const c = env.cursorShape;
        if (c) setCursor(c.width ?? 0, c.height ?? 0, c.hotX ?? 0, c.hotY ?? 0, c.rgba);
        break;
      }
      case 'viewerJoined':
        if (env.viewerJoined?.username) toast(`${env.viewerJoined.username} joined the session`, 'info');
        break;
      case 'viewerLeft':
        if (env.viewerLeft?.username) toast(`${env.viewerLeft.username} left the session`, 'info');
        break;
      case 'streamMode': {
        const m = env.streamMode;
        if (!m) return;
        const short = describeMode(m, false);
        modeChip.textContent = short;
        modeChip.title = describeMode(m, true);
        modeChip.hidden = false;
        modeChip.classList.toggle('limited', m.reason === 'link limited');
        streamMode = modeChip.title;
        break;
      }
      case 'agentNotice': {
        const n = env.agentNotice;
        if (n?.text) toast(`Remote machine: ${n.text}`, (n.level ?? 0) >= pb.AgentNotice.Level.LEVEL_WARNING ? 'bad' : 'info');
        break;
      }
      case 'sessionEnd': {
        const reason = env.sessionEnd?.reason || 'The session ended.';
        const code = env.sessionEnd?.code ?? 0;
        // A support-code session is over when its agent goes: the code was good for one.
        if (endIsFinal(code, reason) || (code === pb.EndCode.END_CODE_AGENT_GONE && kind === 'attended')) ended(reason);
        else {
          // The agent or the server went away: the close that follows reconnects at once,
          // to this session if it lives on (another instance), else to the machine's next.
          lostReason = reason;
          ws?.close(1000, 'session gone');
        }
        break;
      }
      default:
        break;
    }
  };

  const setCursor = (w: number, hgt: number, hx: number, hy: number, rgba: Uint8Array | null | undefined) => {
    if (!w || !hgt || !rgba || rgba.length < w * hgt * 4 || w > 128 || hgt > 128) return;
    const c = document.createElement('canvas');
    c.width = w;
    c.height = hgt;
    const cctx = c.getContext('2d');
    if (!cctx) return;
    cctx.putImageData(new ImageData(new Uint8ClampedArray(rgba.slice(0, w * hgt * 4)), w, hgt), 0, 0);
    canvas.style.cursor = `url(${c.toDataURL()}) ${hx} ${hy}, default`;
  };

  const ended = (reason: string) => {
    if (state === 'ended') return;
    setState('ended');
    showOverlay(`Session ended: ${reason}`, [h('button', { class: 'btn btn-primary', type: 'button', onclick: () => navigate('/machines') }, 'Back to machines')]);
    releaseAll();
    h264.close();
    ws?.close(1000, 'done');
  };

  // The machine did not come back in time: over, unless the technician keeps waiting.
  const giveUp = () => {
    following = false;
    setState('ended');
    const wait = h('button', {
      class: 'btn',
      type: 'button',
      onclick: () => {
        following = true;
        followSince = Date.now();
        attempts = 0;
        setState('reconnecting', 'Waiting for the machine to come back…');
        void connect();
      },
    }, 'Keep waiting');
    const limit = followLimit >= 60_000 ? `${Math.round(followLimit / 60_000)} minutes` : `${Math.round(followLimit / 1000)} seconds`;
    showOverlay(`The machine has not come back in ${limit} (${trimStop(followWhy)}). Join it again from Machines once it is online.`, [
      wait,
      h('button', { class: 'btn btn-primary', type: 'button', onclick: () => navigate('/machines') }, 'Back to machines'),
    ]);
  };

  /** Shows `next`, the machine's new session, in this tab from now on. */
  const switchSession = (next: string) => {
    if (next === sessionId) return;
    const mode = sessionStorage.getItem(keyModeKey());
    sessionId = next;
    if (mode) sessionStorage.setItem(keyModeKey(), mode);
    history.replaceState(history.state, '', `#/view/${encodeURIComponent(next)}`);
    titleId.textContent = next.slice(0, 8);
    named = false;
    // Transfers belonged to the old session; the picture comes anew.
    files?.reset('the machine reconnected as a new session');
    sawFrame = false;
    streamCodec = 0;
  };

  /**
   * The session we had is gone (`why`). A managed machine is followed to its next session;
   * anything else has ended.
   */
  const gone = (why: string) => {
    if (disposed || state === 'ended') return;
    if (kind !== 'managed' || !agentId) {
      ended(why);
      return;
    }
    followWhy = why;
    following = true;
    const msg = `The session ended (${trimStop(why)}). Waiting for the machine to come back…`;
    if (!followSince) {
      // Its new session may be there already (the agent reconnected): look at once.
      followSince = Date.now();
      setState('reconnecting', msg);
      void connect();
    } else scheduleReconnect(msg);
  };

  // ---- connecting ----
  const scheduleReconnect = (why: string) => {
    if (disposed || state === 'ended') return;
    attempts++;
    const delay = Math.min(15_000, 1000 * 2 ** Math.min(attempts - 1, 4)) + Math.random() * 300;
    setState('reconnecting', `${why} Reconnecting in ${Math.round(delay / 1000)} s (attempt ${attempts})…`);
    window.clearTimeout(reconnectTimer);
    reconnectTimer = window.setTimeout(() => void connect(), delay);
  };

  // The tab is titled with the machine's name: technicians keep several viewers open.
  let named = false;
  const nameTab = async (info: Session) => {
    let name = info.live?.hostname;
    if (!name && !named) name = (await api.get<Machine>(`/api/machines/${encodeURIComponent(info.agent_id)}`).catch(() => null))?.hostname;
    if (!name || disposed) return;
    named = true;
    titleName.textContent = name;
    document.title = `${name} · GuruConnect`;
  };

  /** Connects to the session; `lookUp`: first see whether its machine moved on (managed). */
  const connect = async (lookUp = false) => {
    if (disposed) return;
    if (state !== 'reconnecting') setState('connecting', 'Connecting…');
    if (following && Date.now() - followSince > followLimit) {
      giveUp();
      return;
    }
    // Reconnecting to a managed session: the machine may have moved on to a new session
    // (its agent reconnected, the server restarted). Where is it now?
    if (kind === 'managed' && agentId && (following || lookUp || attempts > 0)) {
      let machine: Machine;
      try {
        machine = await api.get<Machine>(`/api/machines/${encodeURIComponent(agentId)}`);
      } catch (e) {
        if (disposed) return;
        const err = ApiError.from(e);
        if (err.handled) return;
        if (err.status === 404) ended('the machine was removed');
        else if (err.status === 403) setState('error', err.detail);
        else scheduleReconnect(following ? `The session ended (${trimStop(followWhy)}). Waiting for the machine to come back…` : `${trimStop(err.detail)}.`);
        return;
      }
      if (disposed || state === 'ended') return;
      if (machine.status === 'pending') {
        ended("the machine is pending an administrator's approval");
        return;
      }
      if (machine.online && machine.session_id) {
        if (machine.session_id !== sessionId) switchSession(machine.session_id);
      } else if (following) {
        gone(followWhy);
        return;
      }
    }
    let grant: ViewerToken;
    try {
      const info = await api.get<Session>(`/api/sessions/${encodeURIComponent(sessionId)}`).catch(() => null);
      if (disposed) return;
      if (info) {
        agentId = info.agent_id;
        kind = info.kind;
        files?.setSession(info);
        if (info.status === 'ended') {
          gone(info.end_reason || 'the session ended');
          return;
        }
        await nameTab(info);
      }
      if (disposed) return;
      grant = await api.post<ViewerToken>(`/api/sessions/${encodeURIComponent(sessionId)}/viewer-token`);
    } catch (e) {
      if (disposed) return;
      const err = ApiError.from(e);
      if (err.handled) return;
      if (err.status === 409 || err.status === 404) {
        gone(err.detail);
        return;
      }
      if (err.status === 403) {
        setState('error', `${err.detail}${err.correlationId ? ` (correlation id ${err.correlationId})` : ''}`);
        return;
      }
      scheduleReconnect(`${err.detail}${err.correlationId ? ` (correlation id ${err.correlationId})` : ''}.`);
      return;
    }
    if (disposed) return;
    accessMode = grant.access_mode === 'control' ? pb.AccessMode.ACCESS_MODE_CONTROL : pb.AccessMode.ACCESS_MODE_VIEW_ONLY;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${proto}//${location.host}/ws/viewer?session_id=${encodeURIComponent(sessionId)}&token=${encodeURIComponent(grant.token)}`;
    const sock = new WebSocket(url);
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      sendHello();
      send({ ping: { timestampUs: nowUs() } });
    };
    sock.onmessage = (ev) => {
      if (ws === sock) onMessage(ev);
    };
    sock.onerror = () => {
      // The close event that follows carries what there is to know.
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      releaseAllLocal();
      files?.reset('the connection to the relay was lost');
      h264.close();
      if (disposed || state === 'ended') return;
      if (lostReason !== null) {
        const why = lostReason;
        lostReason = null;
        setState('reconnecting', `${trimStop(why)}. Reconnecting…`.replace(/^./, (c) => c.toUpperCase()));
        void connect(true);
        return;
      }
      // Lost without a SessionEnd (1006, 1001 "server shutting down", the network): reconnect.
      const why = ev.reason ? `Connection closed: ${ev.reason.replace(/[.\s]+$/, '')}.` : 'The connection was lost.';
      scheduleReconnect(why);
    };
  };

  // ---- input ----
  const toRemote = (e: MouseEvent) => {
    const rect = canvas.getBoundingClientRect();
    const x = Math.round(((e.clientX - rect.left) / Math.max(1, rect.width)) * canvas.width);
    const y = Math.round(((e.clientY - rect.top) / Math.max(1, rect.height)) * canvas.height);
    return { x: Math.max(0, Math.min(canvas.width - 1, x)), y: Math.max(0, Math.min(canvas.height - 1, y)) };
  };
  let pendingMove: { x: number; y: number } | null = null;
  let moveFrame = 0;
  const flushMove = () => {
    moveFrame = 0;
    if (pendingMove && canControl()) send({ mouseEvent: { action: pb.MouseAction.MOUSE_ACTION_MOVE, x: pendingMove.x, y: pendingMove.y, displayId } });
    pendingMove = null;
  };
  canvas.addEventListener('mousemove', (e) => {
    if (!canControl()) return;
    pendingMove = toRemote(e);
    if (!moveFrame) moveFrame = requestAnimationFrame(flushMove);
  });
  const mouseButton = (e: MouseEvent, down: boolean) => {
    if (!canControl()) return;
    e.preventDefault();
    if (down) canvas.focus();
    const p = toRemote(e);
    flushMove();
    send({
      mouseEvent: {
        action: down ? pb.MouseAction.MOUSE_ACTION_DOWN : pb.MouseAction.MOUSE_ACTION_UP,
        button: BUTTONS[e.button] ?? pb.MouseButton.MOUSE_BUTTON_LEFT,
        x: p.x,
        y: p.y,
        displayId,
      },
    });
  };
  canvas.addEventListener('mousedown', (e) => mouseButton(e, true));
  canvas.addEventListener('mouseup', (e) => mouseButton(e, false));
  canvas.addEventListener('contextmenu', (e) => {
    if (canControl()) e.preventDefault();
  });
  let wheelAcc = { x: 0, y: 0 };
  canvas.addEventListener(
    'wheel',
    (e) => {
      if (!canControl()) return;
      e.preventDefault();
      const unit = e.deltaMode === 1 ? 1 / 3 : e.deltaMode === 2 ? 1 : 1 / 100;
      wheelAcc.x += e.deltaX * unit;
      wheelAcc.y += e.deltaY * unit;
      const dx = Math.trunc(wheelAcc.x);
      const dy = Math.trunc(wheelAcc.y);
      if (!dx && !dy) return;
      wheelAcc = { x: wheelAcc.x - dx, y: wheelAcc.y - dy };
      const p = toRemote(e);
      // Positive wheel_dy scrolls up (away from the user), as on Windows and X11 button 4.
      send({ mouseEvent: { action: pb.MouseAction.MOUSE_ACTION_WHEEL, x: p.x, y: p.y, wheelDx: dx, wheelDy: -dy, displayId } });
    },
    { passive: false },
  );

  const showKeyMode = () => {
    keyModeBtn.textContent = byPosition ? 'Keys: by position' : 'Keys: by character';
    keyModeBtn.setAttribute('aria-pressed', String(byPosition));
    keyModeBtn.title = byPosition
      ? 'Keys go by position: the remote keyboard layout decides what they type (games, shortcuts). Click to type by character.'
      : 'Keys type the character your keyboard produced, whatever the remote layout; shortcuts go by position. Click for position only.';
  };
  showKeyMode();
  keyModeBtn.addEventListener('click', () => {
    byPosition = !byPosition;
    sessionStorage.setItem(keyModeKey(), byPosition ? 'position' : 'character');
    showKeyMode();
    canvas.focus();
  });

  const key = (e: KeyboardEvent, down: boolean) => {
    if (!canControl()) return;
    if (!sendSystemKeys && isSystemKey(e.code)) return;
    // A dead key only prepares the next key's character; in character mode that character
    // is what is sent, so the dead key itself is not.
    if (!byPosition && e.key === 'Dead') {
      e.preventDefault();
      return;
    }
    // One printable character (a single code point, not "Enter" or "ArrowLeft").
    const text = [...e.key].length === 1 && !/\p{Cc}/u.test(e.key) ? e.key : '';
    // AltGr reports Ctrl+Alt on Windows; the character it produced is text, not a shortcut.
    const altGr = e.getModifierState?.('AltGraph') ?? false;
    // A key with no physical code (on-screen keyboards, characters the US table lacks) can
    // still be typed by character.
    const sc = scancodeFor(e.code) ?? (!byPosition && text ? { code: 0, extended: false } : null);
    if (!sc) return;
    e.preventDefault();
    e.stopPropagation();
    const id = e.code || `char:${e.key}`;
    if (down) pressed.set(id, sc);
    else pressed.delete(id);
    send({
      keyEvent: {
        scancode: sc.code,
        extended: sc.extended,
        down,
        modifiers: { shift: e.shiftKey, ctrl: e.ctrlKey && !altGr, alt: e.altKey && !altGr, meta: e.metaKey },
        sentTimestampUs: nowUs(),
        text,
        mode: byPosition ? pb.KeyInputMode.KEY_INPUT_MODE_BY_POSITION : pb.KeyInputMode.KEY_INPUT_MODE_BY_CHARACTER,
      },
    });
  };
  canvas.addEventListener('keydown', (e) => key(e, true));
  canvas.addEventListener('keyup', (e) => key(e, false));
  const releaseAllLocal = () => pressed.clear();
  const releaseAll = () => {
    if (canControl()) {
      for (const sc of pressed.values()) send({ keyEvent: { scancode: sc.code, extended: sc.extended, down: false, sentTimestampUs: nowUs() } });
    }
    pressed.clear();
  };
  canvas.addEventListener('blur', releaseAll);

  sysKeys.addEventListener('change', () => {
    sendSystemKeys = sysKeys.checked;
    const kb = (navigator as Navigator & { keyboard?: { lock?: (keys?: string[]) => Promise<void>; unlock?: () => void } }).keyboard;
    if (sendSystemKeys && document.fullscreenElement && kb?.lock) kb.lock().catch(() => {});
    else kb?.unlock?.();
  });
  const typeText = (text: string) => {
    if (!canControl()) {
      toast('Typing needs control access and an active session', 'bad');
      return;
    }
    if (!text) return;
    if (new TextEncoder().encode(text).length > 4096) {
      toast('At most 4096 bytes can be typed at once', 'bad');
      return;
    }
    if (send({ typeText: { text } })) toast('Typing the text on the remote machine', 'ok');
  };
  keysMenu.addEventListener('change', () => {
    const choice = keysMenu.value;
    keysMenu.value = '';
    if (!choice) return;
    if (choice === 'type-clipboard') {
      navigator.clipboard
        .readText()
        .then(typeText)
        .catch(() => toast('The browser did not allow reading the clipboard; use Clipboard → Type on remote', 'bad'));
    } else if (canControl()) {
      const kind = Number(choice);
      send({ specialKey: { kind } });
      toast(`${keysMenu.querySelector(`option[value="${choice}"]`)?.textContent ?? 'Key'} sent`, 'info');
    }
    canvas.focus();
  });
  cadBtn.addEventListener('click', () => {
    if (!canControl()) return;
    send({ specialKey: { kind: pb.SpecialKeyKind.SPECIAL_KEY_CTRL_ALT_DEL } });
    toast('Ctrl+Alt+Del sent', 'info');
    canvas.focus();
  });
  refreshBtn.addEventListener('click', () => {
    send({ refreshRequest: {} });
    canvas.focus();
  });
  displaySelect.addEventListener('change', () => {
    const id = Number(displaySelect.value);
    if (send({ switchDisplay: { displayId: id } })) displayId = id;
  });
  fullBtn.addEventListener('click', () => {
    const el = root.querySelector('.viewer') as HTMLElement;
    if (document.fullscreenElement) void document.exitFullscreen().catch(() => {});
    else
      void el
        .requestFullscreen()
        .then(() => {
          const kb = (navigator as Navigator & { keyboard?: { lock?: () => Promise<void> } }).keyboard;
          if (sendSystemKeys && kb?.lock) return kb.lock().catch(() => {});
          return undefined;
        })
        .catch(() => toast('Full screen is not available here', 'bad'));
  });
  leaveBtn.addEventListener('click', () => {
    disposed = true;
    releaseAll();
    ws?.close(1000, 'viewer left');
    navigate('/machines');
  });
  endBtn.addEventListener('click', () => {
    void confirmAction('End session', 'End this session for everyone? The other technicians watching are disconnected too.', 'End session').then((ok) => {
      if (!ok) return;
      api.post(`/api/sessions/${encodeURIComponent(sessionId)}/end`).catch(toastError);
    });
  });

  // ---- side panels ----
  const showPanel = (panel: HTMLElement | null) => {
    const panels: [HTMLElement, HTMLElement][] = [[chatPanel, chatBtn], [clipPanel, clipBtn]];
    if (files && filesBtn) panels.push([files.panel, filesBtn]);
    for (const [p, b] of panels) {
      const on = p === panel && p.hidden;
      p.hidden = !on;
      b.setAttribute('aria-pressed', String(on));
    }
    side.hidden = panels.every(([p]) => p.hidden);
    requestAnimationFrame(applyScale);
  };
  chatBtn.addEventListener('click', () => {
    showPanel(chatPanel);
    if (!chatPanel.hidden) chatInput.focus();
  });
  clipBtn.addEventListener('click', () => showPanel(clipPanel));
  if (files && filesBtn) {
    filesBtn.addEventListener('click', () => showPanel(files.panel));
    // Files dropped on the screen go to the destination folder; the panel opens to show them.
    stage.addEventListener('dragover', (e) => {
      if (canControl()) files.dragOver(e);
    });
    stage.addEventListener('drop', (e) => {
      if (!canControl() || !e.dataTransfer?.files.length) return;
      if (files.panel.hidden) showPanel(files.panel);
      files.drop(e);
    });
  }
  statsBtn.addEventListener('click', () => {
    statsBox.hidden = !statsBox.hidden;
    statsBtn.setAttribute('aria-pressed', String(!statsBox.hidden));
  });
  const addChat = (from: string, text: string, mine: boolean) => {
    chatLog.appendChild(h('div', { class: `chat-msg${mine ? ' mine' : ''}` }, h('span', { class: 'chat-from' }, from), h('span', { class: 'chat-text' }, text)));
    chatLog.scrollTop = chatLog.scrollHeight;
    if (!mine && chatPanel.hidden) {
      chatBtn.classList.add('has-news');
      toast(`${from}: ${text.slice(0, 80)}`, 'info');
    }
  };
  chatBtn.addEventListener('click', () => chatBtn.classList.remove('has-news'));
  chatForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = chatInput.value.trim();
    if (!text) return;
    if (state !== 'active') {
      toast('Chat is available once the session is active', 'bad');
      return;
    }
    if (send({ chat: { from: me?.username ?? 'technician', text, sentAtMs: Date.now() } })) {
      addChat('You', text, true);
      chatInput.value = '';
    }
  });
  clipSend.addEventListener('click', () => {
    if (!canControl()) {
      toast('Clipboard needs control access and an active session', 'bad');
      return;
    }
    if (send({ clipboard: { text: clipOut.value } })) toast('Clipboard sent', 'ok');
  });
  clipType.addEventListener('click', () => typeText(clipOut.value));
  clipPaste.addEventListener('click', () => {
    navigator.clipboard
      .readText()
      .then((t) => {
        clipOut.value = t;
      })
      .catch(() => toast('The browser did not allow reading the clipboard; paste into the box instead', 'bad'));
  });
  void copyText; // (copy of received text goes through the Copy button)

  // ---- stats ----
  const statsTimer = window.setInterval(() => {
    stats.roll();
    const lines = [
      `${stats.fps.toFixed(1)} fps · ${bytes(Math.round(stats.bps))}/s`,
      `RTT ${stats.rttMs === null ? '—' : stats.rttMs.toFixed(0) + ' ms'} · frame age ${stats.frameAgeMs === null ? '—' : stats.frameAgeMs.toFixed(0) + ' ms'}`,
      `${codecName(streamCodec)} · ${canvas.width}×${canvas.height} · ${bytes(stats.totalBytes)}`,
      ...(streamMode ? [streamMode] : []),
    ];
    statsText.replaceChildren(...lines.map((l) => h('div', {}, l)));
    sparkline(graph, stats.fpsHistory, getComputedStyle(statsBox).color);
  }, 1000);
  const pingTimer = window.setInterval(() => {
    send({ ping: { timestampUs: nowUs() } });
  }, 2000);

  setState('connecting', 'Connecting…');
  void h264Supported().then((ok) => {
    h264ok = ok;
    if (!disposed) void connect();
  });
  canvas.focus();

  return () => {
    disposed = true;
    window.clearInterval(statsTimer);
    window.clearInterval(pingTimer);
    window.clearTimeout(reconnectTimer);
    if (moveFrame) cancelAnimationFrame(moveFrame);
    ro.disconnect();
    files?.dispose();
    releaseAll();
    h264.close();
    if (ws) {
      const s = ws;
      ws = null;
      s.close(1000, 'viewer left');
    }
  };
}
