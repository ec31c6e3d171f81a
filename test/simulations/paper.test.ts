import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import { describe, expect, it } from 'vitest';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { productPath } from '../../simulations/paper/adapter.ts';
import { aggregate, aggregateJson, bytesToReach } from '../../simulations/paper/aggregate.ts';
import { mlpToSafetensors } from '../../simulations/paper/fleet-build.ts';
import { pngPlot } from '../../simulations/paper/png.ts';
import { resultsMarkdown, svgPlot } from '../../simulations/paper/render.ts';
import { runSeeds } from '../../simulations/paper/run.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { lowRankBytes, topKBytes, vectorBytes, denseBytes } from '../../simulations/paper/bytes.ts';
import { loraBytes, loraConfigFor, quantizedDense, topK, topKCount, deltaOf } from '../../simulations/paper/compress.ts';
import { drift, loadAllDigits, PIXELS, splitDigits, subset, type Dataset } from '../../simulations/paper/data.ts';
import { cloneMlp, initMlp, lossAndGrad, meanLoss, zerosLike, type Mlp } from '../../simulations/paper/mlp.ts';
import { runPaper } from '../../simulations/paper/pipeline.ts';
import { calibrationStats } from '../../simulations/paper/calib-stats.ts';
import { decodeValues } from '../../protocol/dtypes.ts';
import { readSafetensors } from '../../protocol/safetensors.ts';
import { summaryJson } from '../../simulations/paper/result.ts';
import { fullTrainable, initLora, loraTrainable, mergeLora, train } from '../../simulations/paper/train.ts';

/** The methods of the JSON's two sections, in order (f32 has no dense-quantised rows). */
const F32_METHODS = ['lowRankTrained', 'fleetSvd', 'fleetAuto', 'fleetAutoCalib', 'fleetAutoMatch', 'fleetAutoMatchBias', 'fleetAutoSeq', 'topK', 'lastLayer', 'fullFineTune'];
const INT8_METHODS = ['lowRankTrained', 'fleetSvd', 'fleetAuto', 'fleetAutoCalib', 'fleetAutoMatch', 'fleetAutoMatchBias', 'fleetAutoSeq', 'topK', 'lastLayer', 'denseInt8', 'denseInt4', 'fullFineTune'];

const execFileP = promisify(execFile);
import { mulberry32 } from '../../util/random.ts';
import { readUpdateFile } from '../../util/update-file.ts';

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

describe('paper simulation: calibration file', () => {
  it('fc2 cross statistics: H_bᵀH_t / N from both models on the same digits (= the Gram with the base twice)', () => {
    const ds = tinyData(40, 12, 3, 5);
    const base = initMlp(mulberry32(6), 12, 8, 3);
    const target = initMlp(mulberry32(7), 12, 8, 3);
    const read = (bytes: Uint8Array, name: string): Float64Array => decodeValues(readSafetensors(bytes).tensor(name), 'F32');
    const plain = calibrationStats(base, ds, 40);
    expect(readSafetensors(plain).tensors.map((t) => t.name)).not.toContain('fc2.weight:cross');
    const self = calibrationStats(base, ds, 40, base);
    expect(read(self, 'fc2.weight:cross')).toEqual(read(self, 'fc2.weight'));
    expect(read(self, 'fc2.weight:target')).toEqual(read(self, 'fc2.weight'));
    const both = calibrationStats(base, ds, 40, target);
    const hb = (m: Mlp, s: number): Float64Array => {
      const h = new Float64Array(8);
      for (let j = 0; j < 8; j++) {
        let v = m.b1[j];
        for (let k = 0; k < 12; k++) v += m.w1[j * 12 + k] * ds.x[s * 12 + k];
        h[j] = Math.max(0, v);
      }
      return h;
    };
    const want = new Float64Array(64);
    for (let s = 0; s < 40; s++) {
      const [b, t] = [hb(base, s), hb(target, s)];
      for (let i = 0; i < 8; i++) for (let j = 0; j < 8; j++) want[i * 8 + j] += (b[i] * t[j]) / 40;
    }
    const got = read(both, 'fc2.weight:cross');
    for (let e = 0; e < 64; e++) expect(got[e]).toBeCloseTo(want[e], 4);
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

describe('paper simulation: budget rule and bytes for a gain', () => {
  const base = initMlp(mulberry32(12), PIXELS, 128, 10);

  it('biases first, then ranks balanced across layers', () => {
    expect(loraConfigFor(base, 407, 'f32')).toEqual({ r1: 0, r2: 0, b1: false, b2: true });
    expect(loraConfigFor(base, 1017, 'f32')).toEqual({ r1: 0, r2: 0, b1: true, b2: true });
    // The old fixed order spent 1 % on a rank-1 ΔW1 and dropped the hidden bias.
    expect(loraConfigFor(base, 4070, 'f32')).toEqual({ r1: 0, r2: 6, b1: true, b2: true });
    let prev: { r1: number; r2: number; b1: boolean; b2: boolean };
    for (const p of ['f32', 'int8'] as const) {
      prev = { r1: 0, r2: 0, b1: false, b2: false };
      for (const pct of [0.1, 0.25, 0.5, 1, 2, 5, 10, 30]) {
        const budget = Math.floor((pct / 100) * 407080);
        const c = loraConfigFor(base, budget, p);
        expect(loraBytes(base, c, p)).toBeLessThanOrEqual(budget);
        expect(c.r1).toBeGreaterThanOrEqual(prev.r1);
        expect(Number(c.b1)).toBeGreaterThanOrEqual(Number(prev.b1));
        // Balanced: the smaller rank is the one that could not grow (r2 is capped at 9, where its factors cost its dense matrix).
        if (c.r1 > 0 && c.r2 < 9) expect(c.r2).toBeGreaterThanOrEqual(c.r1);
        prev = c;
      }
    }
  });

  it('bytes for a gain: first crossing, interpolated in log(bytes)', () => {
    const curve = [
      { bytes: 100, gain: 2 },
      { bytes: 1000, gain: 6 },
      { bytes: 10000, gain: 5 },
      { bytes: 100000, gain: 12 },
    ];
    expect(bytesToReach(curve, 1)).toEqual({ bytes: 100, atMost: true });
    const four = bytesToReach(curve, 4);
    expect(four.atMost).toBe(false);
    expect(four.bytes).toBeCloseTo(Math.sqrt(100 * 1000), 6); // half-way in gain = geometric mean in bytes
    expect(bytesToReach(curve, 6).bytes).toBeCloseTo(1000, 9);
    expect(bytesToReach(curve, 8.5).bytes).toBeCloseTo(Math.sqrt(10000 * 100000), 4); // the dip at 10 kB is not a crossing
    expect(bytesToReach(curve, 13)).toEqual({ bytes: null, atMost: false });
    expect(bytesToReach([{ bytes: 5160, gain: 40 }], 30)).toEqual({ bytes: 5160, atMost: false });
  });
});

describe('paper simulation: the low-rank update through the product', () => {
  it('goes through the real fleet build (PEFT LoRA import) and fleet apply', async () => {
    const all = loadAllDigits();
    const { baseTrain, fieldTrain } = splitDigits(all, { baseTrain: 300, fieldTrain: 200, test: 0 }, 21);
    const base = initMlp(mulberry32(22), PIXELS, 128, 10);
    train(fullTrainable(base), baseTrain, { epochs: 1, batch: 32, lr: 2e-3, seed: 23 });
    const field = drift(fieldTrain, 24);
    const product = await productPath(base);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'paper-product-test-'));
    try {
      for (const withBias of [true, false]) {
        const s = initLora(base, { r1: 2, r2: 3, b1: withBias, b2: withBias }, mulberry32(25));
        train(loraTrainable(base, s), field, { epochs: 1, batch: 32, lr: 5e-3, seed: 26 });
        for (const quant of ['f32', 'int8'] as const) {
          const keep = path.join(dir, `${withBias ? 'bias' : 'nobias'}-${quant}`);
          const built = await product.build(s, quant, keep);
          expect(built.dataBytes).toBe(loraBytes(base, s.config, quant));
          // What the device builds is the merged model (f32 exactly up to rounding; int8 within quantisation error).
          const merged = mergeLora(base, s);
          for (const k of ['w1', 'b1', 'w2', 'b2'] as const) {
            let maxErr = 0;
            let maxDelta = 0;
            for (let i = 0; i < merged[k].length; i++) {
              maxErr = Math.max(maxErr, Math.abs(built.model[k][i] - merged[k][i]));
              maxDelta = Math.max(maxDelta, Math.abs(merged[k][i] - base[k][i]));
            }
            expect(maxErr).toBeLessThanOrEqual(quant === 'f32' ? 1e-6 : 2e-2 * maxDelta + 1e-6);
          }
          // `fleet apply` (the CLI, a real process) builds the same model from the payload.
          const out = path.join(keep, 'applied.safetensors');
          await execFileP(process.execPath, [FLEET_BIN, 'apply', '--model', product.baseFile, '--update', path.join(keep, 'update.cbor'), '--out', out]);
          expect(await digestModelFile(out)).toBe(built.target);
          expect(new Uint8Array(await fs.readFile(out))).toEqual(mlpToSafetensors(built.model));
          if (!withBias && quant === 'int8') {
            // `fleet build --lora` (the CLI) on the same adapter writes the very same payload.
            const cliOut = path.join(keep, 'cli-update.cbor');
            await execFileP(process.execPath, [
              FLEET_BIN,
              'build',
              '--base',
              product.baseFile,
              '--lora',
              path.join(keep, 'adapter_model.safetensors'),
              '--lora-config',
              path.join(keep, 'adapter_config.json'),
              '--out',
              cliOut,
              '--quant',
              quant,
              '--json',
            ]);
            expect(Buffer.compare(await readUpdateFile(cliOut), Buffer.from(built.payload))).toBe(0);
          }
        }
      }
    } finally {
      await product.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('paper simulation: end to end', () => {
  it('several seeds (worker processes) give a table with every method, the 90 % column and the headline check', async () => {
    const args = ['--base-train', '500', '--field-train', '300', '--test', '200', '--base-epochs', '1', '--fine-tune-epochs', '1', '--lora-epochs', '1', '--sizes', '0.25,0.5,5'];
    const runs = await runSeeds(args, [1, 2], 2, () => {});
    expect(runs.map((r) => r.config.seed)).toEqual([1, 2]);
    const agg = aggregate(runs);
    const md = resultsMarkdown(agg, { command: 'npm run sim:paper -- …', wallSeconds: 1, date: '2026-01-01', jobs: 2 });
    for (const label of [
      'low-rank trained',
      'SVD of fine-tune',
      'fleet build --method auto (no data)',
      'fleet build --method auto --calib',
      "fleet build --method auto --calib + last layer's cross statistics (output matching",
      'the same + the mean hidden activations',
      'top-k of fine-tune',
      'last layer retrained',
      'dense fine-tune ΔW, 8-bit',
      'dense fine-tune ΔW, 4-bit',
      'full fine-tuned model',
    ]) {
      expect(md).toContain(`| ${label}`);
    }
    expect(md).toContain('bytes for 90 % | ÷ ours |');
    expect(md).toMatch(/Headline \*\*(holds|does not hold)\*\* with float32 numbers/);
    expect(md).toMatch(/Headline \*\*(holds|does not hold)\*\* with 8-bit numbers/);
    const j = JSON.parse(JSON.stringify(aggregateJson(agg, 1))) as Record<string, any>;
    expect(Object.keys(j.methods.f32)).toEqual(F32_METHODS);
    expect(Object.keys(j.methods.int8)).toEqual(INT8_METHODS);
    for (const m of Object.values(j.methods.int8) as Array<Record<string, unknown>>) {
      expect(m).toHaveProperty('bytesFor90');
      expect(m).toHaveProperty('ratioToOurs');
      expect(Object.keys(m.gainBySize as object)).toEqual(['0.25%', '0.5%', '5%']);
    }
    expect(j.gainFraction).toBe(0.9);
    // The plot: SVG text and a PNG that decodes to the scene's size.
    const svg = svgPlot(agg);
    expect(svg).toContain('<svg');
    const png = PNG.sync.read(Buffer.from(pngPlot(agg)));
    expect([png.width, png.height]).toEqual([1060, 600]);
    let dark = 0;
    for (let i = 0; i < png.data.length; i += 4) if (png.data[i] < 128) dark++;
    expect(dark).toBeGreaterThan(1000);
  });

  it('a tiny run produces the JSON with every field', async () => {
    const r = await runPaper({ baseTrain: 500, fieldTrain: 300, test: 200, baseEpochs: 1, fineTuneEpochs: 1, loraEpochs: 1, sizesPercent: [0.5, 5] });
    const j = JSON.parse(JSON.stringify(summaryJson(r))) as Record<string, any>;
    for (const k of ['baseAccuracyOriginal', 'baseAccuracyField', 'fullFineTuneAccuracy']) {
      expect(typeof j[k]).toBe('number');
      expect(j[k]).toBeGreaterThanOrEqual(0);
      expect(j[k]).toBeLessThanOrEqual(1);
    }
    expect(Object.keys(j.methods.f32)).toEqual(F32_METHODS);
    expect(Object.keys(j.methods.int8)).toEqual(INT8_METHODS);
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
      for (const key of ['fleetSvd', 'fleetAuto', 'fleetAutoCalib', 'fleetAutoMatch', 'fleetAutoMatchBias', 'fleetAutoSeq']) {
        const shipped = j.methods.f32[key].bytes[`${j.sizesPercent[i]}%`];
        if (shipped !== null) expect(shipped).toBeLessThanOrEqual(b);
      }
    });
    // The calibrated build is built from the sim's own stats file and ships at every size tried.
    expect(j.methods.f32.fleetAutoCalib.bytes['5%']).toBeGreaterThan(0);
  });
});
