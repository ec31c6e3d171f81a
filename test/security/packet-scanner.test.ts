import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PacketScanner } from '../../transport/packet-limit.ts';
import { remainingLength } from '../support/raw-mqtt.ts';

/** Packets of the given body sizes, concatenated, cut into pieces at `cuts`. */
function wire(sizes: number[], cuts: number[]): Uint8Array[] {
  const all = Buffer.concat(sizes.map((n, i) => Buffer.concat([Buffer.from([((i % 14) + 1) << 4]), remainingLength(n), Buffer.alloc(n, 0xff)])));
  const at = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of [...at, all.length]) {
    out.push(all.subarray(prev, c));
    prev = c;
  }
  return out;
}

describe('PacketScanner follows packet boundaries however the bytes are cut', () => {
  it('knows how many bytes of the packet under way it has seen (what a close throws away)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 20_000 }), { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 30 }), fc.nat(), (sizes, cuts, stop) => {
        const all = Buffer.concat(wire(sizes, cuts));
        const at = stop % (all.length + 1);
        const s = new PacketScanner(() => 1 << 20);
        let start = 0;
        for (const piece of wire(sizes, cuts)) {
          if (start >= at) break;
          s.feed(piece.subarray(0, Math.min(piece.length, at - start)));
          start += piece.length;
        }
        // The packet under way at `at`: its start, from the sizes.
        let begin = 0;
        for (const n of sizes) {
          const len = 1 + remainingLength(n).length + n;
          if (begin + len > at) break;
          begin += len;
        }
        expect(s.partialBytes).toBe(at - begin);
      }),
    );
  });

  it('counts every packet within the limit and flags the first one over it', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 20_000 }), { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 30 }), fc.integer({ min: 0, max: 20_000 }), (sizes, cuts, limit) => {
        const s = new PacketScanner(() => limit);
        let breach: ReturnType<PacketScanner['feed']>;
        for (const piece of wire(sizes, cuts)) breach ??= s.feed(piece);
        const first = sizes.findIndex((n) => n > limit);
        if (first < 0) {
          expect(breach).toBeUndefined();
          expect(s.packets).toBe(sizes.length);
        } else {
          expect(breach).toEqual({ reason: 'packet-too-large', type: (first % 14) + 1, declared: sizes[first], limit });
          expect(s.packets).toBe(first);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('a fifth length byte is malformed', () => {
    const s = new PacketScanner(() => Number.MAX_SAFE_INTEGER);
    expect(s.feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]))?.reason).toBe('malformed-length');
  });

  it('the largest length MQTT can encode is read exactly', () => {
    const s = new PacketScanner(() => 1000);
    expect(s.feed(Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f]))).toEqual({ reason: 'packet-too-large', type: 1, declared: 268_435_455, limit: 1000 });
  });
});
