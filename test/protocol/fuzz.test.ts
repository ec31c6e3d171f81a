/**
 * Structure-aware fuzzing of every decoder: valid encodings built by the
 * encoders (which must round-trip), the same encodings mutated (bytes flipped,
 * truncated, spliced, one field of the decoded map replaced by a random CBOR
 * value and re-encoded, duplicate or non-text keys, wrong types), and plain
 * random bytes. A decoder either returns a value or throws ProtocolError.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cborDecode, cborEncode } from '../../protocol/cbor.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import {
  decodeFrame, decodeReceipt, decodeRequest, encodeFrame, encodeReceipt, encodeRequest, MAX_CHUNKS,
  type ChunkRequest, type Frame, type UploadReceipt,
} from '../../protocol/frames.ts';
import { decodePayload, encodePayload, type Payload, type TensorDelta } from '../../protocol/lowrank.ts';
import {
  decodeReleaseBody, decodeSignedRelease, encodeReleaseBody, formatTrustFile, parseTrustFile, signingKeyFromSeed,
  signRelease, verifyRelease, type ReleaseBody, type ReleaseStep, type TrustFile,
} from '../../protocol/release.ts';
import { isWellFormedName, parseSafetensorsHeader, readSafetensors, writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { safetensorsDigest } from '../../protocol/digest.ts';
import { DEVICE_STATES, encodeStatus, parseStatus, type DeviceStatus } from '../../protocol/status.ts';
import { DTYPES, dtypeSize } from '../../protocol/dtypes.ts';

const RUNS = 10_000;
const SEED = 0x5eed_f1ee;
const params = { numRuns: RUNS, seed: SEED, endOnFailure: true };
const TEST_TIMEOUT = 60_000;

/** Runs the decoder: its value, or undefined when it threw a ProtocolError. Anything else, or a slow call, fails. */
function decodeOrProtocolError<T>(fn: () => T): T | undefined {
  const t0 = performance.now();
  try {
    return fn();
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw new Error(`a non-ProtocolError escaped: ${(e as Error)?.stack ?? String(e)}`);
    return undefined;
  } finally {
    const ms = performance.now() - t0;
    if (ms > 2000) throw new Error(`decoder took ${ms.toFixed(0)} ms`);
  }
}

/** Comparable form: byte arrays as hex, objects with sorted keys. */
function norm(v: unknown): unknown {
  if (v instanceof Uint8Array) return `bytes:${Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex')}`;
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, norm((v as Record<string, unknown>)[k])]));
  return v;
}

const concat = (...parts: Uint8Array[]): Uint8Array => new Uint8Array(Buffer.concat(parts));
const hexString = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });

// --- random CBOR values and mutations ---------------------------------------

const leaf: fc.Arbitrary<unknown> = fc.oneof(
  fc.integer(), fc.integer({ min: 0, max: 2 ** 32 }), fc.maxSafeNat(), fc.double(), fc.bigInt({ min: -(2n ** 64n) + 1n, max: 2n ** 64n - 1n }),
  fc.string({ maxLength: 70 }), hexString(32), hexString(64), fc.uint8Array({ maxLength: 70 }), fc.boolean(), fc.constant(null), fc.constant(-0),
);
const cborValue: fc.Arbitrary<unknown> = fc.letrec<{ v: unknown }>((tie) => ({
  v: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(fc.string({ maxLength: 6 }), tie('v'), { maxKeys: 4 })),
})).v;

type Mutation = (b: Uint8Array) => Uint8Array;
const byteMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }).map((flips): Mutation => (b) => {
    const c = b.slice();
    for (const [p, x] of flips) if (c.length) c[p % c.length] ^= x;
    return c;
  }),
  fc.nat().map((p): Mutation => (b) => b.subarray(0, b.length ? p % b.length : 0)),
  fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 16 })).map(([p, ins]): Mutation => (b) => {
    const at = b.length ? p % (b.length + 1) : 0;
    return concat(b.subarray(0, at), ins, b.subarray(at));
  }),
  fc.tuple(fc.nat(), fc.integer({ min: 1, max: 16 })).map(([p, n]): Mutation => (b) => {
    const at = b.length ? p % b.length : 0;
    return concat(b.subarray(0, at), b.subarray(at + n));
  }),
  fc.uint8Array({ minLength: 1, maxLength: 8 }).map((t): Mutation => (b) => concat(b, t)),
  fc.constant<Mutation>((b) => concat(b, b)),
);

/** Every map and array in a decoded value, in a fixed walk order. */
function containers(v: unknown, out: Array<Record<string, unknown> | unknown[]> = []): Array<Record<string, unknown> | unknown[]> {
  if (Array.isArray(v)) {
    out.push(v);
    for (const x of v) containers(x, out);
  } else if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    out.push(v as Record<string, unknown>);
    for (const x of Object.values(v)) containers(x, out);
  }
  return out;
}

/** CBOR map header for n entries. */
function mapHeader(n: number): Uint8Array {
  return n < 24 ? new Uint8Array([0xa0 | n]) : new Uint8Array([0xb8, n]);
}

/** Re-encodes a map by hand with its entries plus one extra (a duplicate key or a key of another type). */
function rawMapWith(m: Record<string, unknown>, key: unknown, value: unknown, at: number): Uint8Array {
  const entries: Array<[unknown, unknown]> = Object.entries(m);
  entries.splice(at % (entries.length + 1), 0, [key, value]);
  return concat(mapHeader(entries.length), ...entries.flatMap(([k, v]) => [cborEncode(k), cborEncode(v)]));
}

/** Structure-aware: decode, change one field somewhere (replace, delete, duplicate key, non-text key), re-encode. */
const fieldMutation: fc.Arbitrary<Mutation> = fc
  .tuple(fc.nat(), fc.nat(), fc.integer({ min: 0, max: 3 }), cborValue, fc.option(fc.string({ maxLength: 8 }), { nil: undefined }))
  .map(([which, slot, action, value, newKey]): Mutation => (b) => {
    let root: unknown;
    try {
      root = cborDecode(b);
    } catch {
      return b;
    }
    const all = containers(root);
    if (all.length === 0) return cborEncode(value);
    const c = all[which % all.length];
    if (Array.isArray(c)) {
      if (action === 1 && c.length) c.splice(slot % c.length, 1);
      else if (action === 2) c.splice(slot % (c.length + 1), 0, value);
      else if (c.length) c[slot % c.length] = value;
      return cborEncode(root);
    }
    const keys = Object.keys(c);
    const key = newKey ?? (keys.length ? keys[slot % keys.length] : 'v');
    if (action === 1) delete c[key];
    else if (action === 3 && c === root) return rawMapWith(c, newKey === undefined ? key : slot % 3 === 0 ? slot : value, value, slot);
    else c[key] = value;
    return cborEncode(root);
  });

const mutation: fc.Arbitrary<Mutation> = fc.oneof(byteMutation, fieldMutation, fc.tuple(fieldMutation, byteMutation).map(([a, b]) => (x: Uint8Array) => b(a(x))));

type Case<T> = { valid: true; value: T; bytes: Uint8Array } | { valid: false; bytes: Uint8Array };

/** Valid encodings, mutated valid encodings, and plain random bytes. */
function corpus<T>(valid: fc.Arbitrary<T>, encode: (v: T) => Uint8Array, mutate = mutation): fc.Arbitrary<Case<T>> {
  const v = valid.map((value) => ({ value, bytes: encode(value) }));
  return fc.oneof(
    { weight: 2, arbitrary: v.map((x): Case<T> => ({ valid: true, ...x })) },
    { weight: 6, arbitrary: fc.tuple(v, mutate).map(([x, m]): Case<T> => ({ valid: false, bytes: m(x.bytes) })) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((bytes): Case<T> => ({ valid: false, bytes })) },
    { weight: 1, arbitrary: cborValue.map((x): Case<T> => ({ valid: false, bytes: cborEncode(x) })) },
  );
}

function fuzz<T>(c: fc.Arbitrary<Case<T>>, decode: (b: Uint8Array) => unknown, expected: (v: T) => unknown = (v) => v): void {
  fc.assert(fc.property(c, (x) => {
    const out = decodeOrProtocolError(() => decode(x.bytes));
    if (x.valid) expect(norm(out)).toEqual(norm(expected(x.value)));
  }), params);
}

// --- frames, requests, receipts ----------------------------------------------

const updateId = hexString(32);
const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  fc.record({ updateId, count: fc.integer({ min: 1, max: MAX_CHUNKS }), data: fc.uint8Array({ maxLength: 64 }), r: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }) })
    .map(({ updateId: u, count, data, r }): Frame => ({ kind: 'chunk', updateId: u, index: Math.floor(r * count), count, data })),
  fc.integer({ min: 1, max: 4 }).chain((n) => fc.record({ updateId, list: fc.uint8Array({ minLength: 32 * n, maxLength: 32 * n }) })
    .map(({ updateId: u, list }): Frame => ({ kind: 'list', updateId: u, count: n, list }))),
  fc.record({ updateId, error: fc.constantFrom('unknown-update' as const, 'bad-request' as const) }).map((e): Frame => ({ kind: 'error', ...e })),
);
const requestArb: fc.Arbitrary<ChunkRequest> = fc.record({ want: fc.array(fc.integer({ min: 0, max: MAX_CHUNKS - 1 }), { maxLength: 40 }), list: fc.boolean() })
  .filter((r) => r.list || r.want.length > 0);
const receiptArb: fc.Arbitrary<UploadReceipt> = fc.record({
  updateId, stored: fc.boolean(), count: fc.maxSafeNat(), have: fc.maxSafeNat(),
  missing: fc.array(fc.integer({ min: 0, max: MAX_CHUNKS }), { maxLength: 20 }), error: fc.option(fc.string({ minLength: 1, maxLength: 20 }), { nil: undefined }),
}).map((r) => (r.error === undefined ? (({ error: _e, ...rest }) => rest)(r) : r) as UploadReceipt);

describe('fuzz: transfer messages', () => {
  it('decodeFrame', () => fuzz(corpus(frameArb, encodeFrame), decodeFrame), TEST_TIMEOUT);
  it('decodeRequest', () => fuzz(corpus(requestArb, encodeRequest), decodeRequest), TEST_TIMEOUT);
  it('decodeReceipt', () => fuzz(corpus(receiptArb, encodeReceipt), decodeReceipt), TEST_TIMEOUT);
});

// --- releases ---------------------------------------------------------------

const ident = fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/);
const stepFields = fc.record({ chunk: fc.integer({ min: 1, max: 1 << 20 }), chunks: fc.integer({ min: 1, max: MAX_CHUNKS }), r: fc.double({ min: 0, max: 1, noNaN: true }), sha256: hexString(64), list: hexString(64) })
  .map(({ chunk, chunks, r, sha256, list }) => {
    const size = Math.min(chunks * chunk, (chunks - 1) * chunk + 1 + Math.floor(r * (chunk - 1)));
    return { updateId: sha256.slice(0, 32), size, sha256, chunkSize: chunk, chunks, listSha256: list };
  });
const bodyArb: fc.Arbitrary<ReleaseBody> = fc.record({
  model: ident, group: ident, seq: fc.maxSafeNat(), issued: fc.integer({ min: 0, max: 2 ** 40 }), ttl: fc.integer({ min: 1, max: 2 ** 40 }),
  digests: fc.uniqueArray(hexString(64), { minLength: 1, maxLength: 5 }), full: fc.boolean(), rollback: fc.boolean(), previous: fc.option(hexString(64), { nil: null }),
  fields: fc.array(stepFields, { minLength: 6, maxLength: 6 }), order: fc.array(fc.nat(), { minLength: 6, maxLength: 6 }),
}).map((x): ReleaseBody => {
  const target = x.digests[x.digests.length - 1];
  const steps: ReleaseStep[] = x.digests.slice(0, -1).map((from, k) => ({ ...x.fields[k], from, to: x.digests[k + 1] }));
  if (x.full) steps.push({ ...x.fields[5], from: null, to: target });
  const shuffled = steps.map((s, k) => ({ s, o: x.order[k] })).sort((a, b) => a.o - b.o).map((p) => p.s);
  return { model: x.model, group: x.group, seq: x.seq, issued: x.issued, expires: x.issued + x.ttl, target, steps: shuffled, rollback: x.rollback, previous: x.previous };
});

const keys = [1, 2, 3].map((n) => signingKeyFromSeed(new Uint8Array(32).fill(n)));
const trustOf = (threshold: number, ...ks: typeof keys): TrustFile => ({ threshold, keys: ks.map((k) => ({ id: k.id, publicKey: k.publicKey })) });
/** Envelopes with made-up signatures (signing 10,000 bodies would take a minute). */
const envelopeArb = fc.record({ body: bodyArb, sigs: fc.array(fc.record({ k: fc.oneof(fc.constantFrom(...keys.map((k) => k.id)), hexString(64)), s: fc.uint8Array({ minLength: 64, maxLength: 64 }) }), { minLength: 1, maxLength: 3 }) });
const encodeEnvelope = (e: { body: ReleaseBody; sigs: Array<{ k: string; s: Uint8Array }> }): Uint8Array => cborEncode({ body: encodeReleaseBody(e.body), sigs: e.sigs });
/** A few really signed releases (by keys 0, 0+1), signed once. */
const signedPool = fc.sample(bodyArb, { numRuns: 12, seed: SEED }).map((b, i) => ({ body: b, bytes: signRelease(b, i % 2 ? [keys[0], keys[1]] : [keys[0]]) }));

describe('fuzz: releases', () => {
  it('decodeReleaseBody', () => fuzz(corpus(bodyArb, encodeReleaseBody), decodeReleaseBody), TEST_TIMEOUT);

  it('decodeSignedRelease (and the body inside)', () => {
    fuzz(corpus(envelopeArb, encodeEnvelope), (b) => {
      const s = decodeSignedRelease(b);
      return { body: decodeReleaseBody(s.body), sigs: s.sigs.map((x) => ({ k: x.keyId, s: x.sig })) };
    });
  }, TEST_TIMEOUT);

  it('verifyRelease against trust files (most inputs stop before Ed25519, which costs ~10 ms)', () => {
    const trusts = [trustOf(1, keys[0]), trustOf(2, keys[0], keys[1]), trustOf(1, keys[2]), trustOf(1, keys[1], keys[2])];
    // Really signed releases are rare and mostly paired with a trust file that stops before verifying.
    const signed = fc.constantFrom(...signedPool).chain((p) => fc.oneof(
      { weight: 1, arbitrary: fc.constant({ valid: true as const, value: p.body, bytes: p.bytes }) },
      { weight: 3, arbitrary: mutation.map((m) => ({ valid: false as const, bytes: m(p.bytes) })) },
    ));
    const input = fc.oneof({ weight: 1, arbitrary: signed }, { weight: 30, arbitrary: corpus(envelopeArb, encodeEnvelope) });
    const arb = fc.tuple(input, fc.oneof({ weight: 1, arbitrary: fc.constantFrom(0, 1) }, { weight: 12, arbitrary: fc.constantFrom(2, 3) }));
    fc.assert(fc.property(arb, ([x, t]) => {
      const trust = trusts[t];
      const out = decodeOrProtocolError(() => verifyRelease(x.bytes, trust));
      // A genuinely signed release verifies where its signers meet the threshold.
      if (x.valid && signedPool.some((p) => p.bytes === x.bytes)) {
        const signers = decodeSignedRelease(x.bytes).sigs.length;
        const ok = t === 0 || (t !== 2 && signers === 2);
        expect(out === undefined ? undefined : norm(out)).toEqual(ok ? norm(x.value) : undefined);
      }
    }), params);
  }, TEST_TIMEOUT);
});

// --- payloads -----------------------------------------------------------------

const f32Bytes = (n: number) => fc.array(fc.float({ noNaN: true, noDefaultInfinity: true }), { minLength: n, maxLength: n }).map((a) => new Uint8Array(Float32Array.from(a).buffer));
const f16Bytes = (n: number) => fc.array(fc.integer({ min: 0, max: 0xffff }).filter((h) => (h & 0x7c00) !== 0x7c00), { minLength: n, maxLength: n })
  .map((a) => { const b = new Uint8Array(2 * n); const dv = new DataView(b.buffer); a.forEach((h, i) => dv.setUint16(2 * i, h, true)); return b; });
const tensorName = fc.string({ unit: 'binary', minLength: 1, maxLength: 8 }).filter(isWellFormedName);
const deltaArb: fc.Arbitrary<TensorDelta> = fc.oneof(
  fc.record({ name: tensorName, m: fc.integer({ min: 1, max: 4 }), rest: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 2 }), r: fc.nat(), dtype: fc.constantFrom('f32' as const, 'f16' as const, 'i8' as const) })
    .chain(({ name, m, rest, r, dtype }) => {
      const n = rest.reduce((a, b) => a * b, 1);
      const rank = 1 + (r % Math.min(m, n));
      const bytes = (k: number) => (dtype === 'f32' ? f32Bytes(k) : dtype === 'f16' ? f16Bytes(k) : fc.uint8Array({ minLength: k, maxLength: k }));
      return fc.record({ u: bytes(m * rank), v: bytes(rank * n), su: f32Bytes(m), sv: f32Bytes(rank) }).map(({ u, v, su, sv }): TensorDelta => ({
        name, shape: [m, ...rest], rank, dtype, u, v, ...(dtype === 'i8' ? { scales: { u: su, v: sv } } : {}),
      }));
    }),
  fc.record({ name: tensorName, shape: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }) })
    .chain(({ name, shape }) => f32Bytes(shape.reduce((a, b) => a * b, 1)).map((dense): TensorDelta => ({ name, shape, dense }))),
);
const payloadArb: fc.Arbitrary<Payload> = fc.record({ base: hexString(64), target: hexString(64), tensors: fc.uniqueArray(deltaArb, { maxLength: 3, selector: (d) => d.name }) })
  .map((p): Payload => ({ v: 1, ...p }));

describe('fuzz: payloads', () => {
  it('decodePayload', () => fuzz(corpus(payloadArb, encodePayload), (b) => decodePayload(b, { maxTensors: 8, maxBytes: 4096 })), TEST_TIMEOUT);
});

// --- safetensors ------------------------------------------------------------------

const stName = fc.string({ unit: 'binary', minLength: 0, maxLength: 8 }).filter((s) => isWellFormedName(s) && s !== '__metadata__');
const tensorArb: fc.Arbitrary<TensorInput> = fc.record({ name: stName, dtype: fc.constantFrom(...DTYPES), shape: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }) })
  .chain((t) => {
    const size = t.shape.reduce((a, b) => a * b, 1) * dtypeSize(t.dtype);
    return fc.uint8Array({ minLength: size, maxLength: size }).map((data) => ({ ...t, data }));
  });
const metaArb = fc.dictionary(fc.string({ unit: 'binary', maxLength: 6 }).filter(isWellFormedName), fc.string({ unit: 'binary', maxLength: 6 }).filter(isWellFormedName), { maxKeys: 3, noNullPrototype: true });
const modelArb = fc.record({ tensors: fc.uniqueArray(tensorArb, { maxLength: 4, selector: (t) => t.name }), metadata: metaArb });
const encodeModel = (m: { tensors: TensorInput[]; metadata: Record<string, string> }) => writeSafetensors(m.tensors, m.metadata);

/** Header-aware: parse the JSON header, replace one value with random JSON, re-serialize with the new length. */
const headerMutation: fc.Arbitrary<Mutation> = fc.tuple(fc.nat(), fc.nat(), fc.jsonValue({ maxDepth: 2 }), fc.option(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), { nil: undefined }))
  .map(([which, slot, value, length]): Mutation => (b) => {
    const n = Number(Buffer.from(b).readBigUInt64LE(0));
    const json = JSON.parse(Buffer.from(b.subarray(8, 8 + n)).toString('utf8')) as unknown;
    const all = containers(json);
    const c = all[which % all.length];
    if (Array.isArray(c)) c[slot % (c.length + 1)] = value;
    else { const ks = Object.keys(c); c[ks.length ? ks[slot % ks.length] : 'x'] = value; }
    const text = Buffer.from(JSON.stringify(json), 'utf8');
    const head = Buffer.alloc(8);
    head.writeBigUInt64LE(length ?? BigInt(text.length));
    return concat(head, text, b.subarray(8 + n));
  });

describe('fuzz: model files', () => {
  it('parseSafetensorsHeader and readSafetensors', () => {
    const arb = fc.tuple(corpus(modelArb, encodeModel, fc.oneof(byteMutation, headerMutation)), fc.option(fc.integer({ min: -2, max: 4096 }), { nil: undefined }));
    fc.assert(fc.property(arb, ([x, size]) => {
      decodeOrProtocolError(() => parseSafetensorsHeader(x.bytes, size));
      const file = decodeOrProtocolError(() => readSafetensors(x.bytes));
      decodeOrProtocolError(() => safetensorsDigest(x.bytes));
      if (x.valid) {
        const byName = new Map(x.value.tensors.map((t) => [t.name, t]));
        expect(file?.tensors.map((t) => norm({ name: t.name, dtype: t.dtype, shape: t.shape, data: t.data }))).toEqual(
          [...byName.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))).map((k) => norm(byName.get(k))));
        expect(norm(file!.header.metadata)).toEqual(norm(x.value.metadata));
      }
    }), params);
  }, TEST_TIMEOUT);
});

// --- trust files and statuses ---------------------------------------------------------

const utf8 = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'));
const text = (b: Uint8Array) => Buffer.from(b).toString('utf8');
const jsonMutation: fc.Arbitrary<Mutation> = fc.tuple(fc.nat(), fc.nat(), fc.integer({ min: 0, max: 1 }), fc.jsonValue({ maxDepth: 2 })).map(([which, slot, del, value]): Mutation => (b) => {
  let root: unknown;
  try {
    root = JSON.parse(text(b));
  } catch {
    return b;
  }
  const all = containers(root);
  if (all.length === 0) return utf8(JSON.stringify(value));
  const c = all[which % all.length];
  if (Array.isArray(c)) { if (del && c.length) c.splice(slot % c.length, 1); else c[slot % (c.length + 1)] = value; }
  else { const ks = Object.keys(c); const k = ks.length ? ks[slot % ks.length] : 'keys'; if (del) delete c[k]; else c[k] = value; }
  return utf8(JSON.stringify(root));
});
const textMutation = fc.oneof({ weight: 2, arbitrary: jsonMutation }, { weight: 1, arbitrary: byteMutation });

const trustArb: fc.Arbitrary<TrustFile> = fc.subarray(keys, { minLength: 1 }).chain((ks) => fc.integer({ min: 1, max: ks.length }).map((t) => trustOf(t, ...ks)));
const statusArb: fc.Arbitrary<DeviceStatus> = fc.record({
  device: ident, group: ident, model: ident, state: fc.constantFrom(...DEVICE_STATES), running: hexString(64), target: fc.option(hexString(64), { nil: null }),
  seq: fc.option(fc.maxSafeNat(), { nil: null }), updateId: fc.option(hexString(32), { nil: null }), rollback: fc.boolean(), progress: fc.double({ min: 0, max: 1, noNaN: true }),
  bytes: fc.maxSafeNat(), totalBytes: fc.maxSafeNat(), badChunks: fc.nat(), rateBps: fc.nat(),
  wire: fc.option(fc.record({ bytesIn: fc.nat(), bytesOut: fc.nat(), connects: fc.nat() }), { nil: null }),
  reason: fc.option(fc.string(), { nil: null }), message: fc.option(fc.string({ unit: 'binary' }).filter(isWellFormedName), { nil: null }), agent: fc.string(), time: fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
}).map((s) => ({ ...s, progress: Object.is(s.progress, -0) ? 0 : s.progress }));

describe('fuzz: JSON documents', () => {
  it('parseTrustFile', () => {
    const arb = fc.oneof({ weight: 9, arbitrary: corpus(trustArb, (t) => utf8(formatTrustFile(t)), textMutation) },
      { weight: 1, arbitrary: fc.json().map((j): Case<TrustFile> => ({ valid: false, bytes: utf8(j) })) });
    fuzz(arb, (b) => parseTrustFile(text(b)));
  }, TEST_TIMEOUT);

  it('parseStatus never throws: a status or null', () => {
    const arb = fc.oneof({ weight: 9, arbitrary: corpus(statusArb, encodeStatus, textMutation) },
      { weight: 1, arbitrary: fc.json().map((j): Case<DeviceStatus> => ({ valid: false, bytes: utf8(j) })) });
    fc.assert(fc.property(arb, (x) => {
      const s = parseStatus(x.bytes); // no try: it must not throw at all
      if (x.valid) expect(s).toEqual(x.value);
      else if (s !== null) expect(DEVICE_STATES).toContain(s.state);
    }), params);
  }, TEST_TIMEOUT);
});
