/**
 * Post-hoc compressions of a full fine-tune's ΔW (top-k, quantised dense),
 * the quantisation of low-rank factors, and the byte-budget rule for the
 * directly trained low-rank update.
 */
import { denseBytes, lowRankBytes, topKBytes, vectorBytes, type Precision } from './bytes.ts';
import { cloneMlp, TENSOR_KEYS, type Mlp, type TensorKey } from './mlp.ts';
import type { LoraConfig, LoraState } from './train.ts';

/** Rows and columns of each tensor as a matrix (biases: one row). */
export function tensorDims(p: Mlp, key: TensorKey): { rows: number; cols: number } {
  switch (key) {
    case 'w1':
      return { rows: p.hidden, cols: p.inputs };
    case 'b1':
      return { rows: 1, cols: p.hidden };
    case 'w2':
      return { rows: p.outputs, cols: p.hidden };
    case 'b2':
      return { rows: 1, cols: p.outputs };
  }
}

/**
 * Symmetric per-row quantisation to `bits` (8: ±127 levels, 4: ±7), returned
 * dequantised (what the device would add). The scale is rounded to f32.
 */
export function quantizeRows(values: ArrayLike<number>, rows: number, cols: number, bits: 8 | 4): Float32Array {
  const levels = bits === 8 ? 127 : 7;
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    let max = 0;
    for (let j = 0; j < cols; j++) max = Math.max(max, Math.abs(values[i * cols + j]));
    const s = Math.fround(max / levels);
    if (s === 0) continue;
    for (let j = 0; j < cols; j++) {
      const q = Math.max(-levels, Math.min(levels, Math.round(values[i * cols + j] / s)));
      out[i * cols + j] = q * s;
    }
  }
  return out;
}

/** target − base, tensor by tensor. */
export function deltaOf(base: Mlp, target: Mlp): Mlp {
  const d = cloneMlp(base);
  for (const k of TENSOR_KEYS) for (let i = 0; i < d[k].length; i++) d[k][i] = target[k][i] - base[k][i];
  return d;
}

/** base + delta. */
export function addDelta(base: Mlp, delta: Mlp): Mlp {
  const p = cloneMlp(base);
  for (const k of TENSOR_KEYS) for (let i = 0; i < p[k].length; i++) p[k][i] += delta[k][i];
  return p;
}

/** Dense ΔW at 8 or 4 bits (per-row scales); its bytes. */
export function quantizedDense(base: Mlp, delta: Mlp, bits: 8 | 4): { model: Mlp; bytes: number } {
  const q = cloneMlp(delta);
  let bytes = 0;
  for (const k of TENSOR_KEYS) {
    const { rows, cols } = tensorDims(base, k);
    q[k] = quantizeRows(delta[k], rows, cols, bits);
    bytes += denseBytes(rows, cols, bits);
  }
  return { model: addDelta(base, q), bytes };
}

/** The largest k whose top-k delta fits `budget` bytes (int8 assumes every tensor touched). */
export function topKCount(budget: number, p: Precision, tensors: number): number {
  if (p === 'f32') return Math.max(0, Math.floor(budget / 8));
  return Math.max(0, Math.floor((budget - 4 * tensors) / 5));
}

/**
 * Keep the k entries of ΔW (over all tensors) with the largest |value|, the
 * rest zero; in int8 the kept values are quantised with one scale per tensor.
 */
export function topK(base: Mlp, delta: Mlp, k: number, p: Precision): { model: Mlp; bytes: number; k: number } {
  const total = TENSOR_KEYS.reduce((a, key) => a + delta[key].length, 0);
  k = Math.min(k, total);
  const mags = new Float32Array(total);
  let at = 0;
  for (const key of TENSOR_KEYS) for (const v of delta[key]) mags[at++] = Math.abs(v);
  // Threshold = the k-th largest magnitude; ties broken by position (first wins).
  const sorted = mags.slice().sort();
  const thr = k > 0 ? sorted[total - k] : Infinity;
  let above = 0;
  for (const m of mags) if (m > thr) above++;
  let tiesLeft = k - above;
  const sparse = cloneMlp(delta);
  let touched = 0;
  at = 0;
  for (const key of TENSOR_KEYS) {
    const src = delta[key];
    const dst = sparse[key];
    let kept = 0;
    for (let i = 0; i < src.length; i++, at++) {
      const m = mags[at];
      let keep = m > thr;
      if (!keep && m === thr && tiesLeft > 0 && k > 0) {
        keep = true;
        tiesLeft--;
      }
      dst[i] = keep ? src[i] : 0;
      if (keep) kept++;
    }
    if (kept > 0) {
      touched++;
      if (p === 'int8') {
        const q = quantizeRows(dst, 1, dst.length, 8);
        dst.set(q);
      }
    }
  }
  return { model: addDelta(base, sparse), bytes: topKBytes(k, p, touched), k };
}

/**
 * Data bytes of a low-rank update with this config as the product ships it
 * (`fleet build` from an adapter): factors in the chosen precision (int8 with
 * one f32 scale per row of U and of V), bias deltas always as f32 (fleet ships
 * 1-D tensors dense in f32).
 */
export function loraBytes(base: Mlp, c: LoraConfig, p: Precision): number {
  return lowRankBytes(base.hidden, base.inputs, c.r1, p) + lowRankBytes(base.outputs, base.hidden, c.r2, p) + (c.b1 ? vectorBytes(base.hidden, 'f32') : 0) + (c.b2 ? vectorBytes(base.outputs, 'f32') : 0);
}

/**
 * What a directly trained low-rank update gets for `budget` bytes: first the
 * bias deltas (output, then hidden; the cheapest parameters), then ranks kept
 * balanced across the two layers — each round raises the lower of r1, r2 by
 * one (ties: the cheaper layer, W2), skipping a layer whose next rank does not
 * fit or whose factors would cost as much as its dense matrix, until neither
 * layer can grow. Bias deltas and r1 never shrink as the budget grows (r2 may
 * give way to r1 in the balance). The old rule (output bias, then as much r1
 * as fits, then the hidden bias, then r2) spent 1 % of the model on a rank-1
 * ΔW1 and dropped the hidden bias, and scored below its own 0.5 % update.
 */
export function loraConfigFor(base: Mlp, budget: number, p: Precision): LoraConfig {
  const c: LoraConfig = { r1: 0, r2: 0, b1: false, b2: false };
  const fits = (): boolean => loraBytes(base, c, p) <= budget;
  c.b2 = true;
  if (!fits()) c.b2 = false;
  c.b1 = true;
  if (!fits()) c.b1 = false;
  const max1 = Math.floor((base.hidden * base.inputs) / (base.hidden + base.inputs));
  const max2 = Math.floor((base.outputs * base.hidden) / (base.outputs + base.hidden));
  const grow = (key: 'r1' | 'r2', max: number): boolean => {
    if (c[key] >= max) return false;
    c[key]++;
    if (fits()) return true;
    c[key]--;
    return false;
  };
  for (;;) {
    const order: Array<['r1' | 'r2', number]> =
      c.r1 < c.r2
        ? [
            ['r1', max1],
            ['r2', max2],
          ]
        : [
            ['r2', max2],
            ['r1', max1],
          ];
    if (!grow(...order[0]) && !grow(...order[1])) break;
  }
  return c;
}

/** The trained factors as the device gets them: int8 factors/bias deltas are quantised (per row). */
export function quantizeLora(base: Mlp, s: LoraState, p: Precision): LoraState {
  if (p === 'f32') return s;
  const c = s.config;
  return {
    config: c,
    u1: quantizeRows(s.u1, base.hidden, c.r1, 8),
    v1: quantizeRows(s.v1, c.r1, base.inputs, 8),
    u2: quantizeRows(s.u2, base.outputs, c.r2, 8),
    v2: quantizeRows(s.v2, c.r2, base.hidden, 8),
    db1: quantizeRows(s.db1, 1, s.db1.length, 8),
    db2: quantizeRows(s.db2, 1, s.db2.length, 8),
  };
}
