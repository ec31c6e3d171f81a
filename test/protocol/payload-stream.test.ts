/**
 * The payload decoded piece by piece (PayloadDecoder: bytes pushed in chunks of any
 * size, then each tensor's item) decides exactly as the whole-input decode of the
 * protocol (checkStrictCbor over all of it, then checkPayload): the same value or the
 * same reason code, and a CBOR fault reported as one in both; and it buffers about one
 * tensor at a time, never the payload.
 */
import fc from 'fast-check';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cborDecode } from '../../protocol/cbor.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { checkPayload, decodePayload, encodePayload, PayloadDecoder, type Payload, type PayloadLimits } from '../../protocol/lowrank.ts';
import { corpus, norm, payloadArb, SEED, TEST_TIMEOUT } from './fuzz-kit.ts';

type Outcome = { ok: unknown } | { code: string; cbor: boolean };

function outcome(fn: () => Payload): Outcome {
  try {
    return { ok: norm(fn()) };
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    return { code: e.code, cbor: e.message.includes('not CBOR') };
  }
}

/** The whole-input decode: every byte checked against the CBOR subset first, then the payload's rules. */
function wholeDecode(bytes: Uint8Array, limits: PayloadLimits): Payload {
  let x: unknown;
  try {
    x = cborDecode(bytes);
  } catch (e) {
    throw new ProtocolError('malformed-payload', `not CBOR: ${(e as Error).message}`);
  }
  return checkPayload(x, limits);
}

/** Pushed in chunks of the given sizes (cycled), then each tensor's item read back from the bytes. */
function chunkedDecode(bytes: Uint8Array, sizes: number[], limits: PayloadLimits): { payload: Payload; maxHeld: number } {
  const d = new PayloadDecoder(limits);
  let maxHeld = 0;
  for (let pos = 0, k = 0; pos < bytes.byteLength; k++) {
    const n = Math.max(1, sizes[k % sizes.length]);
    d.push(bytes.slice(pos, pos + n)); // a copy: the decoder must not rely on the caller keeping it
    pos += n;
    maxHeld = Math.max(maxHeld, d.heldCapacity);
  }
  const { base, target, items } = d.end();
  const tensors = items.map((it) => d.tensor(it, bytes.slice(it.offset, it.offset + it.length)));
  return { payload: { v: 1, base, target, tensors }, maxHeld };
}

const vectors = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../protocol/vectors');

describe('the payload decoded piece by piece', () => {
  it(
    'decides every payload of the conformance cases as the whole-input decode does, in chunks of 1, 2, 7, 64 and 4096 bytes',
    () => {
      const files = [
        'payload.cbor',
        ...readdirSync(path.join(vectors, 'cases'))
          .filter((f) => f.endsWith('.cbor'))
          .map((f) => `cases/${f}`),
      ];
      expect(files.length).toBeGreaterThan(40);
      let refused = 0;
      for (const f of files) {
        const bytes = new Uint8Array(readFileSync(path.join(vectors, f)));
        const want = outcome(() => wholeDecode(bytes, {}));
        if ('code' in want) refused++;
        for (const size of [1, 2, 7, 64, 4096])
          expect(
            outcome(() => chunkedDecode(bytes, [size], {}).payload),
            `${f} in chunks of ${size}`,
          ).toEqual(want);
        expect(
          outcome(() => decodePayload(bytes)),
          f,
        ).toEqual(want);
      }
      expect(refused).toBeGreaterThan(30); // the cases are mostly refusals: the comparison covers them
    },
    TEST_TIMEOUT,
  );

  it(
    'random payloads, mutated or not, in random chunks: the same value or the same reason code',
    () => {
      const limits = fc.constantFrom<PayloadLimits>({}, { maxTensors: 1 });
      const sizes = fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 6 });
      fc.assert(
        fc.property(corpus(payloadArb, encodePayload), sizes, limits, (c, s, l) => {
          expect(outcome(() => chunkedDecode(c.bytes, s, l).payload)).toEqual(outcome(() => wholeDecode(c.bytes, l)));
        }),
        { numRuns: 3000, seed: SEED, endOnFailure: true },
      );
    },
    TEST_TIMEOUT,
  );

  it('holds about one tensor at a time, not the payload', () => {
    // 16 dense deltas of 48 KiB each (768 KiB) pushed 16 KiB at a time.
    const tensors = Array.from({ length: 16 }, (_, i) => ({ name: `t${String(i).padStart(2, '0')}`, shape: [12_288], dense: new Uint8Array(new Float32Array(12_288).fill(i / 7).buffer) }));
    const bytes = encodePayload({ v: 1, base: 'a'.repeat(64), target: 'b'.repeat(64), tensors });
    const { payload, maxHeld } = chunkedDecode(bytes, [16 * 1024], {});
    expect(norm(payload)).toEqual(norm(decodePayload(bytes)));
    const item = 12_288 * 4 + 64;
    expect(maxHeld).toBeGreaterThan(0);
    expect(maxHeld).toBeLessThanOrEqual(Math.max(64 * 1024, Math.ceil(1.5 * item) + 16 * 1024));
    expect(maxHeld).toBeLessThan(bytes.byteLength / 5);
  });
});
