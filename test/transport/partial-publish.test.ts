/**
 * What the MQTT transport keeps of a PUBLISH a close cuts short (transport/partial-publish.ts): the
 * payload received so far, on a matching topic only, at most `maxBytes`, at least `minBytes`; a
 * packet that completed leaves nothing. Fed through the packet scanner as a socket would, in pieces
 * split anywhere; hostile bytes never throw and never make it keep more than `maxBytes`.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeRemainingLength, PacketScanner } from '../../transport/packet-limit.ts';
import { PartialKeeper, type PartialRule } from '../../transport/partial-publish.ts';

const TOPIC = 'fleet/models/m/updates/0123/to/dev';
const rule: PartialRule = { match: (t) => t === TOPIC, maxBytes: 5000, minBytes: 100 };

/** A PUBLISH packet: QoS 0 or 1 (a packet id after the topic). */
function publishPacket(topic: string, payload: Uint8Array, qos: 0 | 1 = 0): Uint8Array {
  const t = Buffer.from(topic);
  const body = Buffer.concat([Buffer.from([t.length >> 8, t.length & 0xff]), t, qos ? Buffer.from([0x12, 0x34]) : Buffer.alloc(0), payload]);
  return new Uint8Array(Buffer.concat([Buffer.from([0x30 | (qos << 1)]), encodeRemainingLength(body.length), body]));
}
const ping = new Uint8Array([0xd0, 0x00]);

/** Feeds `bytes` in pieces cut at `cuts`, then closes: what is kept. */
function feed(bytes: Uint8Array, cuts: number[] = [], r: PartialRule | null = rule) {
  const keeper = new PartialKeeper(() => r ?? undefined);
  const scanner = new PacketScanner(() => 1 << 20, keeper);
  let at = 0;
  for (const c of [...cuts.filter((x) => x > 0 && x < bytes.length).sort((a, b) => a - b), bytes.length]) {
    scanner.feed(bytes.subarray(at, c));
    at = c;
  }
  return { resumable: keeper.resumable(), cut: keeper.closed() };
}

const payload = Uint8Array.from({ length: 3000 }, (_, i) => i % 251);

describe('the PUBLISH under way at a close', () => {
  it('QoS 0 and 1, cut anywhere in the payload: the payload received so far, on the matching topic', () => {
    for (const qos of [0, 1] as const) {
      const p = publishPacket(TOPIC, payload, qos);
      const payloadAt = p.length - payload.length;
      for (const got of [150, 1000, 2999]) {
        const bytes = Uint8Array.from([...ping, ...p.subarray(0, payloadAt + got)]);
        const k = feed(bytes, [1, 3, payloadAt - 1, payloadAt + 7]);
        expect(k.resumable).toBe(got);
        expect(k.cut).toEqual({ topic: TOPIC, bytes: payload.subarray(0, got) });
      }
    }
  });
  it('nothing for another topic, a packet that completed, less than minBytes, a cut before the payload, no rule', () => {
    const p = publishPacket(TOPIC, payload);
    const payloadAt = p.length - payload.length;
    expect(feed(publishPacket('fleet/other', payload).subarray(0, 2000)).cut).toBeUndefined();
    expect(feed(Uint8Array.from([...p, ...ping])).cut).toBeUndefined();
    expect(feed(p).cut).toBeUndefined();
    expect(feed(p.subarray(0, payloadAt + 99)).cut).toBeUndefined();
    expect(feed(p.subarray(0, payloadAt - 3)).cut).toBeUndefined();
    expect(feed(p.subarray(0, 2000), [], null).cut).toBeUndefined();
  });
  it('at most maxBytes of a longer payload', () => {
    const big = new Uint8Array(9000).fill(7);
    const p = publishPacket(TOPIC, big, 1);
    const k = feed(p.subarray(0, p.length - 100), [500, 4000, 8000]);
    expect(k.cut?.bytes.byteLength).toBe(rule.maxBytes);
  });
  it('a second packet after a completed one is followed from its own header', () => {
    const first = publishPacket(TOPIC, payload);
    const second = publishPacket(TOPIC, payload.slice().reverse(), 1);
    const k = feed(Uint8Array.from([...first, ...second.subarray(0, second.length - 500)]), [first.length - 1, first.length + 2]);
    expect(k.cut?.bytes).toEqual(
      payload
        .slice()
        .reverse()
        .subarray(0, payload.length - 500),
    );
  });
  it('hostile bytes (fuzz): never throws, never keeps more than maxBytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 7000 }), fc.array(fc.nat(7000), { maxLength: 5 }), fc.boolean(), (bytes, cuts, asPublish) => {
        const b = asPublish ? Uint8Array.from([...publishPacket(TOPIC, new Uint8Array(0)).subarray(0, 2), ...bytes]) : bytes;
        const k = feed(b, cuts, { match: () => true, maxBytes: 5000, minBytes: 1 });
        expect(k.cut?.bytes.byteLength ?? 0).toBeLessThanOrEqual(5000);
      }),
      { numRuns: 2000, seed: 20 },
    );
  });
});
