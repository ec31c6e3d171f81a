/**
 * How many bytes each update method ships (data only: values, indices and
 * quantisation scales; no container framing — except the fleet build, whose
 * bytes are its whole CBOR payload). "8-bit" means int8 values with one f32
 * scale per row (factors, dense) or per tensor (top-k values, bias vectors).
 */
export type Precision = 'f32' | 'int8';

const BPV: Record<Precision, number> = { f32: 4, int8: 1 };

/** Rank-r factors U (m×r), V (r×n): r·(m+n)·4 in f32; r·(m+n) + 4·(m+r) scales in int8 (as fleet's int8). */
export function lowRankBytes(m: number, n: number, r: number, p: Precision): number {
  if (r === 0) return 0;
  return r * (m + n) * BPV[p] + (p === 'int8' ? 4 * (m + r) : 0);
}

/** A dense vector of n values (bias delta): 4n in f32; n + one 4-byte scale in int8. */
export function vectorBytes(n: number, p: Precision): number {
  return n * BPV[p] + (p === 'int8' ? 4 : 0);
}

/** Top-k sparse delta: k·(4 + 4) in f32 (value, u32 index); k·(1 + 4) + 4 per tensor touched in int8. */
export function topKBytes(k: number, p: Precision, tensorsTouched: number): number {
  if (k === 0) return 0;
  return k * (BPV[p] + 4) + (p === 'int8' ? 4 * tensorsTouched : 0);
}

/** A dense rows×cols delta at `bits` (8 or 4) with one f32 scale per row; 32 bits is plain f32. */
export function denseBytes(rows: number, cols: number, bits: 32 | 8 | 4): number {
  if (bits === 32) return rows * cols * 4;
  return Math.ceil((rows * cols * bits) / 8) + 4 * rows;
}
