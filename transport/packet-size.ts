/**
 * How many bytes an MQTT 3.1.1 packet takes on the wire (fixed header, remaining length
 * and body), from the packet object MQTT.js emits as `packetsend`: simulations break a
 * device's uplink down by packet type with it. Pure.
 */

/** The fields of an MQTT.js packet this reads (all optional: each type has its own). */
export interface SentPacket {
  cmd: string;
  topic?: string;
  payload?: Uint8Array | string;
  qos?: number;
  clientId?: string;
  will?: { topic?: string; payload?: Uint8Array | string } | null;
  username?: string;
  password?: Uint8Array | string;
  subscriptions?: Array<{ topic: string }>;
  unsubscriptions?: string[];
}

const strLen = (s: Uint8Array | string | undefined): number => (s === undefined ? 0 : typeof s === 'string' ? Buffer.byteLength(s) : s.byteLength);

/** The remaining length (everything after the fixed header's length field). */
function remaining(p: SentPacket): number {
  switch (p.cmd) {
    case 'publish':
      return 2 + strLen(p.topic) + ((p.qos ?? 0) > 0 ? 2 : 0) + strLen(p.payload);
    case 'connect': {
      let n = 10 + 2 + strLen(p.clientId);
      if (p.will) n += 2 + strLen(p.will.topic) + 2 + strLen(p.will.payload);
      if (p.username !== undefined) n += 2 + strLen(p.username);
      if (p.password !== undefined) n += 2 + strLen(p.password);
      return n;
    }
    case 'subscribe':
      return 2 + (p.subscriptions ?? []).reduce((x, s) => x + 2 + strLen(s.topic) + 1, 0);
    case 'unsubscribe':
      return 2 + (p.unsubscriptions ?? []).reduce((x, t) => x + 2 + strLen(t), 0);
    case 'puback':
    case 'pubrec':
    case 'pubrel':
    case 'pubcomp':
      return 2;
    default:
      return 0; // pingreq, disconnect
  }
}

/** Bytes of the whole packet: 1 (type and flags) + the remaining length's varint + the remaining length. */
export function mqttPacketBytes(p: SentPacket): number {
  const rem = remaining(p);
  const varint = rem < 128 ? 1 : rem < 16_384 ? 2 : rem < 2_097_152 ? 3 : 4;
  return 1 + varint + rem;
}
