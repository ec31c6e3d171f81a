/**
 * Independent reference for apply tests: own decoding of f16/bf16/f32 and own exact
 * rounding (BigInt), sharing no code with protocol/dtypes.ts.
 */
// ---------------------------------------------------------------------------
// Independent reference: own decoding of f16/bf16/f32, own exact rounding.

export type FloatDtype = 'F32' | 'F16' | 'BF16';

function u16s(b: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < b.length; i += 2) out.push(b[i] | (b[i + 1] << 8));
  return out;
}
export function refF16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const f = h & 1023;
  if (e === 31) return f ? NaN : s * Infinity;
  return e === 0 ? s * f * 2 ** -24 : s * (1 + f / 1024) * 2 ** (e - 15);
}
function refBf16(h: number): number {
  return new Float32Array(new Uint32Array([h << 16]).buffer)[0];
}
export function refValues(b: Uint8Array, dtype: FloatDtype | 'f32' | 'f16'): number[] {
  if (dtype === 'F32' || dtype === 'f32') return Array.from(new Float32Array(b.slice().buffer));
  if (dtype === 'F16' || dtype === 'f16') return u16s(b).map(refF16);
  return u16s(b).map(refBf16);
}

/** |x| · 2^1074 as an exact BigInt. */
function exactBig(x: number): bigint {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setFloat64(0, Math.abs(x));
  const e = (dv.getUint32(0) >>> 20) & 0x7ff;
  const frac = (BigInt(dv.getUint32(0) & 0xfffff) << 32n) | BigInt(dv.getUint32(4));
  return e === 0 ? frac : ((1n << 52n) | frac) << BigInt(e - 1);
}

/** Round x to a binary format with M mantissa bits and minimum normal exponent emin, exactly, ties to even. */
export function refRound(x: number, M: number, emin: number, maxFinite: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const X = exactBig(x);
  const e = X.toString(2).length - 1 - 1074;
  const qexp = Math.max(e, emin) - M;
  const Q = 1n << BigInt(qexp + 1074);
  let n = X / Q;
  const r = X % Q;
  if (2n * r > Q || (2n * r === Q && n % 2n === 1n)) n += 1n;
  let v = Number(n) * 2 ** qexp;
  if (v > maxFinite) v = Infinity;
  return x < 0 ? -v : v;
}
export function refRoundTo(x: number, dtype: FloatDtype): number {
  if (dtype === 'F32') return Math.fround(x);
  if (dtype === 'F16') return refRound(x, 10, -14, 65504);
  return refRound(x, 7, -126, (2 - 2 ** -7) * 2 ** 127);
}
