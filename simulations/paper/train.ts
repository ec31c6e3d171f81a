/**
 * Adam over a set of trainable tensors, and the three ways of training the
 * MLP used here: every weight, the last layer only, or low-rank factors
 * (ΔW = U·V per layer, plus optional bias deltas) on a frozen base.
 */
import { mulberry32 } from '../../util/random.ts';
import { shuffled, type Dataset } from './data.ts';
import { axpyInput, cloneMlp, dotInput, inputsOf, logitsOf, lossAndGrad, softmaxGrad, zerosLike, type Inputs, type Mlp } from './mlp.ts';

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

const preCache = new WeakMap<Mlp, WeakMap<Dataset, Float64Array>>();

/**
 * The frozen first layer's pre-activations W1·x + b1 of every sample (n×hidden),
 * cached per (model, dataset): the base stays frozen while low-rank and
 * last-layer updates train, so this part of the forward pass is computed once.
 * Callers must not change the model's w1/b1 afterwards.
 */
export function frozenPreActivations(base: Mlp, ds: Dataset): Float64Array {
  let byDs = preCache.get(base);
  if (!byDs) preCache.set(base, (byDs = new WeakMap()));
  const have = byDs.get(ds);
  if (have) return have;
  const { inputs, hidden, w1, b1 } = base;
  const inp = inputsOf(ds, inputs);
  const z = new Float64Array(ds.n * hidden);
  for (let s = 0; s < ds.n; s++) for (let j = 0; j < hidden; j++) z[s * hidden + j] = b1[j] + dotInput(w1, j * inputs, inp, s);
  byDs.set(ds, z);
  return z;
}

/** Only the last layer (w2, b2) of `model` (trained in place; w1, b1 stay frozen). */
export function lastLayerTrainable(model: Mlp): Trainable {
  const frozen = { ...model, w1: model.w1.slice(), b1: model.b1.slice() };
  const { hidden, outputs, w2 } = model;
  const gw2 = new Float32Array(w2.length);
  const gb2 = new Float32Array(outputs);
  const h = new Float64Array(hidden);
  const logits = new Float64Array(outputs);
  return {
    tensors: [model.w2, model.b2],
    step(ds, idx) {
      const z = frozenPreActivations(frozen, ds);
      gw2.fill(0);
      gb2.fill(0);
      const inv = 1 / idx.length;
      let loss = 0;
      for (let b = 0; b < idx.length; b++) {
        const s = idx[b];
        for (let j = 0; j < hidden; j++) {
          const a = z[s * hidden + j];
          h[j] = a > 0 ? a : 0;
        }
        logitsOf(model, h, logits);
        loss += softmaxGrad(logits, ds.y[s], inv);
        for (let k = 0; k < outputs; k++) {
          const d = logits[k];
          gb2[k] += d;
          const row = k * hidden;
          for (let j = 0; j < hidden; j++) gw2[row + j] += d * h[j];
        }
      }
      return { loss: loss * inv, grads: [gw2, gb2] };
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

/** The gradients of a LoRA state (aligned with its tensors) and the per-step and per-sample work buffers. */
interface LoraScratch {
  gu1: Float32Array;
  gv1: Float32Array;
  gu2: Float32Array;
  gv2: Float32Array;
  gdb1: Float32Array;
  gdb2: Float32Array;
  /** ∂L/∂W2 of the effective last layer. */
  gw2: Float64Array;
  /** The effective last layer: W2 + U2·V2 and b2 + Δb2. */
  w2e: Float64Array;
  b2e: Float64Array;
  vx: Float64Array;
  utdh: Float64Array;
  h: Float64Array;
  dh: Float64Array;
  logits: Float64Array;
}

function loraScratch(base: Mlp, state: LoraState): LoraScratch {
  const { hidden: H, outputs: O } = base;
  return {
    gu1: new Float32Array(state.u1.length),
    gv1: new Float32Array(state.v1.length),
    gu2: new Float32Array(state.u2.length),
    gv2: new Float32Array(state.v2.length),
    gdb1: new Float32Array(state.db1.length),
    gdb2: new Float32Array(state.db2.length),
    gw2: new Float64Array(O * H),
    w2e: new Float64Array(O * H),
    b2e: new Float64Array(O),
    vx: new Float64Array(state.config.r1),
    utdh: new Float64Array(state.config.r1),
    h: new Float64Array(H),
    dh: new Float64Array(H),
    logits: new Float64Array(O),
  };
}

/** W2 + U2·V2 and b2 + Δb2 into the scratch, once per step. */
function effectiveLastLayer(base: Mlp, state: LoraState, x: LoraScratch): void {
  const { hidden: H, outputs: O } = base;
  const { u2, v2, db2 } = state;
  const r2 = state.config.r2;
  for (let i = 0; i < O * H; i++) x.w2e[i] = base.w2[i];
  if (r2 > 0) {
    for (let i = 0; i < O; i++)
      for (let k = 0; k < r2; k++) {
        const a = u2[i * r2 + k];
        for (let j = 0; j < H; j++) x.w2e[i * H + j] += a * v2[k * H + j];
      }
  }
  for (let k = 0; k < O; k++) x.b2e[k] = base.b2[k] + (state.config.b2 ? db2[k] : 0);
}

/**
 * One sample's forward pass from its precomputed W1·x + b1 (`z0`, row `s`) and
 * backward pass: adds its gradients (scaled by `inv`) into the scratch, returns its loss.
 */
function loraSample(base: Mlp, state: LoraState, x: LoraScratch, z0: ArrayLike<number>, inp: Inputs, y: number, s: number, inv: number): number {
  const c = state.config;
  const { hidden: H, inputs: I, outputs: O } = base;
  const r1 = c.r1;
  const { u1, v1, db1 } = state;
  const { vx, h, dh, logits, w2e, b2e, gw2, utdh } = x;
  for (let k = 0; k < r1; k++) vx[k] = dotInput(v1, k * I, inp, s);
  for (let j = 0; j < H; j++) {
    let a = z0[s * H + j];
    for (let k = 0; k < r1; k++) a += u1[j * r1 + k] * vx[k];
    if (c.b1) a += db1[j];
    h[j] = a > 0 ? a : 0;
  }
  for (let k = 0; k < O; k++) {
    let a = b2e[k];
    for (let j = 0; j < H; j++) a += w2e[k * H + j] * h[j];
    logits[k] = a;
  }
  const loss = softmaxGrad(logits, y, inv);
  dh.fill(0);
  for (let k = 0; k < O; k++) {
    const d = logits[k];
    if (c.b2) x.gdb2[k] += d;
    const row = k * H;
    for (let j = 0; j < H; j++) {
      gw2[row + j] += d * h[j];
      dh[j] += d * w2e[row + j];
    }
  }
  for (let j = 0; j < H; j++) if (h[j] <= 0) dh[j] = 0;
  if (c.b1) for (let j = 0; j < H; j++) x.gdb1[j] += dh[j];
  if (r1 > 0) {
    utdh.fill(0);
    for (let j = 0; j < H; j++) {
      const d = dh[j];
      if (d === 0) continue;
      for (let k = 0; k < r1; k++) {
        x.gu1[j * r1 + k] += d * vx[k];
        utdh[k] += u1[j * r1 + k] * d;
      }
    }
    for (let k = 0; k < r1; k++) if (utdh[k] !== 0) axpyInput(x.gv1, k * I, utdh[k], inp, s);
  }
  return loss;
}

/** ∂L/∂U2 = G·V2ᵀ, ∂L/∂V2 = U2ᵀ·G with G = ∂L/∂W2, once per step. */
function lastLayerFactorGrads(base: Mlp, state: LoraState, x: LoraScratch): void {
  const { hidden: H, outputs: O } = base;
  const { u2, v2 } = state;
  const r2 = state.config.r2;
  for (let i = 0; i < O; i++) {
    for (let k = 0; k < r2; k++) {
      let a = 0;
      for (let j = 0; j < H; j++) a += x.gw2[i * H + j] * v2[k * H + j];
      x.gu2[i * r2 + k] = a;
      const uik = u2[i * r2 + k];
      for (let j = 0; j < H; j++) x.gv2[k * H + j] += uik * x.gw2[i * H + j];
    }
  }
}

/**
 * The factors and bias deltas of `state` on the frozen `base`. The forward
 * pass is (W1 + U1·V1)·x + b1 + Δb1 = [W1·x + b1] + U1·(V1·x) + Δb1 with the
 * bracket precomputed once per dataset, and W2 + U2·V2 formed once per step:
 * the same function as the merged model, at a cost that grows with the rank.
 */
export function loraTrainable(base: Mlp, state: LoraState): Trainable {
  const c = state.config;
  const x = loraScratch(base, state);
  const tensors: Float32Array[] = [];
  const grads: Float32Array[] = [];
  const add = (t: Float32Array[], g: Float32Array[]): void => {
    tensors.push(...t);
    grads.push(...g);
  };
  if (c.r1 > 0) add([state.u1, state.v1], [x.gu1, x.gv1]);
  if (c.r2 > 0) add([state.u2, state.v2], [x.gu2, x.gv2]);
  if (c.b1) add([state.db1], [x.gdb1]);
  if (c.b2) add([state.db2], [x.gdb2]);
  return {
    tensors,
    step(ds, idx) {
      const z0 = frozenPreActivations(base, ds);
      const inp = inputsOf(ds, base.inputs);
      effectiveLastLayer(base, state, x);
      for (const g of grads) g.fill(0);
      x.gw2.fill(0);
      const inv = 1 / idx.length;
      let loss = 0;
      for (let b = 0; b < idx.length; b++) loss += loraSample(base, state, x, z0, inp, ds.y[idx[b]], idx[b], inv);
      if (c.r2 > 0) lastLayerFactorGrads(base, state, x);
      return { loss: loss * inv, grads };
    },
  };
}
