/**
 * Sequential re-fit (docs/compression.md, "Sequential re-fit"): for a weight W2 whose inputs
 * are act(W1·x + b1) (`<W2>:upstream` in the calibration file) and the upstream's calibration
 * inputs x (`<W1>:inputs`, N samples), a plan that updates W1 partly — its own compressed
 * delta, Ŵ1, as the device will apply it — and re-fits W2 to the target's outputs given the
 * hidden units the UPDATED upstream gives: H_p = act(X·Ŵ1ᵀ + b1) against the target's
 * H_t = act(X·W1,tᵀ + b1,t) (publisher/refit.ts, with G = H_pᵀH_p/N, C = H_pᵀH_t/N,
 * T = H_tᵀH_t/N and the means: W2's bias re-fitted too). The output error of such a plan is
 * R_p (left at the re-fit, exactly on the samples) + the re-fitted delta's compression error,
 * in the units of the re-fit plan; the split of the budget between W1 and W2 is the one of
 * lowest error among a ladder of W1 sizes (0, the plain re-fit, to ¾ of the budget).
 * Only W1, W2 and W2's bias change in such a plan.
 */
import { decodeValues } from '../protocol/dtypes.ts';
import { encodePayload, type TensorDelta } from '../protocol/lowrank.ts';
import { applyTensor } from '../protocol/delta-apply.ts';
import { metricOf, type Activation, type Metric } from './calib.ts';
import type { ChangedTensor, DeltaSource } from './delta-source.ts';
import { PAYLOAD_OVERHEAD } from './quantize.ts';
import { allocate, analyse, encodePlan, rdDeltas, type RdOptions } from './rd.ts';
import { biasOf, refitDelta } from './refit.ts';

/**
 * The bytes tried for the upstream's own delta: 0 (the plain re-fit), then from 96 B up by
 * factors of √2 to ¾ of the budget. In bytes, not shares of the budget, so that a larger budget
 * tries every split a smaller one did (each with more bytes for the re-fitted weight).
 */
export function upstreamSpends(budget: number): number[] {
  const out = [0];
  for (let s = 96; s <= 0.75 * budget; s *= Math.SQRT2) out.push(Math.floor(s));
  return out;
}

const DIGEST = '0'.repeat(64);

/** act(X·Wᵀ + b) for N samples: N×m, row-major. */
export function layerOutputs(x: Float64Array, samples: number, w: ArrayLike<number>, m: number, n: number, b: ArrayLike<number> | undefined, act: Activation): Float64Array {
  const out = new Float64Array(samples * m);
  for (let s = 0; s < samples; s++) {
    const xs = x.subarray(s * n, (s + 1) * n);
    for (let i = 0; i < m; i++) {
      let a = b ? b[i] : 0;
      const row = i * n;
      for (let j = 0; j < n; j++) a += w[row + j] * xs[j];
      out[s * m + i] = act === 'relu' && a < 0 ? 0 : a;
    }
  }
  return out;
}

/** A·B/N for N×n A and B (row-major): n×n. */
export function crossGram(a: Float64Array, b: Float64Array, samples: number, n: number): Float64Array {
  const g = new Float64Array(n * n);
  for (let s = 0; s < samples; s++) {
    const off = s * n;
    for (let p = 0; p < n; p++) {
      const ap = a[off + p];
      if (ap === 0) continue;
      for (let q = 0; q < n; q++) g[p * n + q] += ap * b[off + q];
    }
  }
  for (let e = 0; e < g.length; e++) g[e] /= samples;
  return g;
}

function columnMeans(a: Float64Array, samples: number, n: number): Float64Array {
  const m = new Float64Array(n);
  for (let s = 0; s < samples; s++) for (let j = 0; j < n; j++) m[j] += a[s * n + j] / samples;
  return m;
}

/** The full metric with output-matching statistics (and means) of inputs H_p against the target's H_t; `rows` kept from the file's metric. */
export function matchMetric(hp: Float64Array, ht: Float64Array, samples: number, n: number, rows: Float64Array | undefined, name: string): Metric {
  const g = crossGram(hp, hp, samples, n);
  const metric = metricOf(Float64Array.from(g), n, true, name);
  if (metric.kind !== 'full') throw new RangeError(`the inputs of ${name} are all zero on the calibration samples`);
  return {
    ...metric,
    ...(rows ? { rows } : {}),
    match: { g, cross: crossGram(hp, ht, samples, n), target: crossGram(ht, ht, samples, n), means: { base: columnMeans(hp, samples, n), target: columnMeans(ht, samples, n) } },
  };
}

/** A source of only the given tensors, their deltas from `deltas` (else the source's). */
function subSource(src: DeltaSource, changed: ChangedTensor[], deltas = new Map<string, Float64Array>()): DeltaSource {
  return {
    base: src.base,
    changed,
    delta: async (c) => {
      const d = deltas.get(c.info.name);
      return d ? Float64Array.from(d) : src.delta(c);
    },
    close: async () => {},
  };
}

export interface SequentialPlan {
  deltas: TensorDelta[];
  /** Estimated output error in the units of the other plans: R_p + the compression error of W2's delta (and the bias's). */
  error: number;
  refitted: string[];
  /** Bytes of the upstream's own delta in the plan (0: the upstream left as it is). */
  upstreamBytes: number;
}

/** What the chain needs: its tensors, the target's outputs on the samples, and the exact output error of any plan. */
export interface ChainCheck {
  /** Every changed tensor is one of the chain's (W1, its bias, W2, its bias): `exact` is then the whole model's error on the samples. */
  covers: boolean;
  /** Σ_i o_i·‖y_i − y_t,i‖² / N on the calibration samples, the deltas applied as a device applies them. */
  exact(deltas: readonly TensorDelta[]): Promise<number>;
}

interface ChainParts extends ChainCheck {
  name: string;
  metric: Metric;
  w1: ChangedTensor;
  w2: ChangedTensor;
  b2?: ChangedTensor;
  /** The upstream's outputs in the target on the samples, N×m1. */
  ht: Float64Array;
  b1: { base: Float64Array; target: Float64Array } | undefined;
  /** The values of a tensor (base or with a delta applied, exactly as the device does). */
  applied(c: { info: ChangedTensor['info'] }, deltas: readonly TensorDelta[]): Promise<Float64Array>;
}

/** The chain of the calibration (undefined without one, or when its weights did not both change). */
export async function chainOf(src: DeltaSource, metrics: Map<string, Metric>): Promise<ChainParts | undefined> {
  const entry = [...metrics].find(([, m]) => m.chain);
  if (!entry) return undefined;
  const [name, metric] = entry;
  const chain = metric.chain!;
  const w2 = src.changed.find((c) => c.info.name === name);
  const w1 = src.changed.find((c) => c.info.name === chain.upstream);
  if (!w2 || !w1) return undefined;
  const b2 = biasOf(w2, src.changed);
  const b1Info = biasInfo(src, w1);
  const b1 = b1Info ? await biasValues(src, b1Info) : undefined;
  const plus = async (c: ChangedTensor): Promise<Float64Array> => {
    const base = decodeValues(await src.base.read(c.info), c.info.dtype);
    const d = await src.delta(c);
    return Float64Array.from(base, (x, i) => x + d[i]);
  };
  const { inputs, samples, activation } = chain;
  const ht = layerOutputs(inputs, samples, await plus(w1), w1.m, w1.n, b1?.target, activation);
  const yt = layerOutputs(ht, samples, await plus(w2), w2.m, w2.n, b2 ? await plus(b2) : undefined, 'identity');
  const applied = async (c: { info: ChangedTensor['info'] }, deltas: readonly TensorDelta[]): Promise<Float64Array> => {
    const bytes = await src.base.read(c.info);
    const d = deltas.find((x) => x.name === c.info.name);
    return decodeValues(d ? applyTensor(c.info, bytes, d) : bytes, c.info.dtype);
  };
  const chainNames = new Set([w1.info.name, w2.info.name, b1Info?.name, b2?.info.name]);
  return {
    name,
    metric,
    w1,
    w2,
    b2,
    ht,
    b1,
    applied,
    covers: src.changed.every((c) => chainNames.has(c.info.name)),
    async exact(deltas) {
      const h = layerOutputs(inputs, samples, await applied(w1, deltas), w1.m, w1.n, b1Info ? await applied({ info: b1Info }, deltas) : undefined, activation);
      const y = layerOutputs(h, samples, await applied(w2, deltas), w2.m, w2.n, b2 ? await applied(b2, deltas) : undefined, 'identity');
      let e = 0;
      for (let s = 0; s < samples; s++) for (let i = 0; i < w2.m; i++) e += (metric.rows ? metric.rows[i] : 1) * (y[s * w2.m + i] - yt[s * w2.m + i]) ** 2;
      return e / samples;
    },
  };
}

/** The base's 1-D bias of an upstream weight (changed or not): the tensor of the same module with one entry per row. */
function biasInfo(src: DeltaSource, w: ChangedTensor): ChangedTensor['info'] | undefined {
  const dot = w.info.name.lastIndexOf('.');
  const prefix = dot >= 0 ? w.info.name.slice(0, dot + 1) : '';
  return src.base.tensors.find((t) => t.shape.length === 1 && t.shape[0] === w.m && t.name.startsWith(prefix) && !t.name.slice(prefix.length).includes('.'));
}

async function biasValues(src: DeltaSource, info: ChangedTensor['info']): Promise<{ base: Float64Array; target: Float64Array }> {
  const base = decodeValues(await src.base.read(info), info.dtype);
  const changed = src.changed.find((c) => c.info.name === info.name);
  const d = changed ? await src.delta(changed) : undefined;
  return { base, target: d ? Float64Array.from(base, (x, i) => x + d[i]) : base };
}

/**
 * The best sequential plan within `budget` payload bytes, or undefined when there is no chain
 * or nothing fits; never over `budget`. Per upstream size, W2 is re-fitted to the updated
 * upstream's outputs (Δ*_p) or keeps its own ΔW, each compressed in the remaining bytes; the
 * candidates are compared by their exact output error on the calibration samples.
 */
export async function sequentialPlan(src: DeltaSource, budget: number, rd: RdOptions, parts?: ChainParts): Promise<SequentialPlan | undefined> {
  const c = parts ?? (await chainOf(src, rd.metrics));
  if (!c) return undefined;
  const { name, w1, w2, b2, ht, b1, metric } = c;
  const { inputs, samples, activation } = metric.chain!;
  const w2Base = await c.applied(w2, []);
  const w2Delta = await src.delta(w2);
  const b2Delta = b2 ? await src.delta(b2) : undefined;
  const up = subSource(src, [w1]);
  const upItems = await analyse(up, budget - PAYLOAD_OVERHEAD, { ...rd, onAnalysed: undefined });
  const emptySize = encodePayload({ v: 1, base: DIGEST, target: DIGEST, tensors: [] }).byteLength;
  const order = new Map(src.changed.map((t, i) => [t.info.name, i]));
  const downTensors = b2 ? [b2, w2].sort((a, b) => order.get(a.info.name)! - order.get(b.info.name)!) : [w2];
  let best: (SequentialPlan & { exact: number }) | undefined;
  const tried = new Set<number>();
  for (const spend of upstreamSpends(budget)) {
    const upDeltas = spend > 0 ? await encodePlan(await allocate(upItems, spend, up, rd), up) : [];
    if (spend > 0 && upDeltas.length === 0) continue;
    const upBytes = encodePayload({ v: 1, base: DIGEST, target: DIGEST, tensors: upDeltas }).byteLength - emptySize;
    if (tried.has(upBytes)) continue;
    tried.add(upBytes);
    const hp = layerOutputs(inputs, samples, await c.applied(w1, upDeltas), w1.m, w1.n, b1?.base, activation);
    const m2 = matchMetric(hp, ht, samples, w2.n, metric.rows, name);
    const refit = refitDelta(w2Base, w2Delta, w2.m, m2, b2Delta);
    const refitDeltas = new Map([[name, refit.delta]]);
    if (b2 && refit.bias) refitDeltas.set(b2.info.name, refit.bias);
    // W2 re-fitted to the updated upstream, or keeping its own ΔW (what the target's W2 does given the target's upstream).
    for (const [deltas, residual, refitted] of [
      [refitDeltas, refit.residual, true],
      [new Map<string, Float64Array>(), plainResidual(w2Base, w2Delta, w2.m, m2), false],
    ] as const) {
      const down = await rdDeltas(subSource(src, downTensors, deltas), budget - upBytes, { ...rd, metrics: new Map([[name, m2]]), onAnalysed: undefined });
      if (!down) continue;
      const all = [...upDeltas, ...down.deltas].sort((a, b) => order.get(a.name)! - order.get(b.name)!);
      if (encodePayload({ v: 1, base: DIGEST, target: DIGEST, tensors: all }).byteLength > budget) continue;
      const exact = await c.exact(all);
      if (!best || exact < best.exact) best = { deltas: all, error: residual + down.error, exact, refitted: refitted && all.some((d) => d.name === name) ? [name] : [], upstreamBytes: upBytes };
    }
  }
  return best && { deltas: best.deltas, error: best.error, refitted: best.refitted, upstreamBytes: best.upstreamBytes };
}

/** The output error left at W2's own ΔW given the inputs of `m2` (uncentred: the bias ships its own ΔW): Σ_i o_i·(w_tᵀ(G − 2C + T)w_t). */
function plainResidual(wb: Float64Array, delta: Float64Array, m: number, m2: Metric): number {
  const n = m2.n;
  const { g, cross, target } = m2.match!;
  let e = 0;
  for (let i = 0; i < m; i++) {
    let r = 0;
    for (let a = 0; a < n; a++) {
      const ta = wb[i * n + a] + delta[i * n + a];
      for (let b = 0; b < n; b++) r += ta * (g[a * n + b] - cross[a * n + b] - cross[b * n + a] + target[a * n + b]) * (wb[i * n + b] + delta[i * n + b]);
    }
    e += (m2.rows ? m2.rows[i] : 1) * Math.max(0, r);
  }
  return e;
}
