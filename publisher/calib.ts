/**
 * Calibration statistics for activation-aware builds (docs/compression.md, "Calibration").
 * A STATS.safetensors file holds, per weight tensor (same name), the Gram matrix of that
 * layer's inputs, G = XᵀX / N (F32 or F64, shape [n, n], n = the weight's columns: in_features,
 * or in·kh·kw for a conv kernel on unfolded patches), or only its diagonal (shape [n]).
 * The output error of a weight error E (m×n) on those inputs is tr(E·G·Eᵀ) = ‖E·L‖²_F with
 * G = L·Lᵀ (Cholesky). G is damped by 1 % of its mean diagonal so that L is invertible.
 */
import { decodeValues } from '../protocol/dtypes.ts';
import type { TensorInfo } from '../protocol/safetensors.ts';
import { ModelFile } from '../util/model-file.ts';
import { BuildError } from './build-error.ts';

/** How errors in a tensor's columns are weighted: not at all, by a diagonal, or by a full Gram matrix. */
export type Metric = ({ kind: 'none'; n: number } | { kind: 'diag'; n: number; d: Float64Array; sqrtD: Float64Array } | { kind: 'full'; n: number; l: Float64Array }) & {
  /** Optional weights of the output units (rows), o_i > 0: the error is Σ_i o_i · (E_i·G·E_iᵀ). */
  rows?: Float64Array;
  /** Output matching (publisher/refit.ts): the undamped Gram G = X_bᵀX_b/N, the cross Gram C = X_bᵀX_t/N and the target's T = X_tᵀX_t/N, n×n each. */
  match?: Match;
  /** Sequential re-fit (publisher/sequential.ts): this weight's inputs are act(upstream·x + bias) on the calibration samples x. */
  chain?: Chain;
};

/** `<weight>:upstream` metadata (`relu(fc1.weight)` or `fc1.weight`) and `<upstream>:inputs` [N, in]: the samples the upstream layer saw. */
export interface Chain {
  upstream: string;
  activation: Activation;
  /** The N calibration inputs of the upstream layer, row-major N×in. */
  inputs: Float64Array;
  samples: number;
}

export type Activation = 'relu' | 'identity';

export interface Match {
  g: Float64Array;
  cross: Float64Array;
  target: Float64Array;
  /** Optional mean inputs, μ_b = mean of X_b and μ_t = mean of X_t [n]: the bias is then re-fitted too. */
  means?: { base: Float64Array; target: Float64Array };
}

export const DAMPING = 0.01;

/** A calibration tensor `<weight>:outputs` [m] weighs the weight's output units (rows). */
export const OUTPUTS_SUFFIX = ':outputs';
/** `<weight>:cross` [n, n] = X_bᵀX_t / N and `<weight>:target` [n, n] = X_tᵀX_t / N: the layer's inputs in the base and the target on the same samples (output matching). */
export const CROSS_SUFFIX = ':cross';
export const TARGET_SUFFIX = ':target';
/** `<weight>:base-mean` and `<weight>:target-mean` [n]: the mean of X_b and of X_t (optional, both or neither). */
export const BASE_MEAN_SUFFIX = ':base-mean';
export const TARGET_MEAN_SUFFIX = ':target-mean';
/** `<weight>:inputs` [N, in]: the calibration samples a layer saw (the upstream of a chain); `<weight>:upstream` (metadata) names that layer and the activation in between. */
export const INPUTS_SUFFIX = ':inputs';
export const UPSTREAM_SUFFIX = ':upstream';

/** Lower-triangular L (row-major n×n) with L·Lᵀ = g; throws if g is not positive definite. */
export function cholesky(g: Float64Array, n: number): Float64Array {
  const l = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let s = g[j * n + j];
    for (let k = 0; k < j; k++) s -= l[j * n + k] * l[j * n + k];
    if (!(s > 0)) throw new RangeError(`not positive definite at ${j}`);
    const d = Math.sqrt(s);
    l[j * n + j] = d;
    for (let i = j + 1; i < n; i++) {
      let t = g[i * n + j];
      for (let k = 0; k < j; k++) t -= l[i * n + k] * l[j * n + k];
      l[i * n + j] = t / d;
    }
  }
  return l;
}

/** A metric from a Gram matrix (n×n) or its diagonal (n), damped. */
export function metricOf(values: Float64Array, n: number, full: boolean, name: string): Metric {
  const diag = full ? Float64Array.from({ length: n }, (_, j) => values[j * n + j]) : values;
  let mean = 0;
  for (let j = 0; j < n; j++) {
    if (!Number.isFinite(diag[j]) || diag[j] < 0) throw new BuildError('bad-calibration', `calibration ${name}: diagonal entry ${j} is ${diag[j]} (a Gram matrix has a finite, non-negative diagonal)`);
    mean += diag[j] / n;
  }
  if (!(mean > 0)) return { kind: 'none', n };
  const lambda = DAMPING * mean;
  if (!full) {
    const d = Float64Array.from(diag, (x) => x + lambda);
    return { kind: 'diag', n, d, sqrtD: Float64Array.from(d, Math.sqrt) };
  }
  const g = Float64Array.from(values);
  for (let j = 0; j < n; j++) g[j * n + j] += lambda;
  try {
    return { kind: 'full', n, l: cholesky(g, n) };
  } catch {
    throw new BuildError('bad-calibration', `calibration ${name}: the Gram matrix is not symmetric positive semi-definite`);
  }
}

/** Y = A·L for an m×n row-major A (the whitened delta; ‖Y‖² is the output error of A). */
export function whiten(a: Float64Array, m: number, metric: Metric): Float64Array {
  const n = metric.n;
  if (metric.kind === 'none') return a;
  const y = new Float64Array(m * n);
  if (metric.kind === 'diag') {
    for (let e = 0; e < y.length; e++) y[e] = a[e] * metric.sqrtD[e % n];
    return y;
  }
  const l = metric.l;
  for (let i = 0; i < m; i++) {
    const row = i * n;
    for (let k = 0; k < n; k++) {
      const aik = a[row + k];
      if (aik === 0) continue;
      const lk = k * n;
      for (let j = 0; j <= k; j++) y[row + j] += aik * l[lk + j];
    }
  }
  return y;
}

/** The weight of row i (1 without output weights). */
export function rowWeight(metric: Metric, i: number): number {
  return metric.rows ? metric.rows[i] : 1;
}

/** diag(√o)·A·L: the delta in the metric's own coordinates (‖·‖² is the weighted output error). */
export function weighted(a: Float64Array, m: number, metric: Metric): Float64Array {
  const y = whiten(a, m, metric);
  if (!metric.rows) return y;
  const out = y === a ? Float64Array.from(a) : y;
  const n = metric.n;
  for (let i = 0; i < m; i++) {
    const r = Math.sqrt(metric.rows[i]);
    for (let j = 0; j < n; j++) out[i * n + j] *= r;
  }
  return out;
}

/** x with x·L = y (one row of length n): back in weight space. */
export function unwhitenRow(y: Float64Array, metric: Metric): Float64Array {
  const n = metric.n;
  if (metric.kind === 'none') return Float64Array.from(y);
  if (metric.kind === 'diag') return Float64Array.from(y, (v, j) => v / metric.sqrtD[j]);
  const l = metric.l;
  const x = new Float64Array(n);
  for (let j = n - 1; j >= 0; j--) {
    let s = y[j];
    for (let i = j + 1; i < n; i++) s -= x[i] * l[i * n + j];
    x[j] = s / l[j * n + j];
  }
  return x;
}

/** Read a calibration file: per weight name, its metric; checks every entry against the model's tensor. */
export async function loadCalibration(file: string, shapes: Map<string, readonly number[]>): Promise<Map<string, Metric>> {
  const m = await ModelFile.open(file).catch((e: unknown) => {
    throw new BuildError('bad-calibration', `calibration file ${file}: ${(e as Error).message}`);
  });
  try {
    const out = new Map<string, Metric>();
    const rows = new Map<string, Float64Array>();
    const grams = new Map<string, Float64Array>();
    const pairs = new Map<string, { cross?: Float64Array; target?: Float64Array; baseMean?: Float64Array; targetMean?: Float64Array }>();
    const inputs = new Map<string, { values: Float64Array; samples: number }>();
    for (const t of m.tensors) {
      if (t.name.endsWith(INPUTS_SUFFIX)) {
        inputs.set(t.name.slice(0, -INPUTS_SUFFIX.length), await readInputs(m, t, shapes));
        continue;
      }
      const suffix = [CROSS_SUFFIX, TARGET_SUFFIX, BASE_MEAN_SUFFIX, TARGET_MEAN_SUFFIX].find((x) => t.name.endsWith(x));
      if (suffix) {
        const name = t.name.slice(0, -suffix.length);
        const square = suffix === CROSS_SUFFIX || suffix === TARGET_SUFFIX;
        const values = await readStat(m, t, name, shapes, square);
        const p = pairs.get(name) ?? {};
        p[suffix === CROSS_SUFFIX ? 'cross' : suffix === TARGET_SUFFIX ? 'target' : suffix === BASE_MEAN_SUFFIX ? 'baseMean' : 'targetMean'] = values;
        pairs.set(name, p);
        continue;
      }
      if (t.name.endsWith(OUTPUTS_SUFFIX)) {
        const name = t.name.slice(0, -OUTPUTS_SUFFIX.length);
        const shape = shapes.get(name);
        if (!shape || shape.length < 2) throw new BuildError('bad-calibration', `calibration ${t.name}: the model has no matrix ${name}`);
        if (t.shape.length !== 1 || t.shape[0] !== shape[0] || (t.dtype !== 'F32' && t.dtype !== 'F64')) {
          throw new BuildError('bad-calibration', `calibration ${t.name}: expected F32 or F64 of shape [${shape[0]}] (one weight per output of ${name}), got ${t.dtype} [${t.shape.join(',')}]`);
        }
        const o = Float64Array.from(decodeValues(await m.read(t), t.dtype));
        let mean = 0;
        for (let i = 0; i < o.length; i++) {
          if (!Number.isFinite(o[i]) || o[i] < 0) throw new BuildError('bad-calibration', `calibration ${t.name}: entry ${i} is ${o[i]} (output weights are finite and non-negative)`);
          mean += o[i] / o.length;
        }
        if (mean > 0)
          rows.set(
            name,
            Float64Array.from(o, (x) => x + DAMPING * mean),
          );
        continue;
      }
      const shape = shapes.get(t.name);
      if (!shape) throw new BuildError('bad-calibration', `calibration ${t.name}: the model has no such tensor (names must be the weight tensors' names)`);
      if (shape.length < 2) throw new BuildError('bad-calibration', `calibration ${t.name}: the tensor is not a matrix (shape [${shape.join(',')}])`);
      const n = shape.slice(1).reduce((a, b) => a * b, 1);
      const full = t.shape.length === 2 && t.shape[0] === n && t.shape[1] === n;
      if (!full && !(t.shape.length === 1 && t.shape[0] === n)) {
        throw new BuildError('bad-calibration', `calibration ${t.name}: shape [${t.shape.join(',')}], expected [${n}, ${n}] (the Gram matrix) or [${n}] (its diagonal)`);
      }
      if (t.dtype !== 'F32' && t.dtype !== 'F64') throw new BuildError('bad-calibration', `calibration ${t.name}: dtype ${t.dtype}, expected F32 or F64`);
      const values = Float64Array.from(decodeValues(await m.read(t), t.dtype));
      out.set(t.name, metricOf(values, n, full, t.name));
      if (full) grams.set(t.name, values);
    }
    for (const [name, p] of pairs) {
      const g = grams.get(name);
      const metric = out.get(name);
      if (!p.cross || !p.target || !g || metric?.kind !== 'full') {
        throw new BuildError('bad-calibration', `calibration ${name}: output matching needs ${name} (the full Gram matrix), ${name}${CROSS_SUFFIX} and ${name}${TARGET_SUFFIX} together`);
      }
      if (!p.baseMean !== !p.targetMean) throw new BuildError('bad-calibration', `calibration ${name}: give ${name}${BASE_MEAN_SUFFIX} and ${name}${TARGET_MEAN_SUFFIX} together, or neither`);
      metric.match = { g, cross: p.cross, target: p.target, ...(p.baseMean && p.targetMean ? { means: { base: p.baseMean, target: p.targetMean } } : {}) };
    }
    for (const [name, chain] of chainsOf(m.header.metadata, inputs, shapes)) extend(out, name, shapes, { chain });
    for (const [name, o] of rows) extend(out, name, shapes, { rows: o });
    return out;
  } finally {
    await m.close();
  }
}

/** Add to the metric of `name` (uniform when it has none). */
function extend(out: Map<string, Metric>, name: string, shapes: Map<string, readonly number[]>, more: Pick<Metric, 'rows' | 'chain'>): void {
  const n = shapes
    .get(name)!
    .slice(1)
    .reduce((a, b) => a * b, 1);
  out.set(name, { ...(out.get(name) ?? { kind: 'none', n }), ...more });
}

/** A `:cross` or `:target` entry (F32/F64 [n, n]) or a mean (F32/F64 [n]) for a matrix `name` of the model, finite. */
async function readStat(m: ModelFile, t: TensorInfo, name: string, shapes: Map<string, readonly number[]>, square: boolean): Promise<Float64Array> {
  const shape = shapes.get(name);
  if (!shape || shape.length < 2) throw new BuildError('bad-calibration', `calibration ${t.name}: the model has no matrix ${name}`);
  const n = shape.slice(1).reduce((a, b) => a * b, 1);
  const want = square ? [n, n] : [n];
  if (t.shape.join(',') !== want.join(',') || (t.dtype !== 'F32' && t.dtype !== 'F64')) {
    throw new BuildError('bad-calibration', `calibration ${t.name}: expected F32 or F64 of shape [${want.join(', ')}], got ${t.dtype} [${t.shape.join(',')}]`);
  }
  const v = Float64Array.from(decodeValues(await m.read(t), t.dtype));
  for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i])) throw new BuildError('bad-calibration', `calibration ${t.name}: entry ${i} is ${v[i]}`);
  return v;
}

/** `<upstream>:inputs`: F32/F64 [N, in] for a matrix of the model (in its columns), N ≥ 1, finite. */
async function readInputs(m: ModelFile, t: TensorInfo, shapes: Map<string, readonly number[]>): Promise<{ values: Float64Array; samples: number }> {
  const name = t.name.slice(0, -INPUTS_SUFFIX.length);
  const shape = shapes.get(name);
  if (!shape || shape.length < 2) throw new BuildError('bad-calibration', `calibration ${t.name}: the model has no matrix ${name}`);
  const n = shape.slice(1).reduce((a, b) => a * b, 1);
  if (t.shape.length !== 2 || t.shape[1] !== n || t.shape[0] < 1 || (t.dtype !== 'F32' && t.dtype !== 'F64')) {
    throw new BuildError('bad-calibration', `calibration ${t.name}: expected F32 or F64 of shape [N, ${n}] (N calibration inputs of ${name}), got ${t.dtype} [${t.shape.join(',')}]`);
  }
  const values = Float64Array.from(decodeValues(await m.read(t), t.dtype));
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) throw new BuildError('bad-calibration', `calibration ${t.name}: entry ${i} is ${values[i]}`);
  return { values, samples: t.shape[0] };
}

/** The `<weight>:upstream` metadata entries, each checked against the model and the `:inputs` tensors (at most one chain; every `:inputs` used). */
function chainsOf(metadata: Record<string, string>, inputs: Map<string, { values: Float64Array; samples: number }>, shapes: Map<string, readonly number[]>): Map<string, Chain> {
  const out = new Map<string, Chain>();
  for (const [key, value] of Object.entries(metadata)) {
    if (!key.endsWith(UPSTREAM_SUFFIX)) continue;
    const name = key.slice(0, -UPSTREAM_SUFFIX.length);
    const relu = /^relu\((.+)\)$/.exec(value);
    const upstream = relu ? relu[1] : value;
    const shape = shapes.get(name);
    const up = shapes.get(upstream);
    if (!shape || shape.length !== 2) throw new BuildError('bad-calibration', `calibration metadata ${key}: the model has no 2-D weight ${name}`);
    if (!up || up.length !== 2) throw new BuildError('bad-calibration', `calibration metadata ${key} = ${JSON.stringify(value)}: expected relu(<weight>) or <weight>, a 2-D weight of the model`);
    if (up[0] !== shape[1]) throw new BuildError('bad-calibration', `calibration metadata ${key}: ${upstream} has ${up[0]} outputs but ${name} takes ${shape[1]} inputs`);
    const x = inputs.get(upstream);
    if (!x) throw new BuildError('bad-calibration', `calibration metadata ${key}: the file has no ${upstream}${INPUTS_SUFFIX} (the calibration inputs of ${upstream}, shape [N, ${up[1]}])`);
    out.set(name, { upstream, activation: relu ? 'relu' : 'identity', inputs: x.values, samples: x.samples });
  }
  if (out.size > 1) throw new BuildError('bad-calibration', `calibration metadata: ${out.size} ${UPSTREAM_SUFFIX} chains (${[...out.keys()].join(', ')}); one per build is supported`);
  for (const name of inputs.keys()) {
    if (![...out.values()].some((c) => c.upstream === name)) throw new BuildError('bad-calibration', `calibration ${name}${INPUTS_SUFFIX}: no <weight>${UPSTREAM_SUFFIX} metadata names ${name} as its upstream`);
  }
  return out;
}
