/**
 * A small MLP (inputs → hidden ReLU → outputs, softmax cross-entropy) in
 * plain TypeScript on Float32Arrays, with exact gradients for the dense
 * weights and for low-rank factors of the first layer (ΔW1 = U·V).
 */
import type { Dataset } from './data.ts';

export interface Mlp {
  inputs: number;
  hidden: number;
  outputs: number;
  /** hidden×inputs, row-major (row = hidden unit). */
  w1: Float32Array;
  b1: Float32Array;
  /** outputs×hidden. */
  w2: Float32Array;
  b2: Float32Array;
}

export type TensorKey = 'w1' | 'b1' | 'w2' | 'b2';
export const TENSOR_KEYS: readonly TensorKey[] = ['w1', 'b1', 'w2', 'b2'];

export function paramCount(p: Pick<Mlp, 'inputs' | 'hidden' | 'outputs'>): number {
  return p.hidden * p.inputs + p.hidden + p.outputs * p.hidden + p.outputs;
}

/** He-uniform weights, zero biases. */
export function initMlp(rand: () => number, inputs: number, hidden: number, outputs: number): Mlp {
  const uniform = (count: number, fanIn: number): Float32Array => {
    const a = new Float32Array(count);
    const lim = Math.sqrt(6 / fanIn);
    for (let i = 0; i < count; i++) a[i] = (rand() * 2 - 1) * lim;
    return a;
  };
  return {
    inputs, hidden, outputs,
    w1: uniform(hidden * inputs, inputs),
    b1: new Float32Array(hidden),
    w2: uniform(outputs * hidden, hidden),
    b2: new Float32Array(outputs),
  };
}

export function cloneMlp(p: Mlp): Mlp {
  return { ...p, w1: p.w1.slice(), b1: p.b1.slice(), w2: p.w2.slice(), b2: p.b2.slice() };
}

/** Zeroed tensors shaped like the model's. */
export function zerosLike(p: Mlp): Mlp {
  return { ...p, w1: new Float32Array(p.w1.length), b1: new Float32Array(p.b1.length), w2: new Float32Array(p.w2.length), b2: new Float32Array(p.b2.length) };
}

/** Low-rank factors of the first layer and where their gradients go. */
export interface W1Factors {
  rank: number;
  /** hidden×rank. */
  u: Float32Array;
  /** rank×inputs. */
  v: Float32Array;
  gu: Float32Array;
  gv: Float32Array;
}

export interface GradOptions {
  /** Accumulate the dense gradient of w1 (the expensive one). Default true. */
  w1?: boolean;
  /** Also accumulate gradients of ΔW1 = u·v's factors (p.w1 must already include u·v). */
  w1Factors?: W1Factors;
}

/** Logits of one image into `logits`; hidden activations (after ReLU) into `h`. */
export function forward(p: Mlp, x: Float32Array, xOff: number, h: Float64Array, logits: Float64Array): void {
  const { inputs, hidden, outputs, w1, b1, w2, b2 } = p;
  for (let j = 0; j < hidden; j++) {
    let a = b1[j];
    const row = j * inputs;
    for (let i = 0; i < inputs; i++) a += w1[row + i] * x[xOff + i];
    h[j] = a > 0 ? a : 0;
  }
  for (let k = 0; k < outputs; k++) {
    let a = b2[k];
    const row = k * hidden;
    for (let j = 0; j < hidden; j++) a += w2[row + j] * h[j];
    logits[k] = a;
  }
}

/**
 * Mean cross-entropy over the samples `idx` of `ds`, and its gradient
 * written (not added) into `g` (and into the factor gradients, if given).
 */
export function lossAndGrad(p: Mlp, ds: Dataset, idx: ArrayLike<number>, g: Mlp, o: GradOptions = {}): number {
  const { inputs, hidden, outputs, w2 } = p;
  const wantW1 = o.w1 ?? true;
  const f = o.w1Factors;
  g.b1.fill(0);
  g.w2.fill(0);
  g.b2.fill(0);
  if (wantW1) g.w1.fill(0);
  if (f) {
    f.gu.fill(0);
    f.gv.fill(0);
  }
  const h = new Float64Array(hidden);
  const logits = new Float64Array(outputs);
  const dh = new Float64Array(hidden);
  const vx = new Float64Array(f ? f.rank : 0);
  const utdh = new Float64Array(f ? f.rank : 0);
  const inv = 1 / idx.length;
  let loss = 0;
  for (let b = 0; b < idx.length; b++) {
    const s = idx[b];
    const xOff = s * inputs;
    const x = ds.x;
    forward(p, x, xOff, h, logits);
    let max = -Infinity;
    for (let k = 0; k < outputs; k++) if (logits[k] > max) max = logits[k];
    let sum = 0;
    for (let k = 0; k < outputs; k++) {
      logits[k] = Math.exp(logits[k] - max);
      sum += logits[k];
    }
    const y = ds.y[s];
    loss -= Math.log(logits[y] / sum);
    // dL/dlogits = softmax − onehot, scaled by 1/batch; reuse `logits`.
    for (let k = 0; k < outputs; k++) logits[k] = (logits[k] / sum - (k === y ? 1 : 0)) * inv;
    dh.fill(0);
    for (let k = 0; k < outputs; k++) {
      const d = logits[k];
      g.b2[k] += d;
      const row = k * hidden;
      for (let j = 0; j < hidden; j++) {
        g.w2[row + j] += d * h[j];
        dh[j] += d * w2[row + j];
      }
    }
    for (let j = 0; j < hidden; j++) if (h[j] <= 0) dh[j] = 0;
    for (let j = 0; j < hidden; j++) g.b1[j] += dh[j];
    if (wantW1) {
      for (let j = 0; j < hidden; j++) {
        const d = dh[j];
        if (d === 0) continue;
        const row = j * inputs;
        for (let i = 0; i < inputs; i++) g.w1[row + i] += d * x[xOff + i];
      }
    }
    if (f) {
      const r = f.rank;
      // ∂L/∂U = dh·(V x)ᵀ, ∂L/∂V = (Uᵀ dh)·xᵀ.
      for (let k = 0; k < r; k++) {
        let a = 0;
        const row = k * inputs;
        for (let i = 0; i < inputs; i++) a += f.v[row + i] * x[xOff + i];
        vx[k] = a;
        let c = 0;
        for (let j = 0; j < hidden; j++) c += f.u[j * r + k] * dh[j];
        utdh[k] = c;
      }
      for (let j = 0; j < hidden; j++) {
        const d = dh[j];
        if (d === 0) continue;
        for (let k = 0; k < r; k++) f.gu[j * r + k] += d * vx[k];
      }
      for (let k = 0; k < r; k++) {
        const c = utdh[k];
        if (c === 0) continue;
        const row = k * inputs;
        for (let i = 0; i < inputs; i++) f.gv[row + i] += c * x[xOff + i];
      }
    }
  }
  return loss * inv;
}

/** Mean cross-entropy over a whole dataset (no gradients). */
export function meanLoss(p: Mlp, ds: Dataset): number {
  const h = new Float64Array(p.hidden);
  const logits = new Float64Array(p.outputs);
  let loss = 0;
  for (let s = 0; s < ds.n; s++) {
    forward(p, ds.x, s * p.inputs, h, logits);
    let max = -Infinity;
    for (const l of logits) if (l > max) max = l;
    let sum = 0;
    for (const l of logits) sum += Math.exp(l - max);
    loss += Math.log(sum) + max - logits[ds.y[s]];
  }
  return loss / ds.n;
}

/** Fraction of `ds` classified correctly. */
export function accuracy(p: Mlp, ds: Dataset): number {
  const h = new Float64Array(p.hidden);
  const logits = new Float64Array(p.outputs);
  let right = 0;
  for (let s = 0; s < ds.n; s++) {
    forward(p, ds.x, s * p.inputs, h, logits);
    let best = 0;
    for (let k = 1; k < p.outputs; k++) if (logits[k] > logits[best]) best = k;
    if (best === ds.y[s]) right++;
  }
  return right / ds.n;
}
