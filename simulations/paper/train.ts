/**
 * Adam over a set of trainable tensors, and the three ways of training the
 * MLP used here: every weight, the last layer only, or low-rank factors
 * (ΔW = U·V per layer, plus optional bias deltas) on a frozen base.
 */
import { mulberry32 } from '../../util/random.ts';
import { shuffled, type Dataset } from './data.ts';
import { cloneMlp, lossAndGrad, zerosLike, type Mlp, type W1Factors } from './mlp.ts';

export interface Trainable {
  tensors: Float32Array[];
  /** Mean loss over the samples `idx` and its gradients, aligned with `tensors`. */
  step(ds: Dataset, idx: ArrayLike<number>): { loss: number; grads: Float32Array[] };
}

export interface TrainOptions {
  epochs: number;
  batch: number;
  lr: number;
  seed: number;
  /** Cosine-decay the learning rate to lr·lrFloor by the last step (default: constant). */
  lrFloor?: number;
}

/** Minibatch Adam (β1 0.9, β2 0.999); returns the mean loss of each epoch. */
export function train(t: Trainable, ds: Dataset, o: TrainOptions): number[] {
  const rand = mulberry32(o.seed);
  const m = t.tensors.map((a) => new Float32Array(a.length));
  const v = t.tensors.map((a) => new Float32Array(a.length));
  const b1 = 0.9;
  const b2 = 0.999;
  const eps = 1e-8;
  let step = 0;
  const total = o.epochs * Math.ceil(ds.n / o.batch);
  const floor = o.lrFloor ?? 1;
  const losses: number[] = [];
  for (let e = 0; e < o.epochs; e++) {
    const order = shuffled(ds.n, rand);
    let sum = 0;
    let batches = 0;
    for (let at = 0; at < ds.n; at += o.batch) {
      const idx = order.subarray(at, Math.min(ds.n, at + o.batch));
      const { loss, grads } = t.step(ds, idx);
      sum += loss;
      batches++;
      step++;
      const c1 = 1 / (1 - b1 ** step);
      const c2 = 1 / (1 - b2 ** step);
      const lr = o.lr * (floor + (1 - floor) * 0.5 * (1 + Math.cos((Math.PI * (step - 1)) / total)));
      for (let ti = 0; ti < t.tensors.length; ti++) {
        const w = t.tensors[ti];
        const g = grads[ti];
        const mt = m[ti];
        const vt = v[ti];
        for (let i = 0; i < w.length; i++) {
          const gi = g[i];
          mt[i] = b1 * mt[i] + (1 - b1) * gi;
          vt[i] = b2 * vt[i] + (1 - b2) * gi * gi;
          w[i] -= (lr * mt[i] * c1) / (Math.sqrt(vt[i] * c2) + eps);
        }
      }
    }
    losses.push(sum / batches);
  }
  return losses;
}

/** Every weight and bias of `model` (trained in place). */
export function fullTrainable(model: Mlp): Trainable {
  const g = zerosLike(model);
  return {
    tensors: [model.w1, model.b1, model.w2, model.b2],
    step(ds, idx) {
      const loss = lossAndGrad(model, ds, idx, g);
      return { loss, grads: [g.w1, g.b1, g.w2, g.b2] };
    },
  };
}

/** Only the last layer (w2, b2) of `model` (trained in place). */
export function lastLayerTrainable(model: Mlp): Trainable {
  const g = zerosLike(model);
  return {
    tensors: [model.w2, model.b2],
    step(ds, idx) {
      const loss = lossAndGrad(model, ds, idx, g, { w1: false });
      return { loss, grads: [g.w2, g.b2] };
    },
  };
}

/** Which parts a low-rank update trains: ranks of ΔW1 and ΔW2, and the bias deltas. */
export interface LoraConfig {
  r1: number;
  r2: number;
  b1: boolean;
  b2: boolean;
}

export interface LoraState {
  config: LoraConfig;
  /** hidden×r1 and r1×inputs. */
  u1: Float32Array;
  v1: Float32Array;
  /** outputs×r2 and r2×hidden. */
  u2: Float32Array;
  v2: Float32Array;
  db1: Float32Array;
  db2: Float32Array;
}

/** A · B for row-major a (m×r) and b (r×n), added into `out` (m×n). */
export function addProduct(out: Float32Array, a: ArrayLike<number>, b: ArrayLike<number>, m: number, r: number, n: number): void {
  for (let i = 0; i < m; i++) {
    for (let k = 0; k < r; k++) {
      const aik = a[i * r + k];
      if (aik === 0) continue;
      const row = k * n;
      const at = i * n;
      for (let j = 0; j < n; j++) out[at + j] += aik * b[row + j];
    }
  }
}

/** base + the low-rank update, as a dense model. */
export function mergeLora(base: Mlp, s: LoraState): Mlp {
  const p = cloneMlp(base);
  const c = s.config;
  if (c.r1 > 0) addProduct(p.w1, s.u1, s.v1, base.hidden, c.r1, base.inputs);
  if (c.r2 > 0) addProduct(p.w2, s.u2, s.v2, base.outputs, c.r2, base.hidden);
  if (c.b1) for (let j = 0; j < p.b1.length; j++) p.b1[j] += s.db1[j];
  if (c.b2) for (let k = 0; k < p.b2.length; k++) p.b2[k] += s.db2[k];
  return p;
}

/** LoRA-style init: V uniform with rows of about unit norm, U zero (so ΔW starts at 0). */
export function initLora(base: Mlp, config: LoraConfig, rand: () => number): LoraState {
  const fill = (count: number, fanIn: number): Float32Array => {
    const a = new Float32Array(count);
    const lim = Math.sqrt(3 / fanIn);
    for (let i = 0; i < count; i++) a[i] = (rand() * 2 - 1) * lim;
    return a;
  };
  return {
    config,
    u1: new Float32Array(base.hidden * config.r1),
    v1: fill(config.r1 * base.inputs, base.inputs),
    u2: new Float32Array(base.outputs * config.r2),
    v2: fill(config.r2 * base.hidden, base.hidden),
    db1: new Float32Array(config.b1 ? base.hidden : 0),
    db2: new Float32Array(config.b2 ? base.outputs : 0),
  };
}

/** The factors and bias deltas of `state` on the frozen `base`. */
export function loraTrainable(base: Mlp, state: LoraState): Trainable {
  const c = state.config;
  const eff = cloneMlp(base);
  const g = zerosLike(base);
  const f1: W1Factors | undefined = c.r1 > 0
    ? { rank: c.r1, u: state.u1, v: state.v1, gu: new Float32Array(state.u1.length), gv: new Float32Array(state.v1.length) }
    : undefined;
  const gu2 = new Float32Array(state.u2.length);
  const gv2 = new Float32Array(state.v2.length);
  const tensors: Float32Array[] = [];
  if (c.r1 > 0) tensors.push(state.u1, state.v1);
  if (c.r2 > 0) tensors.push(state.u2, state.v2);
  if (c.b1) tensors.push(state.db1);
  if (c.b2) tensors.push(state.db2);
  const { hidden, inputs, outputs } = base;
  return {
    tensors,
    step(ds, idx) {
      const merged = mergeLora(base, state);
      eff.w1.set(merged.w1);
      eff.b1.set(merged.b1);
      eff.w2.set(merged.w2);
      eff.b2.set(merged.b2);
      const loss = lossAndGrad(eff, ds, idx, g, { w1: false, w1Factors: f1 });
      const grads: Float32Array[] = [];
      if (f1) grads.push(f1.gu, f1.gv);
      if (c.r2 > 0) {
        const r = c.r2;
        // ∂L/∂U2 = G·V2ᵀ, ∂L/∂V2 = U2ᵀ·G with G = ∂L/∂W2.
        gu2.fill(0);
        gv2.fill(0);
        for (let i = 0; i < outputs; i++) {
          for (let k = 0; k < r; k++) {
            let a = 0;
            for (let j = 0; j < hidden; j++) a += g.w2[i * hidden + j] * state.v2[k * hidden + j];
            gu2[i * r + k] = a;
            const uik = state.u2[i * r + k];
            for (let j = 0; j < hidden; j++) gv2[k * hidden + j] += uik * g.w2[i * hidden + j];
          }
        }
        grads.push(gu2, gv2);
      }
      if (c.b1) grads.push(g.b1);
      if (c.b2) grads.push(g.b2);
      void inputs;
      return { loss, grads };
    },
  };
}
