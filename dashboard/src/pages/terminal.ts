// The remote terminal: `#/terminal/<session_id>`.
//
// A shell on the machine in an xterm.js terminal. Mints a viewer token, opens /ws/viewer with
// `video=0` (a terminal-only viewer: the agent streams no picture for it), and once the
// session is active asks for terminal 1 at the size the window fits. Keystrokes and pastes go
// as TerminalInput, size changes as TerminalResize, the shell's output comes back as
// TerminalOutput; TerminalExit ends it (the shell exited, or the relay or agent refused: the
// reason says which). No automatic reconnect: a shell does not survive the socket.

import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { api, ApiError } from '../api';
import * as session from '../session';
import { navigate, type PageContext } from '../router';
import { h, mount, pill } from '../ui/dom';
import type { Machine, Session, ViewerToken } from '../types';
import { decode, encode, nowUs, pb, type EnvelopeProps } from '../viewer/protocol';

type TermState = 'connecting' | 'waiting' | 'offline' | 'open' | 'ended' | 'disconnected' | 'error';

/** The relay takes viewer messages up to 64 KiB: a big paste goes in pieces. */
const INPUT_CHUNK = 16 * 1024;
const PING_EVERY_MS = 20_000;

/** A dark terminal in both themes: shells colour their output for a dark background. */
const XTERM_THEME = {
  background: '#0d1117',
  foreground: '#d6deeb',
  cursor: '#7ba3ff',
  cursorAccent: '#0d1117',
  selectionBackground: 'rgba(91, 141, 255, 0.35)',
  black: '#1b2333',
  red: '#ff7a70',
  green: '#4cc38a',
  yellow: '#f0b34a',
  blue: '#5b8dff',
  magenta: '#c792ea',
  cyan: '#56c2d6',
  white: '#d6deeb',
  brightBlack: '#667085',
  brightRed: '#ff9a92',
  brightGreen: '#7ddba9',
  brightYellow: '#ffd27a',
  brightBlue: '#8fb1ff',
  brightMagenta: '#ddb3ff',
  brightCyan: '#8be0ee',
  brightWhite: '#ffffff',
};

export function terminalPage({ root, params }: PageContext): () => void {
  const sessionId = params[0] ?? '';
  let ws: WebSocket | null = null;
  let state: TermState = 'connecting';
  let disposed = false;
  let sessionEnded = false;
  /** The terminal this page shows (0: none asked for on this connection yet). */
  let terminalId = 0;
  let nextTerminal = 1;
  let agentId: string | null = null;
  const encoder = new TextEncoder();

  // ---- layout ----
  const title = h('div', { class: 'viewer-title' }, h('strong', {}, 'Remote terminal'), h('span', { class: 'muted small mono' }, sessionId.slice(0, 8)));
  const statePill = h('span', { 'data-testid': 'terminal-state' });
  const newBtn = h('button', { class: 'btn btn-primary btn-sm', type: 'button', hidden: true, 'data-testid': 'terminal-new' }, 'New terminal');
  const reconnectBtn = h('button', { class: 'btn btn-primary btn-sm', type: 'button', hidden: true, 'data-testid': 'terminal-reconnect' }, 'Reconnect');
  const closeBtn = h('button', { class: 'btn btn-sm', type: 'button', title: 'End the shell and close this terminal', 'data-testid': 'terminal-close' }, 'Close');
  const statusLine = h('div', { class: 'terminal-status', role: 'status', 'aria-live': 'polite', 'data-testid': 'terminal-status' });
  const screen = h('div', { class: 'terminal-screen', 'data-testid': 'terminal' });
  mount(
    root,
    h(
      'div',
      { class: 'terminal-page' },
      h(
        'div',
        { class: 'viewer-bar terminal-bar', role: 'toolbar', 'aria-label': 'Terminal controls' },
        h('span', { class: 'terminal-badge', 'aria-hidden': 'true' }, '>_'),
        title,
        statePill,
        h('span', { class: 'spacer' }),
        newBtn,
        reconnectBtn,
        closeBtn,
      ),
      statusLine,
      h('div', { class: 'terminal-wrap' }, screen),
    ),
  );

  const term = new Terminal({
    cursorBlink: true,
    fontFamily: "ui-monospace, 'SFMono-Regular', 'JetBrains Mono', 'DejaVu Sans Mono', Menlo, Consolas, monospace",
    fontSize: 14,
    scrollback: 5000,
    theme: XTERM_THEME,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  const refit = () => {
    // A hidden or zero-sized container proposes nothing; fit() then leaves the size alone.
    try {
      fit.fit();
    } catch (e) {
      console.warn('terminal fit failed', e);
    }
  };
  refit();

  // ---- state display ----
  const setState = (s: TermState, message: string | null) => {
    state = s;
    const map: Record<TermState, [string, 'ok' | 'warn' | 'bad' | 'info' | 'muted']> = {
      connecting: ['connecting', 'info'],
      waiting: ['waiting for consent', 'warn'],
      offline: ['machine offline', 'warn'],
      open: ['connected', 'ok'],
      ended: ['ended', 'muted'],
      disconnected: ['disconnected', 'bad'],
      error: ['error', 'bad'],
    };
    const [text, tone] = map[s];
    mount(statePill, pill(text, tone));
    statePill.dataset.state = s;
    statusLine.dataset.tone = s === 'disconnected' || s === 'error' ? 'bad' : s === 'ended' ? 'muted' : s === 'waiting' || s === 'offline' ? 'warn' : 'info';
    statusLine.textContent = message ?? '';
    statusLine.hidden = !message;
    const socketUp = !!ws && ws.readyState === WebSocket.OPEN;
    // Another terminal after an exit; pointless for a user the relay refuses every time.
    newBtn.hidden = !(s === 'ended' && socketUp && !sessionEnded && session.can('terminal'));
    reconnectBtn.hidden = !(s === 'disconnected');
    // The fit depends on the status line's height.
    requestAnimationFrame(refit);
  };
  /** A dim `[…]` line on a line of its own; the cursor is hidden until the next shell.
   * (Where the cursor is, is known once what was written before is parsed.) */
  const dimLine = (text: string) => term.write('', () => term.write(`${term.buffer.active.cursorX ? '\r\n' : ''}\x1b[2m[${text}]\x1b[0m\r\n\x1b[?25l`));

  // ---- sending ----
  const send = (props: EnvelopeProps): boolean => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(encode(props) as Uint8Array<ArrayBuffer>);
    return true;
  };
  const sendInput = (data: Uint8Array) => {
    if (state !== 'open' || !terminalId) return;
    for (let at = 0; at < data.length; at += INPUT_CHUNK) send({ terminalInput: { terminalId, data: data.subarray(at, at + INPUT_CHUNK) } });
  };
  const openTerminal = () => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    // Without the status line first: the shell starts at the size it keeps.
    setState('open', null);
    refit();
    terminalId = nextTerminal++;
    send({ terminalOpen: { terminalId, cols: term.cols, rows: term.rows } });
    term.focus();
  };

  // Ctrl+C copies when text is selected (else it is ^C, as always); Ctrl+V and Ctrl+Shift+V
  // paste. Both are left to the browser, whose copy and paste events xterm handles.
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== 'keydown' || !e.ctrlKey || e.altKey || e.metaKey) return true;
    if (e.code === 'KeyC' && !e.shiftKey && term.hasSelection()) {
      window.setTimeout(() => term.clearSelection(), 0);
      return false;
    }
    return e.code !== 'KeyV';
  });
  term.onData((d) => sendInput(encoder.encode(d)));
  // Binary input (some mouse reports): one byte per character.
  term.onBinary((d) => sendInput(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(({ cols, rows }) => {
    if (state === 'open' && terminalId) send({ terminalResize: { terminalId, cols, rows } });
  });
  const ro = new ResizeObserver(() => refit());
  ro.observe(screen.parentElement as HTMLElement);
  window.addEventListener('resize', refit);

  // ---- receiving ----
  const terminalEnded = (why: string, refused: boolean) => {
    const reason = why.replace(/[.\s]+$/, '');
    terminalId = 0;
    dimLine(`terminal ended: ${reason}`);
    setState('ended', refused ? `The terminal could not be opened: ${reason}.` : `Terminal ended: ${reason}.`);
  };
  let sawOutput = false;
  const onMessage = (ev: MessageEvent) => {
    if (!(ev.data instanceof ArrayBuffer)) return;
    let env;
    try {
      env = decode(ev.data);
    } catch (e) {
      console.warn('undecodable message from the relay', e);
      return;
    }
    switch (env.payload) {
      case 'sessionState': {
        const s = env.sessionState;
        if (!s) return;
        if (s.phase === pb.SessionPhase.SESSION_PHASE_WAITING_FOR_CONSENT) {
          if (state === 'connecting') setState('waiting', 'Waiting for the end user to accept the connection…');
        } else if (s.phase === pb.SessionPhase.SESSION_PHASE_ACTIVE) {
          if (state === 'connecting' || state === 'waiting' || state === 'offline') {
            sawOutput = false;
            openTerminal();
          }
        } else if (s.phase === pb.SessionPhase.SESSION_PHASE_AGENT_OFFLINE) {
          // The shell ended with the agent's connection.
          if (state === 'open') {
            terminalId = 0;
            dimLine('the remote machine went offline');
          }
          setState('offline', 'The remote machine is offline. A new terminal opens when it is back…');
        }
        break;
      }
      case 'terminalOutput': {
        const o = env.terminalOutput;
        if (!o || !terminalId || o.terminalId !== terminalId || !o.data) return;
        sawOutput = true;
        term.write(o.data);
        break;
      }
      case 'terminalExit': {
        const x = env.terminalExit;
        if (!x || !terminalId || x.terminalId !== terminalId) return;
        terminalEnded(x.reason || `exit code ${x.exitCode ?? 0}`, !sawOutput && (x.exitCode ?? 0) === -1);
        break;
      }
      case 'sessionEnd':
        sessionOver(env.sessionEnd?.reason || 'The session ended.');
        break;
      default:
        break;
    }
  };

  const sessionOver = (reason: string) => {
    if (sessionEnded) return;
    sessionEnded = true;
    terminalId = 0;
    dimLine(`session ended: ${reason.replace(/[.\s]+$/, '')}`);
    setState('ended', `Session ended: ${reason}`);
    ws?.close(1000, 'done');
  };

  // ---- connecting ----
  let named = false;
  const nameTab = async (info: Session) => {
    agentId = info.agent_id;
    let name = info.live?.hostname;
    if (!name && !named) name = (await api.get<Machine>(`/api/machines/${encodeURIComponent(info.agent_id)}`).catch(() => null))?.hostname;
    if (!name || disposed) return;
    named = true;
    mount(title, h('strong', { 'data-testid': 'terminal-host' }, name), h('span', { class: 'muted small mono' }, `terminal · ${sessionId.slice(0, 8)}`));
    document.title = `Terminal · ${name} · GuruConnect`;
  };

  const connect = async () => {
    if (disposed) return;
    setState('connecting', 'Connecting…');
    let grant: ViewerToken;
    try {
      const info = await api.get<Session>(`/api/sessions/${encodeURIComponent(sessionId)}`).catch(() => null);
      if (disposed) return;
      if (info) await nameTab(info);
      if (disposed) return;
      grant = await api.post<ViewerToken>(`/api/sessions/${encodeURIComponent(sessionId)}/viewer-token`);
    } catch (e) {
      if (disposed) return;
      const err = ApiError.from(e);
      if (err.handled) return;
      const detail = `${err.detail}${err.correlationId ? ` (correlation id ${err.correlationId})` : ''}`;
      if (err.status === 409 || err.status === 404) {
        sessionEnded = true;
        setState('ended', `The session is not live: ${detail}`);
      } else if (err.status === 403) setState('error', detail);
      else setState('disconnected', `Disconnected: ${detail}`);
      return;
    }
    if (disposed) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${proto}//${location.host}/ws/viewer?session_id=${encodeURIComponent(sessionId)}&token=${encodeURIComponent(grant.token)}&video=0`;
    const sock = new WebSocket(url);
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      send({ viewerHello: { protocolVersion: pb.ProtocolVersion.PROTOCOL_VERSION_CURRENT, codecs: [pb.Codec.CODEC_RAW_ZSTD] } });
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
      if (disposed || sessionEnded) return;
      if (ev.code === 1000 && /ended|removed|administrator|denied|timed out|revoked/i.test(ev.reason)) {
        sessionOver(ev.reason);
        return;
      }
      const why = ev.reason ? ev.reason.replace(/[.\s]+$/, '') : 'the connection was lost';
      if (terminalId) dimLine(`disconnected: ${why}`);
      terminalId = 0;
      setState('disconnected', `Disconnected: ${why}.`);
    };
  };

  // ---- controls ----
  newBtn.addEventListener('click', () => {
    if (state !== 'ended' || sessionEnded) return;
    term.reset();
    sawOutput = false;
    openTerminal();
  });
  reconnectBtn.addEventListener('click', () => {
    if (state !== 'disconnected') return;
    term.reset();
    void connect();
  });
  const leave = () => {
    if (terminalId) send({ terminalClose: { terminalId } });
    terminalId = 0;
    disposed = true;
    ws?.close(1000, 'terminal closed');
    ws = null;
    navigate(agentId ? `/machines/${encodeURIComponent(agentId)}` : '/sessions');
  };
  closeBtn.addEventListener('click', leave);

  const pingTimer = window.setInterval(() => {
    send({ ping: { timestampUs: nowUs() } });
  }, PING_EVERY_MS);

  void connect();

  return () => {
    disposed = true;
    window.clearInterval(pingTimer);
    window.removeEventListener('resize', refit);
    ro.disconnect();
    if (ws) {
      const s = ws;
      ws = null;
      if (terminalId && s.readyState === WebSocket.OPEN) s.send(encode({ terminalClose: { terminalId } }) as Uint8Array<ArrayBuffer>);
      s.close(1000, 'terminal closed');
    }
    term.dispose();
  };
}
