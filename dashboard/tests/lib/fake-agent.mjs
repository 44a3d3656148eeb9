// A scripted agent for browser tests: connects to /ws/agent with a per-agent key, says
// hello, streams lossless frames of known colours and records what viewers send it.
// Messages are the generated protocol types (src/gen, from proto/guruconnect.proto).

import WebSocket from 'ws';
import { guruconnect } from '../../src/gen/proto.js';

export const pb = guruconnect.v1;

/** A zstd frame made of raw (stored) blocks; fzstd and every decoder accept it. */
export function zstdStored(data) {
  const MAX = 128 * 1024;
  const parts = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38])]; // magic, FHD, window 128 KiB
  for (let off = 0; off < data.length || off === 0; off += MAX) {
    const chunk = data.subarray(off, Math.min(off + MAX, data.length));
    const last = off + MAX >= data.length ? 1 : 0;
    const header = (chunk.length << 3) | (0 << 1) | last; // block type 0 = raw
    parts.push(Buffer.from([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff]), Buffer.from(chunk));
    if (data.length === 0) break;
  }
  return Buffer.concat(parts);
}

function solid(width, height, [r, g, b]) {
  const px = Buffer.alloc(width * height * 4);
  for (let i = 0; i < px.length; i += 4) {
    px[i] = b;
    px[i + 1] = g;
    px[i + 2] = r;
    px[i + 3] = 0; // X11 leaves alpha 0; the viewer must draw it opaque
  }
  return px;
}

export const WIDTH = 320;
export const HEIGHT = 200;
export const LEFT = [0x33, 0x66, 0xcc];
export const RIGHT = [0xcc, 0x33, 0x33];

export class FakeAgent {
  constructor(baseUrl, key, { hostname = 'fake-pc', os = 'Linux', osVersion = 'Debian 12', agentVersion = '0.0.0-test' } = {}) {
    this.url = baseUrl.replace(/^http/, 'ws') + '/ws/agent';
    this.key = key;
    this.hostname = hostname;
    this.agentVersion = agentVersion;
    this.os = os;
    this.osVersion = osVersion;
    this.received = [];
    this.seq = 0;
    this.waiters = [];
  }

  send(props) {
    this.ws.send(pb.Envelope.encode({ ...props, seq: ++this.seq }).finish());
  }

  connect() {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(this.url, { headers: { Authorization: `Bearer ${this.key}` } });
      this.ws.on('error', reject);
      this.ws.on('open', () => {
        this.displays = [
          { id: 0, name: 'Built-in', x: 0, y: 0, width: WIDTH, height: HEIGHT, primary: true },
          { id: 1, name: 'Dell U2720Q', x: WIDTH, y: 0, width: WIDTH, height: HEIGHT, primary: false },
        ];
        this.send({
          agentHello: {
            protocolVersion: pb.ProtocolVersion.PROTOCOL_VERSION_CURRENT,
            hostname: this.hostname,
            os: this.os,
            osVersion: this.osVersion,
            agentVersion: this.agentVersion,
            codecs: [pb.Codec.CODEC_RAW_ZSTD],
            displays: this.displays,
            capabilities: ['chat', 'clipboard'],
          },
        });
        this.sendDisplays();
        resolve();
      });
      this.ws.on('message', (data) => {
        const env = pb.Envelope.decode(new Uint8Array(data));
        this.received.push(env);
        if (env.payload === 'startStream' || env.payload === 'refreshRequest') this.sendFrame();
        // The relay does not cache the display list: tell each viewer that joins.
        if (env.payload === 'viewerJoined' || env.payload === 'startStream') this.sendDisplays();
        this.waiters = this.waiters.filter((w) => !w());
      });
    });
  }

  sendDisplays() {
    this.send({ displayList: { displays: this.displays, activeDisplayId: 0 } });
  }

  /** A full frame: the left half LEFT, the right half RIGHT, as two rects. */
  sendFrame() {
    const half = WIDTH / 2;
    const data = Buffer.concat([solid(half, HEIGHT, LEFT), solid(half, HEIGHT, RIGHT)]);
    this.send({
      videoFrame: {
        codec: pb.Codec.CODEC_RAW_ZSTD,
        displayId: 0,
        width: WIDTH,
        height: HEIGHT,
        rects: [
          { x: 0, y: 0, width: half, height: HEIGHT },
          { x: half, y: 0, width: half, height: HEIGHT },
        ],
        data: zstdStored(data),
        keyframe: true,
        sequence: this.seq,
        captureTimestampUs: Date.now() * 1000,
      },
    });
  }

  /** Reports an inventory (AgentStatus), as the real agent does after connecting. */
  sendStatus(status) {
    this.send({ agentStatus: { hostname: this.hostname, os: this.os, osVersion: this.osVersion, agentVersion: this.agentVersion, ...status } });
  }

  of(kind) {
    return this.received.filter((e) => e.payload === kind).map((e) => e[kind]);
  }

  /** Resolves when `pred(received)` holds (checked on every message), or rejects on timeout. */
  until(pred, what, ms = 10_000) {
    return new Promise((resolve, reject) => {
      if (pred(this)) return resolve();
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; got ${this.received.map((e) => e.payload).join(',')}`)), ms);
      this.waiters.push(() => {
        if (!pred(this)) return false;
        clearTimeout(timer);
        resolve();
        return true;
      });
    });
  }

  close() {
    this.ws?.close(1000, 'agent stopping');
  }
}
