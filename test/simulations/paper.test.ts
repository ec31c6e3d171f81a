import { describe, expect, it } from 'vitest';
import { lowRankBytes, topKBytes, vectorBytes, denseBytes } from '../../simulations/paper/bytes.ts';
import { loraBytes, loraConfigFor, quantizedDense, topK, topKCount, deltaOf } from '../../simulations/paper/compress.ts';
import { drift, loadAllDigits, PIXELS, splitDigits, subset, type Dataset } from '../../simulations/paper/data.ts';
import { cloneMlp, initMlp, lossAndGrad, meanLoss, zerosLike, type Mlp } from '../../simulations/paper/mlp.ts';
import { runPaper } from '../../simulations/paper/pipeline.ts';
import { summaryJson } from '../../simulations/paper/result.ts';
import { fullTrainable, initLora, loraTrainable, mergeLora, train } from '../../simulations/paper/train.ts';
import { mulberry32 } from '../../util/random.ts';

function tinyData(n: number, inputs: number, outputs: number, seed: number): Dataset {
  const rand = mulberry32(seed);
  const x = new Float32Array(n * inputs);
  for (let i = 0; i < x.length; i++) x[i] = rand();
  const y = new Uint8Array(n);
  for (let i = 0; i < n; i++) y[i] = Math.floor(rand() * outputs);
  return { n, x, y };
}

function batchLoss(p: Mlp, ds: Dataset, idx: number[]): number {
  return lossAndGrad(p, ds, idx, zerosLike(p), { w1: false });
}

describe('paper simulation: MLP', () => {
  it('gradients match finite differences on a tiny net', () => {
    const p = initMlp(mulberry32(1), 6, 5, 3);
    for (let i = 0; i < p.b1.length; i++) p.b1[i] = 0.1 * (i + 1); // keep ReLUs away from their kink
    const ds = tinyData(4, 6, 3, 2);
    const idx = [0, 1, 2, 3];
    const g = zerosLike(p);
    lossAndGrad(p, ds, idx, g);
    const h = 1e-3;
    for (const key of ['w1', 'b1', 'w2', 'b2'] as const) {
      for (let i = 0; i < p[key].length; i++) {
        const q = cloneMlp(p);
        q[key][i] += h;
        const up = batchLoss(q, ds, idx);
        q[key][i] -= 2 * h;
        const down = batchLoss(q, ds, idx);
        expect(g[key][i]).toBeCloseTo((up - down) / (2 * h), 3);
      }
    }
  });

  it('low-rank factor gradients match finite differences', () => {
    const base = initMlp(mulberry32(3), 6, 5, 3);
    for (let i = 0; i < base.b1.length; i++) base.b1[i] = 0.2;
    const s = initLora(base, { r1: 2, r2: 2, b1: true, b2: true }, mulberry32(4));
    for (let i = 0; i < s.u1.length; i++) s.u1[i] = 0.05 * (i - 3);
    for (let i = 0; i < s.u2.length; i++) s.u2[i] = 0.05 * (2 - i);
    const ds = tinyData(3, 6, 3, 5);
    const idx = [0, 1, 2];
    const t = loraTrainable(base, s);
    const { grads } = t.step(ds, idx);
    const lossOf = (): number => batchLoss(mergeLora(base, s), ds, idx);
    const h = 1e-3;
    t.tensors.forEach((tensor, ti) => {
      for (let i = 0; i < tensor.length; i++) {
        const keep = tensor[i];
        tensor[i] = keep + h;
        const up = lossOf();
        tensor[i] = keep - h;
        const down = lossOf();
        tensor[i] = keep;
        expect(grads[ti][i]).toBeCloseTo((up - down) / (2 * h), 3);
      }
    });
  });

  it('training on a tiny subset reduces the loss', () => {
    const all = loadAllDigits();
    const { baseTrain } = splitDigits(all, { baseTrain: 300, fieldTrain: 0, test: 0 }, 7);
    const p = initMlp(mulberry32(8), PIXELS, 32, 10);
    const before = meanLoss(p, baseTrain);
    train(fullTrainable(p), baseTrain, { epochs: 3, batch: 32, lr: 2e-3, seed: 9 });
    expect(meanLoss(p, baseTrain)).toBeLessThan(before * 0.6);
  });
});

describe('paper simulation: data and drift', () => {
  it('splits are disjoint, seeded and sized', () => {
    const all = loadAllDigits();
    expect(all.n).toBe(10000);
    const a = splitDigits(all, { baseTrain: 50, fieldTrain: 20, test: 30 }, 11);
    const b = splitDigits(all, { baseTrain: 50, fieldTrain: 20, test: 30 }, 11);
    expect([a.baseTrain.n, a.fieldTrain.n, a.test.n]).toEqual([50, 20, 30]);
    expect(a.test.x).toEqual(b.test.x);
    expect(() => splitDigits(all, { baseTrain: 9000, fieldTrain: 1000, test: 1000 }, 1)).toThrow(/holds 10000/);
  });

  it('the drift is deterministic and changes the images', () => {
    const all = loadAllDigits();
    const ds = subset(all, [0, 1500, 9000]);
    const d1 = drift(ds, 42);
    const d2 = drift(ds, 42);
    const d3 = drift(ds, 43);
    expect(d1.x).toEqual(d2.x);
    expect(d1.x).not.toEqual(d3.x);
    expect(d1.y).toEqual(ds.y);
    let diff = 0;
    for (let i = 0; i < ds.x.length; i++) diff += Math.abs(d1.x[i] - ds.x[i]);
    expect(diff / ds.x.length).toBeGreaterThan(0.05);
    for (const v of d1.x) expect(v >= 0 && v <= 1).toBe(true);
  });
});

describe('paper simulation: byte accounting', () => {
  const base = initMlp(mulberry32(12), PIXELS, 128, 10);

  it('follows the documented formulas', () => {
    expect(lowRankBytes(128, 784, 3, 'f32')).toBe(3 * (128 + 784) * 4);
    expect(lowRankBytes(128, 784, 3, 'int8')).toBe(3 * (128 + 784) + 4 * (128 + 3));
    expect(topKBytes(100, 'f32', 2)).toBe(800);
    expect(topKBytes(100, 'int8', 2)).toBe(100 * 5 + 8);
    expect(vectorBytes(10, 'f32')).toBe(40);
    expect(vectorBytes(10, 'int8')).toBe(14);
    expect(denseBytes(10, 128, 32)).toBe(5120);
    expect(denseBytes(10, 128, 8)).toBe(1280 + 40);
    expect(denseBytes(10, 128, 4)).toBe(640 + 40);
    expect(loraBytes(base, { r1: 2, r2: 1, b1: true, b2: false }, 'f32')).toBe(2 * 912 * 4 + 138 * 4 + 128 * 4);
  });

  it('every budgeted method stays within its budget', () => {
    const target = cloneMlp(base);
    const rand = mulberry32(13);
    for (const k of ['w1', 'b1', 'w2', 'b2'] as const) for (let i = 0; i < target[k].length; i++) target[k][i] += (rand() - 0.5) * 0.01;
    const delta = deltaOf(base, target);
    for (const budget of [407, 2035, 4070, 20354]) {
      for (const p of ['f32', 'int8'] as const) {
        const cfg = loraConfigFor(base, budget, p);
        expect(loraBytes(base, cfg, p)).toBeLessThanOrEqual(budget);
        const t = topK(base, delta, topKCount(budget, p, 4), p);
        expect(t.bytes).toBeLessThanOrEqual(budget);
        if (p === 'f32') expect(t.bytes).toBe(t.k * 8);
        else expect([t.k * 5 + 4, t.k * 5 + 8, t.k * 5 + 12, t.k * 5 + 16]).toContain(t.bytes); // + one 4-byte scale per tensor touched
      }
    }
    expect(quantizedDense(base, delta, 8).bytes).toBe(101770 + 4 * (128 + 1 + 10 + 1));
    expect(quantizedDense(base, delta, 4).bytes).toBe(101770 / 2 + 4 * (128 + 1 + 10 + 1));
  });
});

describe('paper simulation: end to end', () => {
  it('a tiny run produces the JSON with every field', async () => {
    const r = await runPaper({ baseTrain: 500, fieldTrain: 300, test: 200, baseEpochs: 1, fineTuneEpochs: 1, loraEpochs: 1, sizesPercent: [0.5, 5] });
    const j = JSON.parse(JSON.stringify(summaryJson(r))) as Record<string, any>;
    for (const k of ['baseAccuracyOriginal', 'baseAccuracyField', 'fullFineTuneAccuracy']) {
      expect(typeof j[k]).toBe('number');
      expect(j[k]).toBeGreaterThanOrEqual(0);
      expect(j[k]).toBeLessThanOrEqual(1);
    }
    expect(Object.keys(j.methods.f32)).toEqual(['lowRankTrained', 'fleetSvd', 'topK', 'lastLayer', 'fullFineTune']);
    expect(Object.keys(j.methods.int8)).toEqual(['lowRankTrained', 'fleetSvd', 'topK', 'lastLayer', 'denseInt8', 'denseInt4', 'fullFineTune']);
    for (const sec of ['f32', 'int8']) {
      for (const m of Object.values(j.methods[sec]) as Array<{ accuracy: Record<string, number | null> }>) {
        expect(Object.keys(m.accuracy)).toEqual(['0.5%', '5%']);
      }
      expect(j.bytesForGain[sec]).toHaveProperty('bytes');
      expect(j.bytesForGain[sec]).toHaveProperty('ratioToOurs');
    }
    expect(typeof j.bytesForGain.targetGainPoints).toBe('number');
    // fleet build never ships more than the budget.
    j.sizesBytes.forEach((b: number, i: number) => {
      const shipped = j.methods.f32.fleetSvd.bytes[`${j.sizesPercent[i]}%`];
      if (shipped !== null) expect(shipped).toBeLessThanOrEqual(b);
    });
  });
});
