/**
 * Shared parts of the structure-aware fuzz tests (fuzz.test.ts, fuzz-signed.test.ts):
 * random CBOR values, byte / field / JSON mutations of valid encodings, corpora
 * and the property that a decoder returns a value or throws ProtocolError.
 */
import fc from 'fast-check';
import { expect } from 'vitest';
import { cborDecode, cborEncode } from '../../protocol/cbor.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import type { Payload, TensorDelta } from '../../protocol/lowrank.ts';
import { isWellFormedName } from '../../protocol/safetensors.ts';

export const RUNS = 10_000;
export const SEED = 0x5eed_f1ee;
export const params = { numRuns: RUNS, seed: SEED, endOnFailure: true };
export const TEST_TIMEOUT = 60_000;

/** Runs the decoder: its value, or undefined when it threw a ProtocolError. Anything else, or a slow call, fails. */
export function decodeOrProtocolError<T>(fn: () => T): T | undefined {
  const t0 = performance.now();
  let value: T | undefined;
  try {
    value = fn();
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw new Error(`a non-ProtocolError escaped: ${(e as Error)?.stack ?? String(e)}`, { cause: e });
  }
  const ms = performance.now() - t0;
  if (ms > 2000) throw new Error(`decoder took ${ms.toFixed(0)} ms`);
  return value;
}

/** Comparable form: byte arrays as hex, objects with sorted keys. */
export function norm(v: unknown): unknown {
  if (v instanceof Uint8Array) return `bytes:${Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex')}`;
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === 'object')
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, norm((v as Record<string, unknown>)[k])]),
    );
  return v;
}

export const concat = (...parts: Uint8Array[]): Uint8Array => new Uint8Array(Buffer.concat(parts));
export const hexString = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });

// --- random CBOR values and mutations ---------------------------------------

export const leaf: fc.Arbitrary<unknown> = fc.oneof(
  fc.integer(),
  fc.integer({ min: 0, max: 2 ** 32 }),
  fc.maxSafeNat(),
  fc.double(),
  fc.bigInt({ min: -(2n ** 64n) + 1n, max: 2n ** 64n - 1n }),
  fc.string({ maxLength: 70 }),
  hexString(32),
  hexString(64),
  fc.uint8Array({ maxLength: 70 }),
  fc.boolean(),
  fc.constant(null),
  fc.constant(-0),
);
export const cborValue: fc.Arbitrary<unknown> = fc.letrec<{ v: unknown }>((tie) => ({
  v: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(fc.string({ maxLength: 6 }), tie('v'), { maxKeys: 4 })),
})).v;

export type Mutation = (b: Uint8Array) => Uint8Array;
export const byteMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }).map((flips): Mutation => (b) => {
    const c = b.slice();
    for (const [p, x] of flips) if (c.length) c[p % c.length] ^= x;
    return c;
  }),
  fc.nat().map(
    (p): Mutation =>
      (b) =>
        b.subarray(0, b.length ? p % b.length : 0),
  ),
  fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 16 })).map(([p, ins]): Mutation => (b) => {
    const at = b.length ? p % (b.length + 1) : 0;
    return concat(b.subarray(0, at), ins, b.subarray(at));
  }),
  fc.tuple(fc.nat(), fc.integer({ min: 1, max: 16 })).map(([p, n]): Mutation => (b) => {
    const at = b.length ? p % b.length : 0;
    return concat(b.subarray(0, at), b.subarray(at + n));
  }),
  fc.uint8Array({ minLength: 1, maxLength: 8 }).map(
    (t): Mutation =>
      (b) =>
        concat(b, t),
  ),
  fc.constant<Mutation>((b) => concat(b, b)),
);

/** Every map and array in a decoded value, in a fixed walk order. */
export function containers(v: unknown, out: Array<Record<string, unknown> | unknown[]> = []): Array<Record<string, unknown> | unknown[]> {
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
export function mapHeader(n: number): Uint8Array {
  return n < 24 ? new Uint8Array([0xa0 | n]) : new Uint8Array([0xb8, n]);
}

/** Re-encodes a map by hand with its entries plus one extra (a duplicate key or a key of another type). */
export function rawMapWith(m: Record<string, unknown>, key: unknown, value: unknown, at: number): Uint8Array {
  const entries: Array<[unknown, unknown]> = Object.entries(m);
  entries.splice(at % (entries.length + 1), 0, [key, value]);
  return concat(mapHeader(entries.length), ...entries.flatMap(([k, v]) => [cborEncode(k), cborEncode(v)]));
}

/** Structure-aware: decode, change one field somewhere (replace, delete, duplicate key, non-text key), re-encode. */
export const fieldMutation: fc.Arbitrary<Mutation> = fc
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

export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  byteMutation,
  fieldMutation,
  fc.tuple(fieldMutation, byteMutation).map(
    ([a, b]) =>
      (x: Uint8Array) =>
        b(a(x)),
  ),
);

export type Case<T> = { valid: true; value: T; bytes: Uint8Array } | { valid: false; bytes: Uint8Array };

/** Valid encodings, mutated valid encodings, and plain random bytes. */
export function corpus<T>(valid: fc.Arbitrary<T>, encode: (v: T) => Uint8Array, mutate = mutation): fc.Arbitrary<Case<T>> {
  const v = valid.map((value) => ({ value, bytes: encode(value) }));
  return fc.oneof(
    { weight: 2, arbitrary: v.map((x): Case<T> => ({ valid: true, ...x })) },
    { weight: 6, arbitrary: fc.tuple(v, mutate).map(([x, m]): Case<T> => ({ valid: false, bytes: m(x.bytes) })) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((bytes): Case<T> => ({ valid: false, bytes })) },
    { weight: 1, arbitrary: cborValue.map((x): Case<T> => ({ valid: false, bytes: cborEncode(x) })) },
  );
}

export function fuzz<T>(c: fc.Arbitrary<Case<T>>, decode: (b: Uint8Array) => unknown, expected: (v: T) => unknown = (v) => v): void {
  fc.assert(
    fc.property(c, (x) => {
      const out = decodeOrProtocolError(() => decode(x.bytes));
      if (x.valid) expect(norm(out)).toEqual(norm(expected(x.value)));
    }),
    params,
  );
}

export const utf8 = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'));
export const text = (b: Uint8Array) => Buffer.from(b).toString('utf8');
export const jsonMutation: fc.Arbitrary<Mutation> = fc.tuple(fc.nat(), fc.nat(), fc.integer({ min: 0, max: 1 }), fc.jsonValue({ maxDepth: 2 })).map(([which, slot, del, value]): Mutation => (b) => {
  let root: unknown;
  try {
    root = JSON.parse(text(b));
  } catch {
    return b;
  }
  const all = containers(root);
  if (all.length === 0) return utf8(JSON.stringify(value));
  const c = all[which % all.length];
  if (Array.isArray(c)) {
    if (del && c.length) c.splice(slot % c.length, 1);
    else c[slot % (c.length + 1)] = value;
  } else {
    const ks = Object.keys(c);
    const k = ks.length ? ks[slot % ks.length] : 'keys';
    if (del) delete c[k];
    else c[k] = value;
  }
  return utf8(JSON.stringify(root));
});
export const textMutation = fc.oneof({ weight: 2, arbitrary: jsonMutation }, { weight: 1, arbitrary: byteMutation });

// --- payloads (fuzz.test.ts, payload-stream.test.ts) ---------------------------

export const f32Bytes = (n: number) => fc.array(fc.float({ noNaN: true, noDefaultInfinity: true }), { minLength: n, maxLength: n }).map((a) => new Uint8Array(Float32Array.from(a).buffer));
export const f16Bytes = (n: number) =>
  fc
    .array(
      fc.integer({ min: 0, max: 0xffff }).filter((h) => (h & 0x7c00) !== 0x7c00),
      { minLength: n, maxLength: n },
    )
    .map((a) => {
      const b = new Uint8Array(2 * n);
      const dv = new DataView(b.buffer);
      a.forEach((h, i) => dv.setUint16(2 * i, h, true));
      return b;
    });
export const tensorName = fc.string({ unit: 'binary', minLength: 1, maxLength: 8 }).filter(isWellFormedName);
export const deltaArb: fc.Arbitrary<TensorDelta> = fc.oneof(
  fc
    .record({
      name: tensorName,
      m: fc.integer({ min: 1, max: 4 }),
      rest: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 2 }),
      r: fc.nat(),
      dtype: fc.constantFrom('f32' as const, 'f16' as const, 'i8' as const),
    })
    .chain(({ name, m, rest, r, dtype }) => {
      const n = rest.reduce((a, b) => a * b, 1);
      const rank = 1 + (r % Math.min(m, n));
      const bytes = (k: number) => (dtype === 'f32' ? f32Bytes(k) : dtype === 'f16' ? f16Bytes(k) : fc.uint8Array({ minLength: k, maxLength: k }));
      return fc.record({ u: bytes(m * rank), v: bytes(rank * n), su: f32Bytes(m), sv: f32Bytes(rank) }).map(({ u, v, su, sv }): TensorDelta => ({
        name,
        shape: [m, ...rest],
        rank,
        dtype,
        u,
        v,
        ...(dtype === 'i8' ? { scales: { u: su, v: sv } } : {}),
      }));
    }),
  fc
    .record({ name: tensorName, shape: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }) })
    .chain(({ name, shape }) => f32Bytes(shape.reduce((a, b) => a * b, 1)).map((dense): TensorDelta => ({ name, shape, dense }))),
);
export const payloadArb: fc.Arbitrary<Payload> = fc
  .record({ base: hexString(64), target: hexString(64), tensors: fc.uniqueArray(deltaArb, { maxLength: 3, selector: (d) => d.name }) })
  .map((p): Payload => ({ v: 1, ...p }));
