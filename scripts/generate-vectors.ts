/**
 * Deterministic test vectors for the model format, digest and low-rank apply.
 * Run: node --import tsx scripts/generate-vectors.ts (or npm run vectors)
 * Writes base.safetensors, payload.cbor, target.safetensors and vectors.json
 * into protocol/vectors/, and the conformance cases (accepted and refused, see
 * scripts/case-vectors.ts) into protocol/vectors/cases/ with cases.json.
 * Same output on every run (seeded PRNG, no clock).
 */
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { type Dtype, bf16BitsToNumber, decodeValues, dtypeSize, encodeValues, f16BitsToNumber, numberToBf16Bits, numberToF16Bits } from '../protocol/dtypes.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../protocol/safetensors.ts';
import { modelDigest } from '../protocol/digest.ts';
import { encodePayload, type Payload, type TensorDelta } from '../protocol/lowrank.ts';
import { applyToModel } from '../protocol/delta-apply.ts';
import { deltaValues } from '../protocol/delta-info.ts';
import { mulberry32 } from '../util/random.ts';
import { CborError, checkStrictCbor } from '../protocol/cbor-strict.ts';
import { caseVectors, conform } from './case-vectors.ts';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'protocol', 'vectors');

const rand = mulberry32(20240611);
/** Uniform in [-scale, scale), rounded to f32 so it is exact in every encoding below. */
const uniform = (n: number, scale: number) => Array.from({ length: n }, () => Math.fround((rand() * 2 - 1) * scale));

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
function f64Hex(x: number): string {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setFloat64(0, x); // big-endian: reads as the usual bit pattern
  return hex(b);
}
const count = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

// ---------------------------------------------------------------------------
// Base model.

const fc = { name: 'fc1.weight', dtype: 'F32' as Dtype, shape: [8, 6], data: encodeValues(uniform(48, 1), 'F32') };
const conv = { name: 'conv1.weight', dtype: 'F32' as Dtype, shape: [4, 3, 3, 3], data: encodeValues(uniform(108, 0.5), 'F32') };
const biasValues = uniform(8, 0.1);
biasValues[0] = 1; // + 2^-24: halfway between 1 and 1+2^-23 → ties to even → 1
biasValues[1] = 1; // + 3·2^-24: halfway → ties to even → 1+2^-22
const bias = { name: 'fc1.bias', dtype: 'F32' as Dtype, shape: [8], data: encodeValues(biasValues, 'F32') };
const attnValues = uniform(20, 2);
attnValues[0] = 1; // + 2^-11 + 2^-29: one rounding → 1+2^-10; via f32 it would be 1
const attn = { name: 'attn.f16', dtype: 'F16' as Dtype, shape: [5, 4], data: encodeValues(attnValues, 'F16') };
const headValues = uniform(21, 4);
headValues[0] = 1; // + 2^-8 + 2^-24: one rounding → 1+2^-7; via f32 it would be 1
const head = { name: 'head.bf16', dtype: 'BF16' as Dtype, shape: [3, 7], data: encodeValues(headValues, 'BF16') };
const embed = { name: 'embed.q', dtype: 'I8' as Dtype, shape: [4, 4], data: Uint8Array.from({ length: 16 }, () => Math.floor(rand() * 256)) };

// order.check: element 0 gets (-2^30 + 2^30) + (2^-24 + 2^-40) in k order; summed in reverse it would lose the small term.
const orderCheck = { name: 'order.check', dtype: 'F32' as Dtype, shape: [3, 3], data: encodeValues(new Array(9).fill(1), 'F32') };

const baseTensors: TensorInput[] = [fc, conv, bias, attn, head, embed, orderCheck];
const baseBytes = writeSafetensors(baseTensors, { format: 'pt', producer: 'protocol/vectors/generate.ts' });
const baseDigest = modelDigest(baseTensors);

// ---------------------------------------------------------------------------
// Payload.

function f32(values: number[]): Uint8Array {
  return encodeValues(values, 'F32');
}

// attn.f16: f16 factors, rank 2. U[0,0]=1, U[0,1]=2^-14, V[0,0]=2^-11, V[1,0]=2^-15.
const attnU = uniform(5 * 2, 0.5);
const attnV = uniform(2 * 4, 0.05);
attnU[0] = 1;
attnU[1] = 2 ** -14;
attnV[0] = 2 ** -11;
attnV[4] = 2 ** -15;
const f16Bytes = (vals: number[]) =>
  encodeValues(
    vals.map((x) => f16BitsToNumber(numberToF16Bits(x))),
    'F16',
  );

// head.bf16: i8 factors with scales, rank 2 (m=3, n=7).
// U row 0 scale 2^-4, V row 0 scale 2^-12, V row 1 scale 2^-20; q chosen so that
// U[0,0]=1, V[0,0]=2^-8, U[0,1]=2^-4, V[1,0]=2^-20: element 0 gets 1 + 2^-8 + 2^-24.
const headQU = Int8Array.from({ length: 3 * 2 }, () => Math.floor(rand() * 255) - 127);
const headQV = Int8Array.from({ length: 2 * 7 }, () => Math.floor(rand() * 255) - 127);
headQU[0] = 16;
headQU[1] = 1;
headQV[0] = 16;
headQV[7] = 1;
const headSU = [2 ** -4, Math.fround(0.003), Math.fround(0.0071)];
const headSV = [2 ** -12, 2 ** -20];

const deltas: TensorDelta[] = [
  { name: 'fc1.weight', shape: [8, 6], rank: 2, dtype: 'f32', u: f32(uniform(16, 0.3)), v: f32(uniform(12, 0.3)) },
  { name: 'conv1.weight', shape: [4, 3, 3, 3], rank: 3, dtype: 'f32', u: f32(uniform(12, 0.2)), v: f32(uniform(81, 0.2)) },
  { name: 'attn.f16', shape: [5, 4], rank: 2, dtype: 'f16', u: f16Bytes(attnU), v: f16Bytes(attnV) },
  {
    name: 'head.bf16',
    shape: [3, 7],
    rank: 2,
    dtype: 'i8',
    u: new Uint8Array(headQU.buffer),
    v: new Uint8Array(headQV.buffer),
    scales: { u: f32(headSU), v: f32(headSV) },
  },
  {
    name: 'order.check',
    shape: [3, 3],
    rank: 3,
    dtype: 'f32',
    u: f32([2 ** 15, 2 ** 15, 1, ...uniform(6, 0.5)]),
    v: f32([-(2 ** 15), ...uniform(2, 0.5), 2 ** 15, ...uniform(2, 0.5), 2 ** -24 + 2 ** -40, ...uniform(2, 0.5)]),
  },
  { name: 'fc1.bias', shape: [8], dense: f32([2 ** -24, 3 * 2 ** -24, ...uniform(6, 0.01)]) },
];

const draft: Payload = { v: 1, base: baseDigest, target: '0'.repeat(64), tensors: deltas };
const applied = applyToModel(baseBytes, draft);
const payload: Payload = { ...draft, target: applied.digest };
const payloadBytes = encodePayload(payload);
const targetBytes = applied.bytes;

// ---------------------------------------------------------------------------
// Elementwise expectations: base bits, the double sum W + Δ, and the stored bits.

function bitsHex(data: Uint8Array, dtype: Dtype, e: number): string {
  const size = dtypeSize(dtype);
  return hex(
    data
      .subarray(e * size, (e + 1) * size)
      .slice()
      .reverse(),
  ); // as a big-endian number
}

const target = readSafetensors(targetBytes);
const elements: unknown[] = [];
for (const d of deltas) {
  const t = baseTensors.find((x) => x.name === d.name)!;
  const w = decodeValues(t.data, t.dtype);
  const total = count(t.shape);
  const delta = new Float64Array(total);
  delta.set(deltaValues(d)); // for each (i, j): Σ_k U[i,k]·V[k,j] in k order, or the dense value
  for (const e of [...new Set([0, 1, total - 1])]) {
    const sum = w[e] + delta[e];
    elements.push({
      tensor: d.name,
      dtype: t.dtype,
      index: e,
      baseBits: bitsHex(t.data, t.dtype, e),
      base: w[e],
      delta: delta[e],
      deltaF64: f64Hex(delta[e]),
      sum,
      sumF64: f64Hex(sum),
      expectedBits: bitsHex(target.tensor(d.name), t.dtype, e),
    });
  }
}

// ---------------------------------------------------------------------------
// Conversion cases: double → f16 / bf16 bits, ties to even, one rounding.

const f16Inputs = [
  1,
  -2,
  65504,
  65519.99,
  65520,
  65536,
  1e10,
  -1e10,
  2 ** -24,
  2 ** -25,
  2 ** -25 * 3,
  2 ** -26,
  2 ** -24 * 1.5,
  2 ** -14,
  2 ** -14 - 2 ** -25,
  1 + 2 ** -11,
  1 + 3 * 2 ** -11,
  1 + 2 ** -11 + 2 ** -40,
  1 + 2 ** -11 - 2 ** -40,
  0.1,
  1 / 3,
  -Math.PI,
  0,
  -0,
  Infinity,
  -Infinity,
  NaN,
  1e-300,
  -5e-324,
];
const bf16Inputs = [
  1,
  -2,
  1 + 2 ** -8,
  1 + 3 * 2 ** -8,
  1 + 2 ** -8 + 2 ** -30,
  1 + 2 ** -8 - 2 ** -30,
  (2 - 2 ** -7) * 2 ** 127,
  (2 - 2 ** -8) * 2 ** 127,
  (2 - 2 ** -8 - 2 ** -20) * 2 ** 127,
  1e300,
  2 ** -133,
  2 ** -134,
  3 * 2 ** -134,
  2 ** -126,
  2 ** -126 - 2 ** -135,
  0.1,
  Math.PI,
  0,
  -0,
  Infinity,
  -Infinity,
  NaN,
  5e-324,
];
const h4 = (b: number) => b.toString(16).padStart(4, '0');
const conversions = {
  f16: f16Inputs.map((x) => ({ x: Object.is(x, -0) ? '-0' : String(x), f64: f64Hex(x), bits: h4(numberToF16Bits(x)), value: String(f16BitsToNumber(numberToF16Bits(x))) })),
  bf16: bf16Inputs.map((x) => ({ x: Object.is(x, -0) ? '-0' : String(x), f64: f64Hex(x), bits: h4(numberToBf16Bits(x)), value: String(bf16BitsToNumber(numberToBf16Bits(x))) })),
};

// ---------------------------------------------------------------------------

const files = {
  'base.safetensors': baseBytes,
  'payload.cbor': payloadBytes,
  'target.safetensors': targetBytes,
};
for (const [name, bytes] of Object.entries(files)) writeFileSync(path.join(dir, name), bytes);

const vectors = {
  baseDigest,
  targetDigest: applied.digest,
  payloadSha256: sha256(payloadBytes),
  files: Object.fromEntries(Object.entries(files).map(([n, b]) => [n, { bytes: b.byteLength, sha256: sha256(b) }])),
  notes: [
    'Model digest: SHA-256 over tensors sorted by UTF-8 name bytes of u64le(len name) ‖ name ‖ u64le(len dtype) ‖ dtype ‖ u64le(rank) ‖ u64le(dims…) ‖ raw bytes.',
    'Low-rank apply: per row i, acc[j] = 0; for k = 0..r-1: acc[j] += U[i,k]*V[k,j] in doubles; out = round(W[i,j] + acc[j]) once to the tensor dtype (nearest, ties to even).',
    'i8 factors: value = q * scale (f32 scale per row of U and of V). f16 factors: exact f16 values. Dense: f32 delta added in double, rounded once.',
    'fc1.bias[0..1], attn.f16[0] and head.bf16[0] are ties or near-ties: rounding through f32 first would give other bits.',
    'order.check[0] is 1 + ((0 + -2^30 + 2^30) + (2^-24 + 2^-40)) = 1 + 2^-23 in F32 only when summed in k order, starting from 0.',
    'Bits are hex of the element as a big-endian number (file bytes are little-endian); f64 is the double bit pattern.',
    'embed.q (I8) is not updated and must be copied unchanged.',
  ],
  elements,
  conversions,
};
writeFileSync(path.join(dir, 'vectors.json'), JSON.stringify(vectors, null, 1) + '\n');

// ---------------------------------------------------------------------------
// Conformance cases: each expectation is confirmed with our code before it is written.

const cases = caseVectors(baseBytes);
const all: Record<string, Uint8Array> = { ...files, ...cases.files };
for (const r of cases.refuse) {
  const out = conform(all[r.model], all[r.payload]);
  const got = 'code' in out ? out.code : 'accepted';
  if (got !== r.expect) throw new Error(`case ${r.name}: expected ${r.expect}, our code gives ${got}`);
  if (r.cbor) {
    let form = 'accepted';
    try {
      checkStrictCbor(all[r.payload]);
    } catch (e) {
      form = e instanceof CborError ? e.form : String(e);
    }
    if (form !== r.cbor) throw new Error(`case ${r.name}: expected CBOR form ${r.cbor}, got ${form}`);
  }
}
const casesDir = path.join(dir, 'cases');
rmSync(casesDir, { recursive: true, force: true });
mkdirSync(casesDir);
for (const [name, bytes] of Object.entries(cases.files)) writeFileSync(path.join(dir, name), bytes);
const manifest = {
  procedure: [
    'docs/protocol.md §7.5. For each case: decode the payload file (§4.0 CBOR subset, §6 payload); read the model file (§7.1);',
    'the model digest (§7.2) must equal the payload base, else wrong-base; apply every delta (§7.3); the result digest must equal',
    'the payload target, else digest-mismatch. A conforming implementation accepts every "accept" case, producing exactly the',
    '"target" file (byte for byte with the §7.1 writer) and "targetDigest", and refuses every "refuse" case with exactly its',
    '"expect" reason code (§9). "cbor" names the §4.0 rule a refused CBOR input breaks. Every refused case has exactly one fault.',
  ],
  accept: cases.accept.map((a) => ({ ...a, sha256: sha256(all[a.target]) })),
  refuse: cases.refuse,
};
writeFileSync(path.join(dir, 'cases.json'), JSON.stringify(manifest, null, 1) + '\n');
console.log(`wrote ${Object.keys(files).join(', ')}, vectors.json; base ${baseDigest}, target ${applied.digest}`);
console.log(`wrote cases.json: ${cases.accept.length} accepted and ${cases.refuse.length} refused cases, ${Object.keys(cases.files).length} files in cases/`);
