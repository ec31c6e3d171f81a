/**
 * Structure-aware fuzzing of every decoder: valid encodings built by the
 * encoders (which must round-trip), the same encodings mutated (bytes flipped,
 * truncated, spliced, one field of the decoded map replaced by a random CBOR
 * value and re-encoded, duplicate or non-text keys, wrong types), and plain
 * random bytes. A decoder either returns a value or throws ProtocolError.
 * Signed documents (releases, manifests, assignments, envelopes, trust files
 * and their signed updates) are in fuzz-signed.test.ts; the shared parts in fuzz-kit.ts.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeFrame, decodeReceipt, decodeRequest, encodeFrame, encodeReceipt, encodeRequest, MAX_CHUNKS, MAX_TAIL_OFFSET, type ChunkRequest, type Frame, type UploadReceipt } from '../../protocol/frames.ts';
import { decodePayload, encodePayload } from '../../protocol/lowrank.ts';
import { isWellFormedName, parseSafetensorsHeader, readSafetensors, writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { safetensorsDigest } from '../../protocol/digest.ts';
import { DEVICE_STATES, encodeStatus, parseStatus, type DeviceStatus } from '../../protocol/status.ts';
import { DTYPES, dtypeSize } from '../../protocol/dtypes.ts';
import { byteMutation, concat, containers, corpus, decodeOrProtocolError, fuzz, hexString, norm, params, payloadArb, textMutation, utf8, TEST_TIMEOUT, type Case, type Mutation } from './fuzz-kit.ts';

// --- frames, requests, receipts ----------------------------------------------

const updateId = hexString(32);
const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  fc
    .record({ updateId, count: fc.integer({ min: 1, max: MAX_CHUNKS }), data: fc.uint8Array({ maxLength: 64 }), r: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }) })
    .map(({ updateId: u, count, data, r }): Frame => ({ kind: 'chunk', updateId: u, index: Math.floor(r * count), count, data })),
  fc
    .record({
      updateId,
      count: fc.integer({ min: 1, max: MAX_CHUNKS }),
      offset: fc.integer({ min: 1, max: MAX_TAIL_OFFSET }),
      data: fc.uint8Array({ maxLength: 64 }),
      r: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
    })
    .map(({ updateId: u, count, offset, data, r }): Frame => ({ kind: 'chunk', updateId: u, index: Math.floor(r * count), count, offset, data })),
  fc
    .integer({ min: 1, max: 4 })
    .chain((n) => fc.record({ updateId, list: fc.uint8Array({ minLength: 32 * n, maxLength: 32 * n }) }).map(({ updateId: u, list }): Frame => ({ kind: 'list', updateId: u, count: n, list }))),
  fc.record({ updateId, error: fc.constantFrom('unknown-update' as const, 'bad-request' as const) }).map((e): Frame => ({ kind: 'error', ...e })),
);
const requestArb: fc.Arbitrary<ChunkRequest> = fc
  .record({ want: fc.array(fc.integer({ min: 0, max: MAX_CHUNKS - 1 }), { maxLength: 40 }), list: fc.boolean(), offsets: fc.array(fc.integer({ min: 1, max: MAX_TAIL_OFFSET }), { maxLength: 3 }) })
  .filter((r) => r.list || r.want.length > 0)
  .map(({ want, list, offsets }): ChunkRequest => {
    const tail = [...new Set(want)].slice(0, offsets.length).map((i, k): [number, number] => [i, offsets[k]]);
    return tail.length ? { want, list, tail } : { want, list };
  });
const receiptArb: fc.Arbitrary<UploadReceipt> = fc
  .record({
    updateId,
    stored: fc.boolean(),
    count: fc.maxSafeNat(),
    have: fc.maxSafeNat(),
    missing: fc.array(fc.integer({ min: 0, max: MAX_CHUNKS }), { maxLength: 20 }),
    error: fc.option(fc.string({ minLength: 1, maxLength: 20 }), { nil: undefined }),
  })
  .map((r) => (r.error === undefined ? (({ error: _e, ...rest }) => rest)(r) : r) as UploadReceipt);

describe('fuzz: transfer messages', () => {
  it('decodeFrame', () => fuzz(corpus(frameArb, encodeFrame), decodeFrame), TEST_TIMEOUT);
  it('decodeRequest', () => fuzz(corpus(requestArb, encodeRequest), decodeRequest), TEST_TIMEOUT);
  it('decodeReceipt', () => fuzz(corpus(receiptArb, encodeReceipt), decodeReceipt), TEST_TIMEOUT);
});

// --- payloads -----------------------------------------------------------------

describe('fuzz: payloads', () => {
  it('decodePayload', () => fuzz(corpus(payloadArb, encodePayload), (b) => decodePayload(b, { maxTensors: 8, maxBytes: 4096 })), TEST_TIMEOUT);
});

// --- safetensors ------------------------------------------------------------------

const stName = fc.string({ unit: 'binary', minLength: 0, maxLength: 8 }).filter((s) => isWellFormedName(s) && s !== '__metadata__');
const tensorArb: fc.Arbitrary<TensorInput> = fc.record({ name: stName, dtype: fc.constantFrom(...DTYPES), shape: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }) }).chain((t) => {
  const size = t.shape.reduce((a, b) => a * b, 1) * dtypeSize(t.dtype);
  return fc.uint8Array({ minLength: size, maxLength: size }).map((data) => ({ ...t, data }));
});
const metaArb = fc.dictionary(fc.string({ unit: 'binary', maxLength: 6 }).filter(isWellFormedName), fc.string({ unit: 'binary', maxLength: 6 }).filter(isWellFormedName), { maxKeys: 3, noNullPrototype: true });
const modelArb = fc.record({ tensors: fc.uniqueArray(tensorArb, { maxLength: 4, selector: (t) => t.name }), metadata: metaArb });
const encodeModel = (m: { tensors: TensorInput[]; metadata: Record<string, string> }) => writeSafetensors(m.tensors, m.metadata);

/** Header-aware: parse the JSON header, replace one value with random JSON, re-serialize with the new length. */
const headerMutation: fc.Arbitrary<Mutation> = fc
  .tuple(fc.nat(), fc.nat(), fc.jsonValue({ maxDepth: 2 }), fc.option(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), { nil: undefined }))
  .map(([which, slot, value, length]): Mutation => (b) => {
    const n = Number(Buffer.from(b).readBigUInt64LE(0));
    const json = JSON.parse(Buffer.from(b.subarray(8, 8 + n)).toString('utf8')) as unknown;
    const all = containers(json);
    const c = all[which % all.length];
    if (Array.isArray(c)) c[slot % (c.length + 1)] = value;
    else {
      const ks = Object.keys(c);
      c[ks.length ? ks[slot % ks.length] : 'x'] = value;
    }
    const text = Buffer.from(JSON.stringify(json), 'utf8');
    const head = Buffer.alloc(8);
    head.writeBigUInt64LE(length ?? BigInt(text.length));
    return concat(head, text, b.subarray(8 + n));
  });

describe('fuzz: model files', () => {
  it(
    'parseSafetensorsHeader and readSafetensors',
    () => {
      const arb = fc.tuple(corpus(modelArb, encodeModel, fc.oneof(byteMutation, headerMutation)), fc.option(fc.integer({ min: -2, max: 4096 }), { nil: undefined }));
      fc.assert(
        fc.property(arb, ([x, size]) => {
          decodeOrProtocolError(() => parseSafetensorsHeader(x.bytes, size));
          const file = decodeOrProtocolError(() => readSafetensors(x.bytes));
          decodeOrProtocolError(() => safetensorsDigest(x.bytes));
          if (x.valid) {
            const byName = new Map(x.value.tensors.map((t) => [t.name, t]));
            expect(file?.tensors.map((t) => norm({ name: t.name, dtype: t.dtype, shape: t.shape, data: t.data }))).toEqual(
              [...byName.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))).map((k) => norm(byName.get(k))),
            );
            expect(norm(file!.header.metadata)).toEqual(norm(x.value.metadata));
          }
        }),
        params,
      );
    },
    TEST_TIMEOUT,
  );
});

// --- statuses ---------------------------------------------------------------------

const ident = fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/).filter((s) => !/^\.+$/.test(s)); // the identifier rule: not dots alone
const statusArb: fc.Arbitrary<DeviceStatus> = fc
  .record({
    device: ident,
    group: ident,
    model: ident,
    state: fc.constantFrom(...DEVICE_STATES),
    running: hexString(64),
    target: fc.option(hexString(64), { nil: null }),
    seq: fc.option(fc.maxSafeNat(), { nil: null }),
    updateId: fc.option(hexString(32), { nil: null }),
    rollback: fc.boolean(),
    progress: fc.double({ min: 0, max: 1, noNaN: true }),
    bytes: fc.maxSafeNat(),
    totalBytes: fc.maxSafeNat(),
    badChunks: fc.nat(),
    rateBps: fc.nat(),
    wire: fc.option(fc.record({ bytesIn: fc.nat(), bytesOut: fc.nat(), connects: fc.nat() }), { nil: null }),
    reason: fc.option(fc.string(), { nil: null }),
    message: fc.option(fc.string({ unit: 'binary' }).filter(isWellFormedName), { nil: null }),
    agent: fc.string(),
    time: fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
  })
  .map((s) => ({ ...s, progress: Object.is(s.progress, -0) ? 0 : s.progress }));

describe('fuzz: JSON documents', () => {
  it(
    'parseStatus never throws: a status or null',
    () => {
      const arb = fc.oneof({ weight: 9, arbitrary: corpus(statusArb, encodeStatus, textMutation) }, { weight: 1, arbitrary: fc.json().map((j): Case<DeviceStatus> => ({ valid: false, bytes: utf8(j) })) });
      fc.assert(
        fc.property(arb, (x) => {
          const s = parseStatus(x.bytes); // no try: it must not throw at all
          if (x.valid) expect(s).toEqual(x.value);
          else if (s !== null) expect(DEVICE_STATES).toContain(s.state);
        }),
        params,
      );
    },
    TEST_TIMEOUT,
  );
});
