/**
 * A small MLP (inputs → hidden ReLU → outputs, softmax cross-entropy) in
 * plain TypeScript on Float32Arrays, with exact gradients for the dense
 * weights and for low-rank factors of the first layer (ΔW1 = U·V).
 *
 * Speed: inputs are visited through `inputsOf` — original MNIST digits are
 * ~80 % zero pixels, so their non-zero pixels are listed once per dataset
 * (CSR) and only those are multiplied (exactly the same sums, fewer terms).
 * Drifted digits (grey background) are dense and use plain unrolled loops.
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
    inputs,
    hidden,
    outputs,
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

/** The inputs of a dataset, either dense or as per-sample lists of non-zero pixels. */
export interface Inputs {
  /** Width of one sample. */
  width: number;
  /** Sparse (CSR) when under half the values are non-zero; else null and `x` is used. */
  start: Uint32Array | null;
  index: Uint16Array;
  value: Float32Array;
  x: Float32Array;
}

const inputsCache = new WeakMap<Float32Array, Inputs>();

/** How to visit the samples of `ds` (cached per dataset). */
export function inputsOf(ds: Dataset, width: number): Inputs {
  const have = inputsCache.get(ds.x);
  if (have && have.width === width) return have;
  let nnz = 0;
  for (let i = 0; i < ds.x.length; i++) if (ds.x[i] !== 0) nnz++;
  let r: Inputs;
  if (nnz * 2 >= ds.x.length) {
    r = { width, start: null, index: new Uint16Array(0), value: new Float32Array(0), x: ds.x };
  } else {
    const start = new Uint32Array(ds.n + 1);
    const index = new Uint16Array(nnz);
    const value = new Float32Array(nnz);
    let at = 0;
    for (let s = 0; s < ds.n; s++) {
      start[s] = at;
      const off = s * width;
      for (let i = 0; i < width; i++) {
        const v = ds.x[off + i];
        if (v !== 0) {
          index[at] = i;
          value[at++] = v;
        }
      }
    }
    start[ds.n] = at;
    r = { width, start, index, value, x: ds.x };
  }
  inputsCache.set(ds.x, r);
  return r;
}

/** Σ_i w[wOff + i]·x_i over the inputs of sample s. */
export function dotInput(w: ArrayLike<number>, wOff: number, inp: Inputs, s: number): number {
  if (inp.start) {
    const { index, value } = inp;
    let a = 0;
    for (let t = inp.start[s], end = inp.start[s + 1]; t < end; t++) a += w[wOff + index[t]] * value[t];
    return a;
  }
  const x = inp.x;
  const n = inp.width;
  const xOff = s * n;
  let a0 = 0;
  let a1 = 0;
  let a2 = 0;
  let a3 = 0;
  let i = 0;
  for (; i + 3 < n; i += 4) {
    a0 += w[wOff + i] * x[xOff + i];
    a1 += w[wOff + i + 1] * x[xOff + i + 1];
    a2 += w[wOff + i + 2] * x[xOff + i + 2];
    a3 += w[wOff + i + 3] * x[xOff + i + 3];
  }
  for (; i < n; i++) a0 += w[wOff + i] * x[xOff + i];
  return a0 + a1 + a2 + a3;
}

/** g[gOff + i] += d·x_i over the inputs of sample s. */
export function axpyInput(g: Float32Array, gOff: number, d: number, inp: Inputs, s: number): void {
  if (inp.start) {
    const { index, value } = inp;
    for (let t = inp.start[s], end = inp.start[s + 1]; t < end; t++) g[gOff + index[t]] += d * value[t];
    return;
  }
  const x = inp.x;
  const n = inp.width;
  const xOff = s * n;
  for (let i = 0; i < n; i++) g[gOff + i] += d * x[xOff + i];
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

/** Hidden activations (after ReLU) of sample s into `h`. */
export function hiddenOf(p: Mlp, inp: Inputs, s: number, h: Float64Array): void {
  const { inputs, hidden, w1, b1 } = p;
  for (let j = 0; j < hidden; j++) {
    const a = b1[j] + dotInput(w1, j * inputs, inp, s);
    h[j] = a > 0 ? a : 0;
  }
}

/** Logits from hidden activations. */
export function logitsOf(p: Mlp, h: Float64Array, logits: Float64Array): void {
  const { hidden, outputs, w2, b2 } = p;
  for (let k = 0; k < outputs; k++) {
    let a = b2[k];
    const row = k * hidden;
    for (let j = 0; j < hidden; j++) a += w2[row + j] * h[j];
    logits[k] = a;
  }
}

/**
 * Softmax cross-entropy of `logits` against label y; leaves (softmax − onehot)·scale
 * in `logits` and returns the loss.
 */
export function softmaxGrad(logits: Float64Array, y: number, scale: number): number {
  const n = logits.length;
  let max = -Infinity;
  for (let k = 0; k < n; k++) if (logits[k] > max) max = logits[k];
  let sum = 0;
  for (let k = 0; k < n; k++) {
    logits[k] = Math.exp(logits[k] - max);
    sum += logits[k];
  }
  const loss = -Math.log(logits[y] / sum);
  for (let k = 0; k < n; k++) logits[k] = (logits[k] / sum - (k === y ? 1 : 0)) * scale;
  return loss;
}

/**
 * Mean cross-entropy over the samples `idx` of `ds`, and its gradient
 * written (not added) into `g` (and into the factor gradients, if given).
 */
export function lossAndGrad(p: Mlp, ds: Dataset, idx: ArrayLike<number>, g: Mlp, o: GradOptions = {}): number {
  const { inputs, hidden, outputs, w2 } = p;
  const wantW1 = o.w1 ?? true;
  const f = o.w1Factors;
  const inp = inputsOf(ds, inputs);
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
    hiddenOf(p, inp, s, h);
    logitsOf(p, h, logits);
    loss += softmaxGrad(logits, ds.y[s], inv);
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
      for (let j = 0; j < hidden; j++) if (dh[j] !== 0) axpyInput(g.w1, j * inputs, dh[j], inp, s);
    }
    if (f) {
      const r = f.rank;
      // ∂L/∂U = dh·(V x)ᵀ, ∂L/∂V = (Uᵀ dh)·xᵀ.
      for (let k = 0; k < r; k++) {
        vx[k] = dotInput(f.v, k * inputs, inp, s);
        let c = 0;
        for (let j = 0; j < hidden; j++) c += f.u[j * r + k] * dh[j];
        utdh[k] = c;
      }
      for (let j = 0; j < hidden; j++) {
        const d = dh[j];
        if (d === 0) continue;
        for (let k = 0; k < r; k++) f.gu[j * r + k] += d * vx[k];
      }
      for (let k = 0; k < r; k++) if (utdh[k] !== 0) axpyInput(f.gv, k * inputs, utdh[k], inp, s);
    }
  }
  return loss * inv;
}

/** Mean cross-entropy over a whole dataset (no gradients). */
export function meanLoss(p: Mlp, ds: Dataset): number {
  const inp = inputsOf(ds, p.inputs);
  const h = new Float64Array(p.hidden);
  const logits = new Float64Array(p.outputs);
  let loss = 0;
  for (let s = 0; s < ds.n; s++) {
    hiddenOf(p, inp, s, h);
    logitsOf(p, h, logits);
    loss += softmaxGrad(logits, ds.y[s], 1);
  }
  return loss / ds.n;
}

/** Index of the largest logit. */
export function argmax(logits: Float64Array): number {
  let best = 0;
  for (let k = 1; k < logits.length; k++) if (logits[k] > logits[best]) best = k;
  return best;
}

/** Fraction of `ds` classified correctly. */
export function accuracy(p: Mlp, ds: Dataset): number {
  const inp = inputsOf(ds, p.inputs);
  const h = new Float64Array(p.hidden);
  const logits = new Float64Array(p.outputs);
  let right = 0;
  for (let s = 0; s < ds.n; s++) {
    hiddenOf(p, inp, s, h);
    logitsOf(p, h, logits);
    if (argmax(logits) === ds.y[s]) right++;
  }
  return right / ds.n;
}
