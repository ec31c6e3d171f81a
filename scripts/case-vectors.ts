/**
 * The conformance cases of protocol/vectors/cases.json (docs/protocol.md §7.5): pairs of
 * (model, payload) that must be ACCEPTED with a given result, and pairs that must be
 * REFUSED with a given reason code. Each refused case has exactly one fault. Expectations
 * are written here by hand; `check` confirms them with our code before anything is written.
 * Deterministic: no clock, no randomness.
 */
import { cborEncode } from '../protocol/cbor.ts';
import type { CborForm } from '../protocol/cbor-strict.ts';
import { safetensorsDigest } from '../protocol/digest.ts';
import { encodeValues } from '../protocol/dtypes.ts';
import { DEFAULT_MAX_TENSORS, decodePayload } from '../protocol/lowrank.ts';
import { applyToModel } from '../protocol/delta-apply.ts';
import { readSafetensors, writeSafetensors } from '../protocol/safetensors.ts';
import { isProtocolError } from '../protocol/errors.ts';
import * as c from './cbor-forge.ts';
import { modelFaults } from './model-faults.ts';
import { compactCases } from './compact-vectors.ts';

export type Code = 'malformed-payload' | 'malformed-model' | 'payload-too-large' | 'non-finite' | 'shape-mismatch' | 'unsupported-dtype' | 'wrong-base' | 'digest-mismatch';

export interface Refusal {
  name: string;
  model: string;
  payload: string;
  expect: Code;
  cbor?: CborForm;
  why: string;
}
export interface Acceptance {
  name: string;
  model: string;
  payload: string;
  target: string;
  targetDigest: string;
  why: string;
}

const f32 = (values: number[]) => encodeValues(values, 'F32');
const u16le = (bits: number[]) => new Uint8Array(new Uint16Array(bits).buffer);
const u32le = (bits: number[]) => new Uint8Array(new Uint32Array(bits).buffer);

/** The procedure of §7.5 in memory: the reason code, or the result. */
export function conform(model: Uint8Array, payload: Uint8Array): { code: Code } | { bytes: Uint8Array; digest: string } {
  try {
    const p = decodePayload(payload);
    const running = safetensorsDigest(model);
    if (running !== p.base) return { code: 'wrong-base' };
    const out = applyToModel(model, p);
    if (out.digest !== p.target) return { code: 'digest-mismatch' };
    return out;
  } catch (e) {
    if (isProtocolError(e)) return { code: e.code as Code };
    throw e;
  }
}

/** How a case is recorded: its files, and the acceptance and refusal lists. */
interface Recorder {
  baseBytes: Uint8Array;
  baseDigest: string;
  models: Map<string, Uint8Array>;
  file: (name: string, bytes: Uint8Array) => string;
  no: (name: string, payload: Uint8Array, expect: Code, why: string, o?: { model?: string; cbor?: CborForm }) => void;
  yes: (name: string, model: string, payload: Uint8Array, why: string) => void;
  refuse: Refusal[];
}

function recorder(baseBytes: Uint8Array): Recorder & { files: Record<string, Uint8Array>; accept: Acceptance[] } {
  const files: Record<string, Uint8Array> = {};
  const accept: Acceptance[] = [];
  const refuse: Refusal[] = [];
  const baseDigest = safetensorsDigest(baseBytes);
  const models = new Map<string, Uint8Array>([['base.safetensors', baseBytes]]);
  const file = (name: string, bytes: Uint8Array): string => {
    const p = `cases/${name}`;
    files[p] = bytes;
    models.set(p, bytes);
    return p;
  };
  const no = (name: string, payload: Uint8Array, expect: Code, why: string, o: { model?: string; cbor?: CborForm } = {}) => {
    refuse.push({ name, model: o.model ?? 'base.safetensors', payload: file(`${name}.cbor`, payload), expect, ...(o.cbor ? { cbor: o.cbor } : {}), why });
  };
  const yes = (name: string, model: string, payload: Uint8Array, why: string) => {
    const out = conform(models.get(model)!, payload);
    if ('code' in out) throw new Error(`accept case ${name} is refused: ${out.code}`);
    const target = file(`${name}.target.safetensors`, out.bytes);
    accept.push({ name, model, payload: file(`${name}.cbor`, payload), target, targetDigest: out.digest, why });
  };

  return { baseBytes, baseDigest, models, file, no, yes, files, accept, refuse };
}

/** The small valid payload every CBOR case changes, in parts, and the helpers that build variants of it. */
function smallPayload({ baseBytes, baseDigest }: Recorder) {
  // A small valid payload: one dense delta on fc1.bias. Every CBOR case below is this
  // payload with one change of encoding, so a lenient decoder would accept it.
  const dense = f32([0.5, -0.25, 0.125, 1, -1, 2 ** -10, 3, -3]);
  const draft = { v: 1, base: baseDigest, target: '0'.repeat(64), tensors: [{ name: 'fc1.bias', shape: [8], dense }] };
  const smallTarget = applyToModel(baseBytes, decodePayload(cborEncode(draft))).digest;
  const parts = {
    v: c.uint(1),
    base: c.text(baseDigest),
    target: c.text(smallTarget),
    name: c.text('fc1.bias'),
    shape: c.array([c.uint(8)]),
    dense: c.bytes(dense),
  };
  type Parts = typeof parts;
  const delta = (p: Parts) =>
    c.map([
      ['name', p.name],
      ['shape', p.shape],
      ['dense', p.dense],
    ]);
  const small = (o: Partial<Parts> & { tensors?: Uint8Array; extra?: Array<[string | Uint8Array, Uint8Array]>; deltaExtra?: Array<[string, Uint8Array]> } = {}) => {
    const p = { ...parts, ...o };
    const d = o.deltaExtra ? c.map([['name', p.name], ['shape', p.shape], ['dense', p.dense], ...o.deltaExtra]) : delta(p);
    return c.map([['v', p.v], ['base', p.base], ['target', p.target], ['tensors', o.tensors ?? c.array([d])], ...(o.extra ?? [])]);
  };
  const weight = (o: Record<string, unknown> = {}) => ({ name: 'fc1.weight', shape: [8, 6], rank: 1, dtype: 'f32', u: new Uint8Array(8 * 4), v: new Uint8Array(6 * 4), ...o });
  const raw = (o: Record<string, unknown>, tensors: unknown[] = [{ name: 'fc1.bias', shape: [8], dense }]) => cborEncode({ v: 1, base: baseDigest, target: smallTarget, tensors, ...o });
  return { dense, smallTarget, parts, delta, small, weight, raw };
}
type Small = ReturnType<typeof smallPayload>;

/** The control and a reordered map: accepted. */
function smallCases({ yes }: Recorder, { parts, small }: Small): void {
  yes('small', 'base.safetensors', small(), 'the control: one dense delta on fc1.bias; every CBOR case below changes only its encoding');
  yes(
    'keys-reordered',
    'base.safetensors',
    c.map([
      [
        'tensors',
        c.array([
          c.map([
            ['dense', parts.dense],
            ['shape', parts.shape],
            ['name', parts.name],
          ]),
        ]),
      ],
      ['target', parts.target],
      ['base', parts.base],
      ['v', parts.v],
    ]),
    'map keys in another order than our encoder writes: accepted (§4.0 sets no key order)',
  );
}

/** CBOR forms outside the subset (§4.0): malformed-payload. */
function cborFormCases({ no, baseDigest }: Recorder, { dense, parts, delta, small }: Small): void {
  const half = dense.byteLength / 2;
  const form = (name: string, payload: Uint8Array, cbor: CborForm, why: string) => no(`cbor-${name}`, payload, 'malformed-payload', why, { cbor });
  form('indefinite-bytes', small({ dense: c.indefinite(2, [c.bytes(dense.subarray(0, half)), c.bytes(dense.subarray(half))]) }), 'indefinite-length', 'dense as an indefinite-length byte string of two chunks');
  form('indefinite-text', small({ name: c.indefinite(3, [c.text('fc1'), c.text('.bias')]) }), 'indefinite-length', 'a tensor name as an indefinite-length text string');
  form('indefinite-array', small({ shape: c.indefinite(4, [c.uint(8)]) }), 'indefinite-length', 'shape as an indefinite-length array');
  form(
    'indefinite-map',
    c.indefinite(5, [c.text('v'), parts.v, c.text('base'), parts.base, c.text('target'), parts.target, c.text('tensors'), c.array([delta(parts)])]),
    'indefinite-length',
    'the payload as an indefinite-length map',
  );
  form('long-integer', small({ v: c.uint(1, 1) }), 'non-shortest', 'v: 1 written 18 01 (a one-byte argument where the head holds it)');
  form('long-integer-8', small({ shape: c.array([c.uint(8, 8)]) }), 'non-shortest', 'a shape dim written in an 8-byte argument');
  form('long-length', small({ base: c.concat(c.head(3, 64, 2), new TextEncoder().encode(baseDigest)) }), 'non-shortest', 'the base text with a 2-byte length');
  form('long-count', c.concat(c.head(5, 4, 1), small().subarray(1)), 'non-shortest', 'the payload map count in a 1-byte argument');
  form('float-half', small({ v: c.f16(0x3c00) }), 'float', 'v: 1.0 as a half-precision float');
  form('float-single', small({ v: c.f32(1) }), 'float', 'v: 1.0 as a single-precision float');
  form('float-double', small({ v: c.f64(1) }), 'float', 'v: 1.0 as a double-precision float');
  form('float-dim', small({ shape: c.array([c.f16(0x4800)]) }), 'float', 'shape [8.0] (a float where an unsigned integer is specified)');
  form('duplicate-key', small({ extra: [['v', parts.v]] }), 'duplicate-key', 'v twice, same value');
  form(
    'duplicate-key-last-wins',
    c.map([
      ['v', parts.v],
      ['base', parts.base],
      ['target', c.text('0'.repeat(64))],
      ['tensors', c.array([delta(parts)])],
      ['target', parts.target],
    ]),
    'duplicate-key',
    'target twice: a wrong one, then the right one (a last-wins decoder applies it)',
  );
  form('duplicate-key-in-delta', small({ deltaExtra: [['name', parts.name]] }), 'duplicate-key', 'name twice in a tensor delta');
  form('self-describe-tag', c.tag(55799, small()), 'tag', 'the payload behind the self-describe tag 55799 (d9 d9 f7)');
  form('tag-typed-array', small({ dense: c.tag(64, parts.dense) }), 'tag', 'dense behind tag 64 (uint8 typed array)');
  form('undefined', small({ deltaExtra: [['scales', Uint8Array.of(0xf7)]] }), 'simple-value', 'undefined (f7) as a value');
  form('simple-value', small({ deltaExtra: [['scales', Uint8Array.of(0xf8, 0x20)]] }), 'simple-value', 'simple value 32 (f8 20) as a value');
  form('non-text-key', small({ extra: [[c.uint(0), c.uint(0)]] }), 'non-text-key', 'a map key that is an integer');
  form('bytes-key', small({ extra: [[c.bytes(Uint8Array.of(0x76)), parts.v]] }), 'non-text-key', 'a map key that is a byte string');
  form('invalid-utf8', small({ name: c.concat(c.head(3, 9), Uint8Array.of(0x66, 0x63, 0x31, 0xc0, 0xae, 0x62, 0x69, 0x61, 0x73)) }), 'invalid-utf8', 'the name fc1.bias with "." written as the overlong c0 ae');
  form('lone-surrogate', small({ name: c.concat(c.head(3, 3), Uint8Array.of(0xed, 0xa0, 0x80)) }), 'invalid-utf8', 'a name that is a UTF-8-encoded lone surrogate (ed a0 80)');
  form('integer-range', small({ shape: c.array([c.uint(2n ** 53n)]) }), 'integer-range', 'a shape dim of 2^53');
  form('reserved-info', small({ v: Uint8Array.of(0x1c) }), 'reserved-info', 'additional information 28 (reserved)');
  form('stray-break', small({ v: Uint8Array.of(0xff) }), 'reserved-info', 'a break (ff) outside an indefinite-length item');
  form('trailing-byte', c.concat(small(), Uint8Array.of(0)), 'trailing-bytes', 'one byte after the payload map');
  form('trailing-item', c.concat(small(), small()), 'trailing-bytes', 'the payload twice');
  form('truncated', small().subarray(0, small().byteLength - 1), 'truncated', 'the last byte cut off');
  form('count-past-end', small({ tensors: c.concat(c.head(4, 0xffffffff), delta(parts)) }), 'truncated', 'tensors claims 2^32 − 1 items');
  form('empty', new Uint8Array(0), 'empty', 'an empty file');
  form('too-deep', small({ shape: c.concat(...Array.from({ length: 13 }, () => c.head(4, 1)), c.array([c.uint(8)])) }), 'too-deep', 'arrays and maps nested 17 deep (the limit is 16; the payload map is level 1)');
}

/** Payload structure (§6): malformed-payload; limits: payload-too-large. */
function payloadShapeCases({ no, baseDigest }: Recorder, { dense, parts, smallTarget, weight, raw }: Small): void {
  const shape = (name: string, payload: Uint8Array, why: string) => no(name, payload, 'malformed-payload', why);
  shape('version-2', raw({ v: 2 }), 'v is 2');
  shape('base-uppercase', raw({ base: baseDigest.toUpperCase() }), 'base in uppercase hex (it is 64 lowercase hex digits as text)');
  shape('base-bytes', raw({ base: new Uint8Array(Buffer.from(baseDigest, 'hex')) }), 'base as 32 raw bytes instead of text');
  shape('target-short', raw({ target: smallTarget.slice(1) }), 'target of 63 hex digits');
  shape('extra-field', raw({ note: 'x' }), 'a field the payload does not have');
  shape('tensors-not-array', raw({ tensors: {} }), 'tensors is a map');
  shape(
    'duplicate-tensor',
    raw({}, [
      { name: 'fc1.bias', shape: [8], dense },
      { name: 'fc1.bias', shape: [8], dense },
    ]),
    'fc1.bias twice',
  );
  shape('empty-name', raw({}, [{ name: '', shape: [8], dense }]), 'an empty tensor name');
  shape('negative-dim', raw({}, [{ name: 'fc1.bias', shape: [-8], dense }]), 'a negative dim');
  shape('dense-short', raw({}, [{ name: 'fc1.bias', shape: [8], dense: dense.subarray(4) }]), 'dense with 7 values for 8 elements');
  shape('dense-and-rank', raw({}, [{ name: 'fc1.bias', shape: [8], dense, rank: 1 }]), 'a dense delta with a rank field');
  shape('factor-rank-0', raw({}, [weight({ rank: 0, u: new Uint8Array(0), v: new Uint8Array(0) })]), 'factor rank r = 0');
  shape('factor-rank-over', raw({}, [weight({ rank: 7, u: new Uint8Array(8 * 7 * 4), v: new Uint8Array(7 * 6 * 4) })]), 'factor rank r = 7 > min(m, n) = 6');
  shape('tensor-rank-1', raw({}, [{ name: 'fc1.bias', shape: [8], rank: 1, dtype: 'f32', u: new Uint8Array(32), v: new Uint8Array(4) }]), 'a low-rank delta for a tensor of rank 1 (its shape has one dim)');
  shape('factor-dtype', raw({}, [weight({ dtype: 'bf16', u: new Uint8Array(16), v: new Uint8Array(12) })]), 'factor dtype bf16');
  shape('u-short', raw({}, [weight({ u: new Uint8Array(7 * 4) })]), 'u with m·r − 1 values');
  shape('i8-no-scales', raw({}, [weight({ dtype: 'i8', u: new Uint8Array(8), v: new Uint8Array(6) })]), 'i8 factors without scales');
  shape('i8-scales-short', raw({}, [weight({ dtype: 'i8', u: new Uint8Array(8), v: new Uint8Array(6), scales: { u: new Uint8Array(7 * 4), v: new Uint8Array(4) } })]), 'scales.u with m − 1 values');
  shape('f32-with-scales', raw({}, [weight({ scales: { u: new Uint8Array(32), v: new Uint8Array(4) } })]), 'scales on f32 factors');
  shape('shape-overflow', raw({}, [{ name: 'fc1.bias', shape: [2 ** 26, 2 ** 26, 4], dense: new Uint8Array(0) }]), 'a shape of 2^54 elements (over 2^53 − 1)');
  no(
    'too-many-tensors',
    c.map([
      ['v', parts.v],
      ['base', parts.base],
      ['target', parts.target],
      ['tensors', c.concat(c.head(4, DEFAULT_MAX_TENSORS + 1), new Uint8Array(DEFAULT_MAX_TENSORS + 1).fill(0xf6))],
    ]),
    'payload-too-large',
    `tensors has ${DEFAULT_MAX_TENSORS + 1} items (the limit is ${DEFAULT_MAX_TENSORS}, counted before the items are read)`,
  );
}

/** Non-finite factors (refused on decode) and results (refused on apply). */
function nonFiniteCases({ no, file, baseBytes }: Recorder, { dense, weight, raw }: Small): void {
  const nan32 = u32le([0x7fc00000]);
  const withAt = (b: Uint8Array, at: number, v: Uint8Array) => {
    const x = b.slice();
    x.set(v, at);
    return x;
  };
  no('nan-factor', raw({}, [weight({ u: withAt(new Uint8Array(32), 4, nan32) })]), 'non-finite', 'NaN in an f32 factor');
  no('inf-f16-factor', raw({}, [{ name: 'attn.f16', shape: [5, 4], rank: 1, dtype: 'f16', u: new Uint8Array(10), v: withAt(new Uint8Array(8), 2, u16le([0x7c00])) }]), 'non-finite', '+infinity in an f16 factor');
  no(
    'nan-scale',
    raw({}, [{ name: 'head.bf16', shape: [3, 7], rank: 1, dtype: 'i8', u: new Uint8Array(3), v: new Uint8Array(7), scales: { u: withAt(new Uint8Array(12), 0, nan32), v: new Uint8Array(4) } }]),
    'non-finite',
    'NaN in an i8 scale',
  );
  no('inf-dense', raw({}, [{ name: 'fc1.bias', shape: [8], dense: withAt(dense, 8, u32le([0xff800000])) }]), 'non-finite', '−infinity in a dense delta');
  const big = (n: number) => f32(new Array(n).fill(2 ** 100));
  no('overflow-f32', raw({ target: '0'.repeat(64) }, [weight({ u: big(8), v: big(6) })]), 'non-finite', 'finite factors whose product 2^200 rounds to +infinity in F32');
  no('overflow-f16', raw({ target: '0'.repeat(64) }, [{ name: 'attn.f16', shape: [5, 4], dense: f32(new Array(20).fill(70000)) }]), 'non-finite', 'a dense delta of 70000 on an F16 tensor (over 65504: +infinity)');
  no('overflow-bf16', raw({ target: '0'.repeat(64) }, [{ name: 'head.bf16', shape: [3, 7], dense: f32(new Array(21).fill(3.4e38)) }]), 'non-finite', 'a dense delta of 3.4e38 on a BF16 tensor (rounds to +infinity)');
  const nanBase = (() => {
    const t = readSafetensors(baseBytes);
    return writeSafetensors(
      t.tensors.map((x) => ({ ...x, data: x.name === 'fc1.bias' ? withAt(x.data, 12, nan32) : x.data })),
      t.header.metadata,
    );
  })();
  const nanModel = file('nan-in-touched.safetensors', nanBase);
  no('nan-in-touched', raw({ base: safetensorsDigest(nanBase), target: '0'.repeat(64) }), 'non-finite', 'the model has NaN in fc1.bias[3] and the payload updates fc1.bias: NaN + d is NaN', { model: nanModel });
}

/** Apply (§7.3, §7.5): the payload does not fit the model; and model files (§7.1) it does not fit. */
function applyCases({ no, file, refuse, baseDigest, baseBytes }: Recorder, { dense, smallTarget, weight, raw }: Small): void {
  // Apply (§7.3, §7.5): the payload does not fit the model.
  no('wrong-base', raw({ base: smallTarget }), 'wrong-base', "the payload applies to another model (base is not this model's digest)");
  no('wrong-target', raw({ target: baseDigest }), 'digest-mismatch', "the result's digest is not the payload's target");
  no('tensor-missing', raw({ target: '0'.repeat(64) }, [{ name: 'fc2.bias', shape: [8], dense }]), 'shape-mismatch', 'a delta for a tensor the model does not have');
  no('shape-transposed', raw({ target: '0'.repeat(64) }, [weight({ shape: [6, 8], u: new Uint8Array(24), v: new Uint8Array(32) })]), 'shape-mismatch', 'fc1.weight is [8, 6]; the delta says [6, 8]');
  no('shape-same-count', raw({ target: '0'.repeat(64) }, [{ name: 'fc1.bias', shape: [8, 1], dense }]), 'shape-mismatch', 'fc1.bias is [8]; the delta says [8, 1] (same element count)');
  no(
    'conv-as-matrix',
    raw({ target: '0'.repeat(64) }, [{ name: 'conv1.weight', shape: [4, 27], rank: 1, dtype: 'f32', u: new Uint8Array(16), v: new Uint8Array(108) }]),
    'shape-mismatch',
    'conv1.weight is [4, 3, 3, 3]; shape must be the full tensor shape, not the matrix [4, 27] it is factored as',
  );
  no('dense-on-i8', raw({ target: '0'.repeat(64) }, [{ name: 'embed.q', shape: [4, 4], dense: new Uint8Array(64) }]), 'unsupported-dtype', 'a dense delta on the I8 tensor embed.q');
  no(
    'lowrank-on-i8',
    raw({ target: '0'.repeat(64) }, [{ name: 'embed.q', shape: [4, 4], rank: 1, dtype: 'f32', u: new Uint8Array(16), v: new Uint8Array(16) }]),
    'unsupported-dtype',
    'a low-rank delta on the I8 tensor embed.q',
  );

  // Model files (§7.1): malformed-model, each with the small payload.
  for (const f of modelFaults(baseBytes)) {
    refuse.push({ name: `model-${f.name}`, model: file(`model-${f.name}.safetensors`, f.bytes), payload: 'cases/small.cbor', expect: 'malformed-model', why: f.why });
  }
}

/** Edge behaviour (§7.3): accepted, with exact results. */
function edgeCases({ yes, file, models }: Recorder): void {
  const negZero32 = u32le(new Array(4).fill(0x80000000));
  const edgeTensors = [
    { name: 'negzero.lowrank', dtype: 'F32' as const, shape: [2, 2], data: negZero32 },
    { name: 'negzero.bf16', dtype: 'BF16' as const, shape: [2, 2], data: u16le([0x8000, 0x8000, 0x8000, 0x8000]) },
    { name: 'negzero.dense', dtype: 'F32' as const, shape: [4], data: negZero32 },
    { name: 'nan.untouched', dtype: 'F32' as const, shape: [4], data: u32le([0x7fc00000, 0xffc00001, 0x7f800000, 0xff800000]) },
    { name: 'nan.untouched.f16', dtype: 'F16' as const, shape: [2], data: u16le([0x7e01, 0xfc00]) },
    { name: 'name "quoted"\tand é', dtype: 'I8' as const, shape: [2], data: Uint8Array.of(1, 255) },
  ];
  const edgeMeta = { 'é key': 'value with "quotes", a \\ backslash, a tab\t, a newline\n, \u0001, \u007f, \u2028 and 😀', format: 'pt' };
  const edgeBase = file('edge.base.safetensors', writeSafetensors(edgeTensors, edgeMeta));
  const zeros = (n: number) => new Uint8Array(n * 4);
  const negZeroFactor = u32le([0x80000000, 0x80000000]);
  const edgeDraft = {
    v: 1,
    base: safetensorsDigest(models.get(edgeBase)!),
    target: '0'.repeat(64),
    tensors: [
      { name: 'negzero.lowrank', shape: [2, 2], rank: 1, dtype: 'f32', u: negZeroFactor, v: zeros(2) },
      { name: 'negzero.bf16', shape: [2, 2], rank: 1, dtype: 'f32', u: zeros(2), v: zeros(2) },
      { name: 'negzero.dense', shape: [4], dense: u32le([0x80000000, 0x00000000, 0x80000000, 0x3f800000]) },
    ],
  };
  const edgeTarget = applyToModel(models.get(edgeBase)!, decodePayload(cborEncode(edgeDraft))).digest;
  yes(
    'edge',
    edgeBase,
    cborEncode({ ...edgeDraft, target: edgeTarget }),
    'every -0 of negzero.lowrank and negzero.bf16 becomes +0 (low-rank sums start at +0, and -0 + +0 = +0); negzero.dense = -0 + [-0, +0, -0, 1] = [-0, +0, -0, 1]; ' +
      'NaN (with payload bits) and infinities in the untouched nan.untouched* are copied bit for bit, not refused; metadata and a tensor name that need JSON escaping are written as §7.1 says',
  );
}

export function caseVectors(baseBytes: Uint8Array): { files: Record<string, Uint8Array>; accept: Acceptance[]; refuse: Refusal[] } {
  const r = recorder(baseBytes);
  const s = smallPayload(r);
  smallCases(r, s);
  cborFormCases(r, s);
  payloadShapeCases(r, s);
  nonFiniteCases(r, s);
  applyCases(r, s);
  edgeCases(r);
  // Compact kinds (sign + scales, mixed-precision factors): docs/protocol.md §6.
  compactCases({ baseBytes, baseDigest: r.baseDigest, yes: r.yes, no: r.no });
  return { files: r.files, accept: r.accept, refuse: r.refuse };
}
