import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodePayload, encodePayload } from '../../protocol/lowrank.ts';
import { deltaValues } from '../../protocol/delta-info.ts';
import { encodeValues } from '../../protocol/dtypes.ts';
import { writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { buildUpdate } from '../../publisher/build.ts';
import { loadCalibration, type Metric } from '../../publisher/calib.ts';
import { twoModelSource } from '../../publisher/delta-source.ts';
import type { Method } from '../../publisher/rd.ts';
import { crossGram, layerOutputs, sequentialPlan, upstreamSpends } from '../../publisher/sequential.ts';
import { mulberry32 } from '../../util/random.ts';
import { randomValues, writeModels } from '../support/models.ts';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-sequential-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/**
 * A two-layer ReLU model, y = W2·relu(W1·x + b1) + b2 (x: p, hidden: n, outputs: m), fine-tuned
 * so that W1 changed by a rank-2 delta and W2, b2 were retrained to the new hidden units.
 */
const p = 48;
const n = 24;
const m = 6;
const N = 200;
const rand = mulberry32(77);
const x = randomValues(rand, N * p, 1);
const w1b = randomValues(rand, n * p, 0.25);
const b1b = randomValues(rand, n, 0.1);
const w2b = randomValues(rand, m * n, 0.3);
const b2b = randomValues(rand, m, 0.1);
const u = randomValues(rand, n * 2, 0.3);
const v = randomValues(rand, 2 * p, 0.3);
const w1t = Float64Array.from(w1b, (w, e) => w + u[Math.floor(e / p) * 2] * v[e % p] + u[Math.floor(e / p) * 2 + 1] * v[p + (e % p)]);
const w2t = Float64Array.from(w2b, (w) => w + 0.2 * (rand() - 0.5));
const b2t = Float64Array.from(b2b, (b) => b + 0.05 * (rand() - 0.5));
const f32 = (a: Float64Array): Float64Array => Float64Array.from(Float32Array.from(a));

/** Σ_s ‖f_applied(x_s) − f_target(x_s)‖² / N: the model's output error on the calibration samples. */
function modelError(payload: Uint8Array): number {
  const d = new Map(decodePayload(payload).tensors.map((t) => [t.name, deltaValues(t)]));
  const add = (name: string, a: Float64Array): Float64Array => f32(Float64Array.from(f32(a), (y, e) => y + (d.get(name)?.[e] ?? 0)));
  const h = layerOutputs(x, N, add('fc1.weight', w1b), n, p, add('fc1.bias', b1b), 'relu');
  const ht = layerOutputs(x, N, f32(w1t), n, p, f32(b1b), 'relu');
  const ya = layerOutputs(h, N, add('fc2.weight', w2b), m, n, add('fc2.bias', b2b), 'identity');
  const yt = layerOutputs(ht, N, f32(w2t), m, n, f32(b2t), 'identity');
  let e = 0;
  for (let i = 0; i < ya.length; i++) e += (ya[i] - yt[i]) ** 2;
  return e / N;
}

async function writeCase(tag: string, chain: boolean): Promise<{ files: { base: string; target: string }; metrics: Map<string, Metric> }> {
  const t = (name: string, shape: number[], a: Float64Array): TensorInput => ({ name, dtype: 'F32', shape, data: encodeValues(a, 'F32') });
  const model = (w1: Float64Array, w2: Float64Array, b2: Float64Array) => writeSafetensors([t('fc1.bias', [n], b1b), t('fc1.weight', [n, p], w1), t('fc2.bias', [m], b2), t('fc2.weight', [m, n], w2)]);
  const files = await writeModels(path.join(dir, tag), { base: model(w1b, w2b, b2b), target: model(w1t, w2t, b2t) });
  const hb = layerOutputs(x, N, f32(w1b), n, p, f32(b1b), 'relu');
  const ht = layerOutputs(x, N, f32(w1t), n, p, f32(b1b), 'relu');
  const outputs1 = Float64Array.from({ length: n }, (_, j) => {
    let s = 0;
    for (let i = 0; i < m; i++) s += w2b[i * n + j] ** 2;
    return s;
  });
  const stats = [
    t('fc1.weight', [p, p], crossGram(x, x, N, p)),
    t('fc1.weight:outputs', [n], outputs1),
    t('fc2.weight', [n, n], crossGram(hb, hb, N, n)),
    t('fc2.weight:cross', [n, n], crossGram(hb, ht, N, n)),
    t('fc2.weight:target', [n, n], crossGram(ht, ht, N, n)),
    ...(chain ? [t('fc1.weight:inputs', [N, p], x)] : []),
  ];
  const file = path.join(dir, tag, 'stats.safetensors');
  await fs.writeFile(file, writeSafetensors(stats, chain ? { 'fc2.weight:upstream': 'relu(fc1.weight)' } : {}));
  const shapes = new Map<string, number[]>([
    ['fc1.weight', [n, p]],
    ['fc1.bias', [n]],
    ['fc2.weight', [m, n]],
    ['fc2.bias', [m]],
  ]);
  return { files, metrics: await loadCalibration(file, shapes) };
}

async function build(files: { base: string; target: string }, bytes: number, metrics: Map<string, Metric>, method: Method = 'auto') {
  const source = await twoModelSource(files.base, files.target);
  try {
    return await buildUpdate({ source, mode: { kind: 'budget', bytes }, quant: 'f32', method, metrics });
  } finally {
    await source.close();
  }
}

describe('sequential re-fit (publisher/sequential.ts)', () => {
  it('the statistics of a layer are those of act(X·Wᵀ + b), computed by hand', () => {
    const w = Float64Array.of(1, -2, 0.5, 3);
    const xs = Float64Array.of(1, 1, 2, -1, 0, 1);
    // Sample 1: (1·1 − 2·1, 0.5 + 3) + b = (−1 + 0.5, 3.5 − 1) → relu (0, 2.5); sample 2: (2 + 2, 1 − 3) + b → (4.5, −3) → (4.5, 0); sample 3: (−2, 3) + b → (0, 2).
    const h = layerOutputs(xs, 3, w, 2, 2, Float64Array.of(0.5, -1), 'relu');
    expect([...h]).toEqual([0, 2.5, 4.5, 0, 0, 2]);
    expect([...layerOutputs(xs, 3, w, 2, 2, undefined, 'identity')]).toEqual([-1, 3.5, 4, -2, -2, 3]);
    expect([...crossGram(h, h, 3, 2)]).toEqual([4.5 ** 2 / 3, 0, 0, (2.5 ** 2 + 4) / 3]);
  });

  it('with the upstream dense and the re-fitted layer dense, the estimated error is the output error on the samples, and below the plain re-fit', async () => {
    const { files, metrics } = await writeCase('dense', true);
    const source = await twoModelSource(files.base, files.target);
    try {
      const budget = 12000;
      const plan = await sequentialPlan(source, budget, { method: 'dense', metrics, powerIterations: 2 });
      expect(plan).toBeDefined();
      expect(plan!.upstreamBytes).toBeGreaterThan(0);
      expect(plan!.deltas.map((d) => d.name)).toEqual(['fc1.weight', 'fc2.bias', 'fc2.weight']);
      const payload = encodePayload({ v: 1, base: '0'.repeat(64), target: '0'.repeat(64), tensors: plan!.deltas });
      expect(payload.byteLength).toBeLessThanOrEqual(budget);
      // Exact but for the f32 rounding of the shipped deltas.
      expect(modelError(payload)).toBeCloseTo(plan!.error, 4);
      expect(plan!.error).toBeLessThan(1e-3);
      // The plain re-fit (the upstream left as it is) leaves far more.
      const plain = await sequentialPlan(source, 1200, { method: 'dense', metrics, powerIterations: 2 });
      expect(plain!.upstreamBytes).toBe(0);
      expect(plain!.error).toBeGreaterThan(100 * plan!.error);
    } finally {
      await source.close();
    }
  });

  it('fleet build with the chain: never over the budget, not more error with more bytes, and less than with cross statistics alone', async () => {
    const cross = await writeCase('cross', false);
    const chain = await writeCase('chain', true);
    let previous = Infinity;
    let better = 0;
    for (const bytes of [700, 1000, 1400, 2000, 2800, 4000, 5600]) {
      const seq = await build(chain.files, bytes, chain.metrics);
      const refit = await build(cross.files, bytes, cross.metrics);
      expect(seq.payload.byteLength).toBeLessThanOrEqual(bytes);
      const e = modelError(seq.payload);
      // The allocation is greedy on estimated errors, which only grow smaller with more bytes; a cheaper plan's exact error can come out a little lower by the rounding of its quantised factors (here by 4 %), not more.
      expect(e).toBeLessThanOrEqual(previous * 1.1);
      previous = e;
      // Its candidates include those of the build with cross statistics alone, compared by their exact error.
      expect(e).toBeLessThanOrEqual(modelError(refit.payload) * (1 + 1e-6));
      if (e < 0.8 * modelError(refit.payload)) better++;
    }
    expect(better).toBeGreaterThan(0);
    expect(upstreamSpends(1000)).toEqual([0, 96, 135, 192, 271, 384, 543]);
  });

  it('refuses a chain without the upstream inputs, inputs no chain uses, or a chain whose shapes do not meet', async () => {
    const file = path.join(dir, 'bad.safetensors');
    const t = (name: string, shape: number[], a: Float64Array): TensorInput => ({ name, dtype: 'F32', shape, data: encodeValues(a, 'F32') });
    const shapes = new Map<string, number[]>([
      ['fc1.weight', [n, p]],
      ['fc2.weight', [m, n]],
    ]);
    await fs.writeFile(file, writeSafetensors([t('fc2.weight', [n, n], new Float64Array(n * n))], { 'fc2.weight:upstream': 'relu(fc1.weight)' }));
    await expect(loadCalibration(file, shapes)).rejects.toThrow(/metadata fc2.weight:upstream: the file has no fc1.weight:inputs/);
    await fs.writeFile(file, writeSafetensors([t('fc1.weight:inputs', [N, p], x)]));
    await expect(loadCalibration(file, shapes)).rejects.toThrow(/calibration fc1.weight:inputs: no <weight>:upstream metadata names fc1.weight/);
    await fs.writeFile(file, writeSafetensors([t('fc1.weight:inputs', [N / 2, 2 * p], x)], { 'fc2.weight:upstream': 'relu(fc1.weight)' }));
    await expect(loadCalibration(file, shapes)).rejects.toThrow(/calibration fc1.weight:inputs: expected F32 or F64 of shape \[N, 48\]/);
    await fs.writeFile(file, writeSafetensors([t('fc1.weight:inputs', [N, p], x)], { 'fc1.weight:upstream': 'gelu(fc2.weight)' }));
    await expect(loadCalibration(file, shapes)).rejects.toThrow(/expected relu\(<weight>\) or <weight>/);
  });
});
