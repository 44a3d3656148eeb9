// Thin helpers over the generated protocol types (src/gen, from proto/guruconnect.proto).

import { guruconnect } from '../gen/proto.js';

export const pb = guruconnect.v1;
export type Envelope = guruconnect.v1.Envelope;
export type EnvelopeProps = guruconnect.v1.Envelope.$Properties;
export type VideoFrameMsg = guruconnect.v1.VideoFrame.$Properties;
export type StreamModeMsg = guruconnect.v1.StreamMode.$Properties;

let seq = 0;

/** Encodes one envelope (the seq is filled in). */
export function encode(props: EnvelopeProps): Uint8Array {
  return pb.Envelope.encode({ ...props, seq: ++seq }).finish();
}

export function decode(data: ArrayBuffer): Envelope {
  return pb.Envelope.decode(new Uint8Array(data));
}

/** Microseconds since the epoch (viewer clock). */
export function nowUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}
