import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodePayload } from '../../protocol/lowrank.ts';
import { deltaValues } from '../../protocol/delta-info.ts';
import { encodeValues } from '../../protocol/dtypes.ts';
import { writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { buildUpdate } from '../../publisher/build.ts';
import { DAMPING, loadCalibration, metricOf, type Metric } from '../../publisher/calib.ts';
import { twoModelSource } from '../../publisher/delta-source.ts';
import { refitDelta } from '../../publisher/refit.ts';
import { mulberry32 } from '../../util/random.ts';
import { randomValues, writeModels } from '../support/models.ts';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-refit-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const m = 12;
const n = 40;
const N = 240;
const rand = mulberry32(31);
/** The layer's inputs in the base (X_b) and, on the same samples, in the target (X_t = X_b·diag(a): the upstream changed). */
const xb = randomValues(rand, N * n, 1);
const a = Float64Array.from({ length: n }, () => 0.5 + rand());
const xt = Float64Array.from(xb, (v, e) => v * a[e % n]);
/** Σ_s xᵀy / N. */
function gramOf(x: Float64Array, y: Float64Array): Float64Array {
  const g = new Float64Array(n * n);
  for (let s = 0; s < N; s++) for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) g[i * n + j] += (x[s * n + i] * y[s * n + j]) / N;
  return g;
}
const G = gramOf(xb, xb);
const C = gramOf(xb, xt);
const T = gramOf(xt, xt);
/** The base weight, and a target whose outputs on X_t the base upstream reaches with a rank-1 change: W_t = (W_b + u·vᵀ)·diag(1/a). */
const wb = randomValues(rand, m * n, 0.3);
const u = randomValues(rand, m, 0.2);
const v = randomValues(rand, n, 0.2);
const wt = Float64Array.from(wb, (x, e) => (x + u[Math.floor(e / n)] * v[e % n]) / a[e % n]);
const delta = Float64Array.from(wt, (x, e) => x - wb[e]);

/** ‖X_b·(W_b + Δ)ᵀ − X_t·W_tᵀ‖² / N: the layer's output error on the calibration samples, its upstream the base's. */
function outputError(d: Float64Array): number {
  let e = 0;
  for (let s = 0; s < N; s++) {
    for (let i = 0; i < m; i++) {
      let y = 0;
      for (let j = 0; j < n; j++) y += xb[s * n + j] * (wb[i * n + j] + d[i * n + j]) - xt[s * n + j] * wt[i * n + j];
      e += y * y;
    }
  }
  return e / N;
}

function fullMetric(): Metric {
  const metric = metricOf(G, n, true, 'w');
  metric.match = { g: G, cross: C, target: T };
  return metric;
}

describe('output matching (publisher/refit.ts)', () => {
  it('Δ* solves (G + λI)·Δ*_i = C·w_t,i − G·w_b,i, and R is the output error at Δ*', () => {
    const metric = fullMetric();
    const { delta: d, residual } = refitDelta(wb, delta, m, metric);
    let mean = 0;
    for (let j = 0; j < n; j++) mean += G[j * n + j] / n;
    const lambda = DAMPING * mean;
    let worst = 0;
    let ridge2 = 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let lhs = lambda * d[i * n + j];
        let rhs = 0;
        for (let k = 0; k < n; k++) {
          lhs += G[j * n + k] * d[i * n + k];
          rhs += C[j * n + k] * wt[i * n + k] - G[j * n + k] * wb[i * n + k];
        }
        worst = Math.max(worst, Math.abs(lhs - rhs));
        ridge2 += d[i * n + j] ** 2;
      }
    }
    expect(worst).toBeLessThan(1e-9);
    expect(residual).toBeCloseTo(outputError(d), 8);
    // Δ* minimises the ridge objective: the plain ΔW does worse on the base's upstream.
    let plain2 = 0;
    for (const x of delta) plain2 += x * x;
    expect(outputError(d) + lambda * ridge2).toBeLessThan(0.1 * (outputError(delta) + lambda * plain2));
  });

  it("with the inputs' means, the bias is re-fitted too: R is the affine output error at (Δ*, Δb*), not more than without", () => {
    // Inputs with a mean (ReLU-like activations): shift both.
    const shift = Float64Array.from({ length: n }, () => 1 + rand());
    const xb1 = Float64Array.from(xb, (v, e) => v + shift[e % n]);
    const xt1 = Float64Array.from(xb1, (v, e) => v * a[e % n] + 0.3);
    const mean = (x: Float64Array) =>
      Float64Array.from({ length: n }, (_, j) => {
        let t = 0;
        for (let s2 = 0; s2 < N; s2++) t += x[s2 * n + j] / N;
        return t;
      });
    const g1 = gramOf(xb1, xb1);
    const metric = metricOf(g1, n, true, 'w');
    metric.match = { g: g1, cross: gramOf(xb1, xt1), target: gramOf(xt1, xt1), means: { base: mean(xb1), target: mean(xt1) } };
    const biasDelta = randomValues(rand, m, 0.05);
    const bb = randomValues(rand, m, 0.1);
    const fit = refitDelta(wb, delta, m, metric, biasDelta);
    expect(fit.bias).toBeDefined();
    const affineError = (d: Float64Array, db: Float64Array): number => {
      let e = 0;
      for (let s2 = 0; s2 < N; s2++) {
        for (let i = 0; i < m; i++) {
          let y = bb[i] + db[i] - (bb[i] + biasDelta[i]);
          for (let j = 0; j < n; j++) y += xb1[s2 * n + j] * (wb[i * n + j] + d[i * n + j]) - xt1[s2 * n + j] * wt[i * n + j];
          e += y * y;
        }
      }
      return e / N;
    };
    expect(fit.residual).toBeCloseTo(affineError(fit.delta, fit.bias!), 6);
    const without = refitDelta(wb, delta, m, { ...metric, match: { ...metric.match, means: undefined } }, biasDelta);
    expect(without.bias).toBeUndefined();
    expect(fit.residual).toBeLessThan(affineError(without.delta, biasDelta));
  });

  /**
   * A two-layer linear model whose first layer (up) the fine-tune changed so that X_t = X_b·diag(a)
   * (full rank), and the second (w) so that the base's upstream reaches the target's outputs
   * with a rank-1 change: the plain build approximates both ΔW, the re-fit only Δ*.
   */
  const p = 30;
  const x0 = randomValues(rand, N * p, 1);
  const upB = randomValues(rand, n * p, 0.2);
  const upT = Float64Array.from(upB, (x, e) => x * a[Math.floor(e / p)]);
  const xOf = (up: Float64Array): Float64Array => {
    const x = new Float64Array(N * n);
    for (let s = 0; s < N; s++) for (let j = 0; j < n; j++) for (let k = 0; k < p; k++) x[s * n + j] += x0[s * p + k] * up[j * p + k];
    return x;
  };
  const g0 = new Float64Array(p * p);
  for (let s = 0; s < N; s++) for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) g0[i * p + j] += (x0[s * p + i] * x0[s * p + j]) / N;
  const outputsUp = Float64Array.from({ length: n }, (_, j) => {
    let t = 0;
    for (let i = 0; i < m; i++) t += wb[i * n + j] ** 2;
    return t;
  });
  /** ‖f_applied(x0) − f_target(x0)‖² / N over the whole model. */
  function modelError(payload: Uint8Array): number {
    const d = new Map(decodePayload(payload).tensors.map((t) => [t.name, deltaValues(t)]));
    const up = Float64Array.from(upB, (x, e) => x + (d.get('up.weight')?.[e] ?? 0));
    const w = Float64Array.from(wb, (x, e) => x + (d.get('w.weight')?.[e] ?? 0));
    const [xa, xtt] = [xOf(up), xOf(upT)];
    let e = 0;
    for (let s = 0; s < N; s++) {
      for (let i = 0; i < m; i++) {
        let y = 0;
        for (let j = 0; j < n; j++) y += xa[s * n + j] * w[i * n + j] - xtt[s * n + j] * wt[i * n + j];
        e += y * y;
      }
    }
    return e / N;
  }

  async function writeCase(tag: string, match: boolean): Promise<{ files: { base: string; target: string }; metrics: Map<string, Metric> }> {
    const t = (name: string, shape: number[], x: Float64Array): TensorInput => ({ name, dtype: 'F32', shape, data: encodeValues(x, 'F32') });
    const files = await writeModels(path.join(dir, tag), {
      base: writeSafetensors([t('up.weight', [n, p], upB), t('w.weight', [m, n], wb)]),
      target: writeSafetensors([t('up.weight', [n, p], upT), t('w.weight', [m, n], wt)]),
    });
    const stats = [
      t('up.weight', [p, p], g0),
      t('up.weight:outputs', [n], outputsUp),
      t('w.weight', [n, n], gramOf(xOf(upB), xOf(upB))),
      ...(match ? [t('w.weight:cross', [n, n], gramOf(xOf(upB), xOf(upT))), t('w.weight:target', [n, n], gramOf(xOf(upT), xOf(upT)))] : []),
    ];
    const file = path.join(dir, tag, 'stats.safetensors');
    await fs.writeFile(file, writeSafetensors(stats));
    const metrics = await loadCalibration(
      file,
      new Map([
        ['up.weight', [n, p]],
        ['w.weight', [m, n]],
      ]),
    );
    return { files, metrics };
  }

  async function build(files: { base: string; target: string }, bytes: number, metrics: Map<string, Metric>) {
    const source = await twoModelSource(files.base, files.target);
    try {
      return await buildUpdate({ source, mode: { kind: 'budget', bytes }, quant: 'f32', method: 'auto', metrics });
    } finally {
      await source.close();
    }
  }

  it('with cross statistics, fleet build re-fits the layer where that leaves less output error: never over the budget, and not more error with more bytes', async () => {
    const gram = await writeCase('gram', false);
    const cross = await writeCase('cross', true);
    let previous = Infinity;
    const chosen: string[][] = [];
    for (const bytes of [500, 900, 1600, 3000, 6000, 12000]) {
      const plain = await build(gram.files, bytes, gram.metrics);
      const refit = await build(cross.files, bytes, cross.metrics);
      expect(plain.report.refitted).toEqual([]);
      expect(refit.payload.byteLength).toBeLessThanOrEqual(bytes);
      chosen.push(refit.report.refitted);
      const e = modelError(refit.payload);
      // Where the rank-1 Δ* fits and the whole ΔW do not, far less error than the plain build.
      if (bytes <= 1600) expect(e).toBeLessThan(0.2 * modelError(plain.payload));
      if (refit.report.refitted.length === 0) expect(e).toBeLessThanOrEqual(modelError(plain.payload) * (1 + 1e-9));
      expect(e).toBeLessThanOrEqual(previous * (1 + 1e-6));
      previous = e;
    }
    // Re-fitted at the small budgets (the rank-1 Δ* fits), the plain build once both whole ΔW fit.
    expect(chosen[0]).toEqual(['w.weight']);
    expect(chosen[chosen.length - 1]).toEqual([]);
  });

  it('refuses cross statistics without the target Gram or the Gram matrix, naming the tensor', async () => {
    const file = path.join(dir, 'bad.safetensors');
    const t = (name: string, x: Float64Array): TensorInput => ({ name, dtype: 'F32', shape: [n, n], data: encodeValues(x, 'F32') });
    const shapes = new Map([['w.weight', [m, n]]]);
    await fs.writeFile(file, writeSafetensors([t('w.weight', G), t('w.weight:cross', C)]));
    await expect(loadCalibration(file, shapes)).rejects.toThrow(/calibration w.weight: output matching needs w.weight .*w.weight:cross and w.weight:target together/);
    await fs.writeFile(file, writeSafetensors([t('w.weight:cross', C), t('w.weight:target', T)]));
    await expect(loadCalibration(file, shapes)).rejects.toThrow(/output matching needs/);
    await fs.writeFile(file, writeSafetensors([t('w.weight', G), { name: 'w.weight:cross', dtype: 'F32', shape: [n], data: encodeValues(new Float64Array(n), 'F32') }, t('w.weight:target', T)]));
    await expect(loadCalibration(file, shapes)).rejects.toThrow(/calibration w.weight:cross: expected F32 or F64 of shape \[40, 40\]/);
  });
});
