import { ProtocolError } from './errors.ts';
import { type Dtype, dtypeSize, elementReader, elementWriter, isUpdatableDtype, numberToBf16Bits, numberToF16Bits } from './dtypes.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from './safetensors.ts';
import { modelDigest } from './digest.ts';
import { isMixedDelta, isSignDelta, mixedFactors, signValues } from './compact.ts';
import { decodeFactors, denseValues, elementCount, isLowRank, lowRankDims, rowAccumulator, type FactorScratch, type Payload, type TensorDelta } from './lowrank.ts';

/**
 * Applying a payload's deltas to a model's tensors (docs/protocol.md §7): W' = round(W + ΔW) in
 * the tensor's own dtype, bit-exact on every platform. Decoding and checking the deltas is
 * protocol/lowrank.ts's.
 */

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** round(x) to the dtype as bits written by `write`; returns false if the stored value is NaN or infinite. */
function roundedWriter(out: Uint8Array, dtype: 'F32' | 'F16' | 'BF16'): (j: number, x: number) => boolean {
  if (dtype === 'F32') {
    const write = elementWriter(out, 'F32');
    return (j, x) => {
      const y = Math.fround(x);
      write(j, y);
      return Number.isFinite(y);
    };
  }
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const toBits = dtype === 'F16' ? numberToF16Bits : numberToBf16Bits;
  const expMask = dtype === 'F16' ? 0x7c00 : 0x7f80;
  return (j, x) => {
    const bits = toBits(x);
    dv.setUint16(j * 2, bits, true);
    return (bits & expMask) !== expMask;
  };
}

/** Whether Float32Array elements are little-endian here (as on every platform Node runs on today). */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Float32Array views of an F32 tensor and its output when both are 4-byte aligned on a
 * little-endian machine (a device's reused buffers are), else undefined (the DataView path).
 * Storing a double into a Float32Array rounds it once, to nearest, ties to even, exactly as
 * Math.fround does, so the bytes are the DataView path's (test/protocol/lowrank.test.ts).
 */
function float32Views(base: Uint8Array, out: Uint8Array, total: number): { w: Float32Array; o: Float32Array } | undefined {
  if (!LITTLE_ENDIAN || base.byteOffset % 4 !== 0 || out.byteOffset % 4 !== 0) return undefined;
  return { w: new Float32Array(base.buffer, base.byteOffset, total), o: new Float32Array(out.buffer, out.byteOffset, total) };
}

/**
 * applyTensor's low-rank rule for F32 with the same arithmetic: each element's sum starts at 0
 * and adds U[i,k]·V[k,j] for k = 0..r-1 in that order (a double per element instead of a row of
 * accumulators: the same additions in the same order), then W + sum rounded once. Element j is
 * read before it is written, so `o` may be `w`.
 */
function applyLowRankF32(w: Float32Array, o: Float32Array, u: Float64Array, v: Float64Array, m: number, n: number, r: number, fail: (e: number) => Error): void {
  for (let i = 0; i < m; i++) {
    const ui = i * r;
    const rowStart = i * n;
    for (let j = 0; j < n; j++) {
      let sum = 0;
      for (let k = 0; k < r; k++) sum += u[ui + k] * v[k * n + j];
      const e = rowStart + j;
      o[e] = w[e] + sum;
      if (!Number.isFinite(o[e])) throw fail(e);
    }
  }
}

/**
 * Apply one delta to one tensor; returns new bytes of the same dtype and shape.
 * Low-rank, per row i: acc[j] = 0; for k = 0..r-1, for j: acc[j] += U[i,k]·V[k,j]
 * (double multiply, double add, k increasing); then out[i,j] = round(W[i,j] + acc[j])
 * with ONE rounding from the double to the dtype (nearest, ties to even).
 * Dense: out[e] = round(W[e] + d[e]). NaN or ±Inf in any output → 'non-finite'.
 * The rule is docs/protocol.md §7.3 ("Apply, bit-exact"); the deltas are §6's, and the
 * vectors that pin it down are §7.4's.
 */
export function applyTensor(info: { name: string; dtype: Dtype; shape: readonly number[] }, base: Uint8Array, delta: TensorDelta, into?: Uint8Array, scratch?: FactorScratch): Uint8Array {
  if (!sameShape(delta.shape, info.shape)) {
    throw new ProtocolError('shape-mismatch', `${info.name}: model [${info.shape.join(',')}], update [${delta.shape.join(',')}]`);
  }
  const dtype = info.dtype;
  if (!isUpdatableDtype(dtype)) throw new ProtocolError('unsupported-dtype', `${info.name} is ${String(dtype)}`);
  const total = elementCount(info.shape);
  if (base.byteLength !== total * dtypeSize(dtype)) {
    throw new ProtocolError('malformed-model', `${info.name}: ${base.byteLength} bytes for shape [${info.shape.join(',')}] of ${dtype}`);
  }
  const read = elementReader(base, dtype);
  // `into`: a buffer of the caller's to reuse (a device applying tensor after tensor), at least as large;
  // `scratch`: the same for the factors as doubles.
  const out = into && into.byteLength >= base.byteLength ? into.subarray(0, base.byteLength) : new Uint8Array(base.byteLength);
  const put = roundedWriter(out, dtype);
  const fail = (e: number) => new ProtocolError('non-finite', `${info.name}[${e}]`);
  if (!isLowRank(delta) && !isMixedDelta(delta)) {
    const d = isSignDelta(delta) ? signValues(delta) : denseValues(delta, scratch);
    for (let e = 0; e < total; e++) {
      if (!put(e, read(e) + d[e])) throw fail(e);
    }
    return out;
  }
  const { m, n } = lowRankDims(info.shape);
  const { u, v, rank: r } = isMixedDelta(delta) ? mixedFactors(delta) : { ...decodeFactors(delta, scratch), rank: delta.rank };
  const f32 = dtype === 'F32' ? float32Views(base, out, total) : undefined;
  if (f32) {
    applyLowRankF32(f32.w, f32.o, u, v, m, n, r, fail);
    return out;
  }
  const acc = rowAccumulator(n, scratch);
  for (let i = 0; i < m; i++) {
    acc.fill(0);
    for (let k = 0; k < r; k++) {
      const uik = u[i * r + k];
      const row = k * n;
      for (let j = 0; j < n; j++) acc[j] += uik * v[row + j];
    }
    const rowStart = i * n;
    for (let j = 0; j < n; j++) {
      if (!put(rowStart + j, read(rowStart + j) + acc[j])) throw fail(rowStart + j);
    }
  }
  return out;
}

/**
 * Apply a payload to a whole model in memory. Every delta must name a tensor of
 * the model ('shape-mismatch' otherwise). Does not check payload.base/target:
 * callers compare the digests. Output: deterministic safetensors, metadata kept.
 */
export function applyToModel(model: Uint8Array, payload: Payload): { bytes: Uint8Array; digest: string } {
  const file = readSafetensors(model);
  const updated = new Map<string, Uint8Array>();
  for (const delta of payload.tensors) {
    const info = file.info(delta.name);
    if (!info) throw new ProtocolError('shape-mismatch', `the model has no tensor ${JSON.stringify(delta.name)}`);
    if (updated.has(delta.name)) throw new ProtocolError('malformed-payload', `tensor ${JSON.stringify(delta.name)} appears twice`);
    updated.set(delta.name, applyTensor(info, file.tensor(delta.name), delta));
  }
  const tensors: TensorInput[] = file.tensors.map((t) => ({
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    data: updated.get(t.name) ?? t.data,
  }));
  return { bytes: writeSafetensors(tensors, file.header.metadata), digest: modelDigest(tensors) };
}
