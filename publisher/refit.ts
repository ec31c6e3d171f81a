/**
 * Output matching (docs/compression.md, "Re-fitting layers to the target's outputs"): for a
 * weight whose calibration has the cross statistics (`:cross`, `:target`), the delta that
 * makes the layer, fed the base model's own upstream activations X_b, give the target's
 * outputs X_t·W_tᵀ as closely as possible:
 *
 *   Δ* = argmin_Δ ‖X_b·(W_b + Δ)ᵀ − X_t·W_tᵀ‖² + λ‖Δ‖²,  i.e. (G + λI)·Δ*_iᵀ = C·w_t,i − G·w_b,i
 *
 * per row i (G = X_bᵀX_b/N, C = X_bᵀX_t/N, λ the calibration's damping). This is what
 * retraining only that layer exploits: it is re-fitted to what the target outputs, not to the
 * target's weights (which expect the target's upstream). The output error of any Δ̂ is then
 * about ‖(Δ̂ − Δ*)·L‖² + R with R the error left at Δ* (computable from T = X_tᵀX_t/N), so the allocation of publisher/rd.ts compresses Δ* in the usual metric.
 * Only the re-fitted layers (and their biases) change in such a plan: layers upstream of
 * them stay the base's, which is what Δ* assumes.
 */
import { decodeValues } from '../protocol/dtypes.ts';
import { cholesky, DAMPING, rowWeight, type Match, type Metric } from './calib.ts';
import type { ChangedTensor, DeltaSource } from './delta-source.ts';

/** x with (L·Lᵀ)·x = r (L lower-triangular, row-major n×n). */
export function cholSolve(l: Float64Array, n: number, r: Float64Array): Float64Array {
  const u = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = r[i];
    for (let k = 0; k < i; k++) s -= l[i * n + k] * u[k];
    u[i] = s / l[i * n + i];
  }
  const x = new Float64Array(n);
  for (let i = n - 1; i >= 0; i--) {
    let s = u[i];
    for (let k = i + 1; k < n; k++) s -= l[k * n + i] * x[k];
    x[i] = s / l[i * n + i];
  }
  return x;
}

/** M·v for a row-major n×n M. */
function mulVec(a: Float64Array, v: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < n; j++) s += a[i * n + j] * v[j];
    out[i] = s;
  }
  return out;
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/**
 * Δ* for an m×n weight (rows w_b = base, w_t = base + delta) and R, the weighted output error
 * left at Δ̂ = Δ*: Σ_i o_i·‖X_b·(w_b + Δ*_i) − X_t·w_t‖²/N, from G, C and T.
 */
export function refitDelta(wb: Float64Array, delta: Float64Array, m: number, metric: Metric, bias?: Float64Array): { delta: Float64Array; residual: number; bias?: Float64Array } {
  const n = metric.n;
  if (metric.kind !== 'full' || !metric.match) throw new RangeError('refitDelta needs a full metric with cross statistics');
  const means = bias ? metric.match.means : undefined;
  // With the inputs' means and the bias delta, the bias is re-fitted too: the weight from the centred statistics, the bias from the means.
  const { g, cross, target } = means ? centred(metric.match, means, n) : metric.match;
  const l = means ? cholesky(damped(g, n, metric.match.g), n) : metric.l;
  const out = new Float64Array(m * n);
  const outBias = means ? new Float64Array(m) : undefined;
  let residual = 0;
  for (let i = 0; i < m; i++) {
    const b = wb.subarray(i * n, (i + 1) * n);
    const t = Float64Array.from(b, (x, j) => x + delta[i * n + j]);
    const gb = mulVec(g, b, n);
    const ct = mulVec(cross, t, n);
    const r = Float64Array.from(ct, (x, j) => x - gb[j]);
    const x = cholSolve(l, n, r);
    out.set(x, i * n);
    // The output error at Δ*: (b+x)ᵀG(b+x) − 2(b+x)ᵀCt + tᵀTt = bᵀGb − 2bᵀCt + tᵀTt + xᵀGx − 2xᵀr.
    const left = dot(b, gb) - 2 * dot(b, ct) + dot(t, mulVec(target, t, n)) + dot(x, mulVec(g, x, n)) - 2 * dot(x, r);
    residual += rowWeight(metric, i) * Math.max(0, left);
    // b' = b_t + μ_tᵀw_t − μ_bᵀ(w_b + Δ*): the mean output matches.
    if (outBias && means && bias) outBias[i] = bias[i] + dot(means.target, t) - dot(means.base, b) - dot(means.base, x);
  }
  return { delta: out, residual, ...(outBias ? { bias: outBias } : {}) };
}

/** G − μ_b·μ_bᵀ, C − μ_b·μ_tᵀ, T − μ_t·μ_tᵀ: the statistics of the centred inputs. */
function centred(s: Match, means: { base: Float64Array; target: Float64Array }, n: number): { g: Float64Array; cross: Float64Array; target: Float64Array } {
  const g = new Float64Array(n * n);
  const cross = new Float64Array(n * n);
  const target = new Float64Array(n * n);
  for (let a = 0; a < n; a++) {
    for (let b = 0; b < n; b++) {
      g[a * n + b] = s.g[a * n + b] - means.base[a] * means.base[b];
      cross[a * n + b] = s.cross[a * n + b] - means.base[a] * means.target[b];
      target[a * n + b] = s.target[a * n + b] - means.target[a] * means.target[b];
    }
  }
  return { g, cross, target };
}

/** g + λI with λ the calibration's damping of the uncentred Gram `of`. */
function damped(g: Float64Array, n: number, of: Float64Array): Float64Array {
  let mean = 0;
  for (let j = 0; j < n; j++) mean += of[j * n + j] / n;
  const out = Float64Array.from(g);
  for (let j = 0; j < n; j++) out[j * n + j] += DAMPING * mean;
  return out;
}

/** The bias of a weight: the 1-D tensor of the same module (`fc2.bias` for `fc2.weight`) with one entry per row. */
export function biasOf(w: ChangedTensor, all: readonly ChangedTensor[]): ChangedTensor | undefined {
  const dot = w.info.name.lastIndexOf('.');
  const prefix = dot >= 0 ? w.info.name.slice(0, dot + 1) : '';
  return all.find((c) => c.info.shape.length === 1 && c.info.shape[0] === w.m && c.info.name.startsWith(prefix) && !c.info.name.slice(prefix.length).includes('.'));
}

/**
 * The re-fit source: only the changed weights with cross statistics (their delta Δ*) and
 * their biases (re-fitted too when the statistics hold the inputs' means, else their ΔW),
 * and R summed over them; undefined when no weight has cross statistics.
 */
export async function refitSource(src: DeltaSource, metrics: Map<string, Metric>): Promise<{ source: DeltaSource; residual: number; refitted: string[] } | undefined> {
  const weights = src.changed.filter((c) => c.info.shape.length >= 2 && metrics.get(c.info.name)?.match);
  if (weights.length === 0) return undefined;
  const deltas = new Map<string, Float64Array>();
  let residual = 0;
  const changed: ChangedTensor[] = [];
  for (const c of weights) {
    const wb = decodeValues(await src.base.read(c.info), c.info.dtype);
    const b = biasOf(c, src.changed);
    const r = refitDelta(wb, await src.delta(c), c.m, metrics.get(c.info.name)!, b ? await src.delta(b) : undefined);
    deltas.set(c.info.name, r.delta);
    residual += r.residual;
    changed.push(c);
    if (b) changed.push(b);
    if (b && r.bias) deltas.set(b.info.name, r.bias);
  }
  changed.sort((a, b) => Buffer.compare(Buffer.from(a.info.name), Buffer.from(b.info.name)));
  return {
    source: {
      base: src.base,
      changed,
      delta: async (c) => {
        const d = deltas.get(c.info.name);
        return d ? Float64Array.from(d) : src.delta(c);
      },
      close: () => src.close(),
    },
    residual,
    refitted: weights.map((c) => c.info.name),
  };
}
