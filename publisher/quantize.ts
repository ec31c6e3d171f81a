import { numberToF16Bits } from '../protocol/dtypes.ts';
import { quantizeRowsI8, type FactorDtype, type LowRankDelta } from '../protocol/lowrank.ts';

export type Quant = 'f32' | 'f16' | 'int8';

export const FACTOR_DTYPE: Record<Quant, FactorDtype> = { f32: 'f32', f16: 'f16', int8: 'i8' };

/** Bytes per stored factor value. */
export const BYTES_PER_VALUE: Record<Quant, number> = { f32: 4, f16: 2, int8: 1 };

function f32Bytes(values: ArrayLike<number>): Uint8Array {
  const a = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) a[i] = values[i];
  return new Uint8Array(a.buffer);
}

function f16Bytes(values: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(values.length * 2);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) dv.setUint16(i * 2, numberToF16Bits(values[i]), true);
  return out;
}

/**
 * Encode U (m×r) and V (r×n), row-major doubles, as a low-rank delta in the
 * chosen number format. int8 uses one f32 scale per row of U and of V.
 */
export function encodeFactors(name: string, shape: number[], u: Float64Array, v: Float64Array, m: number, n: number, r: number, quant: Quant): LowRankDelta {
  if (quant === 'f32') return { name, shape, rank: r, dtype: 'f32', u: f32Bytes(u), v: f32Bytes(v) };
  if (quant === 'f16') return { name, shape, rank: r, dtype: 'f16', u: f16Bytes(u), v: f16Bytes(v) };
  const qu = quantizeRowsI8(u, m, r);
  const qv = quantizeRowsI8(v, r, n);
  return { name, shape, rank: r, dtype: 'i8', u: qu.q, v: qv.q, scales: { u: qu.scales, v: qv.scales } };
}

/**
 * Split singular values evenly between the factors (U·√s, √s·Vᵀ) so both
 * have the same dynamic range, which keeps f16/int8 rounding errors balanced.
 */
export function balanceFactors(uk: Float64Array, s: Float64Array, vt: Float64Array, m: number, n: number, kAll: number, r: number): { u: Float64Array; v: Float64Array } {
  const u = new Float64Array(m * r);
  const v = new Float64Array(r * n);
  for (let k = 0; k < r; k++) {
    const root = Math.sqrt(s[k]);
    for (let i = 0; i < m; i++) u[i * r + k] = uk[i * kAll + k] * root;
    for (let j = 0; j < n; j++) v[k * n + j] = vt[k * n + j] * root;
  }
  return { u, v };
}

/** Stored bytes of a rank-r delta of an m×n matrix (data only). */
export function factorBytes(m: number, n: number, r: number, quant: Quant): number {
  return r * (m + n) * BYTES_PER_VALUE[quant] + (quant === 'int8' ? 4 * (m + r) : 0);
}

/** Stored bytes of a dense f32 delta. */
export function denseBytes(count: number): number {
  return 4 * count;
}

/**
 * CBOR bytes of one tensor entry apart from its data (keys, name, shape,
 * byte-string headers): an upper bound, so budgets are never exceeded by it.
 */
export function entryOverhead(name: string, shape: number[], lowRank: boolean): number {
  const nameBytes = Buffer.byteLength(name, 'utf8');
  return 16 + nameBytes + 9 * (shape.length + 1) + (lowRank ? 48 : 16);
}

/** The payload's own CBOR envelope (v, base, target, tensors array header). */
export const PAYLOAD_OVERHEAD = 180;
