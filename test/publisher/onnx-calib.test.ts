import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeValues } from '../../protocol/dtypes.ts';
import { readSafetensors, writeSafetensors } from '../../protocol/safetensors.ts';
import { loadCalibration } from '../../publisher/calib.ts';
import { buildOnnxModel } from '../../publisher/onnx-build.ts';
import { onnxCalibration } from '../../publisher/onnx-calib.ts';
import { readSamples, runSamples, type Samples } from '../../util/onnx-run.ts';
import { runFleet, tempDir } from '../support/harness.ts';
import { NET_SHAPES, netModel, netSpec, netWeights, plusRankOne, values, type NetWeights } from '../support/onnx-models.ts';

const N = 32;
let dir: string;
beforeAll(async () => {
  dir = await tempDir('onnx-calib');
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

function samples(): Samples {
  const x = Float32Array.from(values(77, N * 50));
  return readSamples(writeSafetensors([{ name: 'inputs', dtype: 'F32', shape: [N, 2, 5, 5], data: new Uint8Array(x.buffer) }]), 'samples', false);
}

/** The net with its layers' outputs exposed: c (Conv), h0 (Gemm), m (MatMul), summed over every sample. */
async function layerOutputs(w: NetWeights, s: Samples): Promise<Record<'c' | 'h0' | 'm', Float64Array[]>> {
  const spec = netSpec(w);
  spec.outputs.push({ name: 'c', shape: [1, 3, 3, 3] }, { name: 'h0', shape: [1, 6] }, { name: 'm', shape: [1, 4] });
  const got: Record<'c' | 'h0' | 'm', Float64Array[]> = { c: [], h0: [], m: [] };
  await runSamples(
    buildOnnxModel(spec),
    s,
    (_start, _b, out) => {
      for (const k of ['c', 'h0', 'm'] as const) got[k].push(Float64Array.from(out[k].data));
    },
    ['c', 'h0', 'm'],
  );
  return got;
}

/** Mean over samples of ‖out' − out‖², divided by `positions` (a conv's output positions). */
function meanSquaredChange(a: Float64Array[], b: Float64Array[], positions = 1): number {
  let s = 0;
  a.forEach((x, i) => x.forEach((v, j) => (s += (b[i][j] - v) ** 2)));
  return s / (a.length * positions);
}

/** tr(E·G·Eᵀ) for E [m, n], G [n, n]. */
function quadratic(e: Float64Array, m: number, g: Float64Array, n: number): number {
  let t = 0;
  for (let i = 0; i < m; i++) for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) t += e[i * n + a] * g[a * n + b] * e[i * n + b];
  return t;
}

describe('fleet calib: per-layer input statistics from an ONNX model run by ONNX Runtime', () => {
  it('measures what the output error of a weight change really is: Conv and Gemm (transB) by their Gram matrices, MatMul by its row weights', async () => {
    const w = netWeights(61);
    const s = samples();
    const r = await onnxCalibration(netModel(w), s);
    expect(r.layers.map((l) => [l.weight, l.kind, l.n, l.rows])).toEqual([
      ['conv_w', 'gram', 18, N * 9],
      ['fc_w', 'gram', 27, N],
      ['mm_w', 'rows', 6, N],
    ]);
    const file = readSafetensors(r.file);
    const g = (name: string) => decodeValues(file.tensor(name), 'F32');
    const before = await layerOutputs(w, s);

    // Gemm, transB = 1: weight [out 6, in 27]; an error E moves the Gemm's output by A·Eᵀ.
    const fc = plusRankOne(plusRankOne(w.fc_w, 6, 5, 0.3), 6, 9, 0.2);
    const eFc = Float64Array.from(fc, (v, i) => Math.fround(v) - Math.fround(w.fc_w[i]));
    const afterFc = await layerOutputs({ ...w, fc_w: fc }, s);
    const want = meanSquaredChange(before.h0, afterFc.h0);
    expect(quadratic(eFc, 6, g('fc_w'), 27) / want).toBeCloseTo(1, 4);

    // Conv [3, 2, 3, 3]: the error on the input unfolded into patches, per output position.
    const conv = plusRankOne(w.conv_w, 3, 7, 0.3);
    const eConv = Float64Array.from(conv, (v, i) => Math.fround(v) - Math.fround(w.conv_w[i]));
    const afterConv = await layerOutputs({ ...w, conv_w: conv }, s);
    expect(quadratic(eConv, 3, g('conv_w'), 18) / meanSquaredChange(before.c, afterConv.c, 9)).toBeCloseTo(1, 4);

    // MatMul [in 6, out 4]: an error in one row i moves the output by h_i·E_i, so by o_i·‖E_i‖².
    const mm = Float64Array.from(w.mm_w);
    for (let j = 0; j < 4; j++) mm[2 * 4 + j] += 0.25 * (j + 1);
    const rowNorm = Array.from({ length: 4 }, (_, j) => (Math.fround(mm[8 + j]) - Math.fround(w.mm_w[8 + j])) ** 2).reduce((a, b) => a + b, 0);
    const afterMm = await layerOutputs({ ...w, mm_w: mm }, s);
    expect((g('mm_w:outputs')[2] * rowNorm) / meanSquaredChange(before.m, afterMm.m)).toBeCloseTo(1, 4);

    // The builder reads it.
    const f = path.join(dir, 'stats.safetensors');
    await fs.writeFile(f, r.file);
    const metrics = await loadCalibration(f, new Map(Object.entries(NET_SHAPES)));
    expect([...metrics.keys()].sort()).toEqual(['conv_w', 'fc_w', 'mm_w']);
    expect(metrics.get('mm_w')!.rows).toHaveLength(6);
  });

  it('fleet calib writes the file and fleet build --calib uses it on the ONNX model', async () => {
    const w = netWeights(62);
    const a = path.join(dir, 'a.onnx');
    const b = path.join(dir, 'b.onnx');
    await fs.writeFile(a, netModel(w));
    await fs.writeFile(b, netModel({ ...w, fc_w: plusRankOne(w.fc_w, 6, 3), conv_w: plusRankOne(w.conv_w, 3, 4) }));
    const sf = path.join(dir, 'samples.safetensors');
    await fs.writeFile(sf, writeSafetensors([{ name: 'inputs', dtype: 'F32', shape: [N, 2, 5, 5], data: new Uint8Array(Float32Array.from(values(78, N * 50)).buffer) }]));
    const stats = path.join(dir, 'cli-stats.safetensors');
    const c = await runFleet(['calib', '--model', a, '--samples', sf, '--out', stats]);
    expect(c.code, c.err).toBe(0);
    expect(c.out).toContain('fc_w: Gram [27, 27] of Gemm "fc"\'s input, 32 rows');
    expect(c.out).toContain('mm_w: row weights [6] (:outputs) of MatMul "mm"\'s input, 32 rows');
    const built = await runFleet(['build', '--base', a, '--target', b, '--budget', '60%', '--method', 'auto', '--calib', stats, '--out', path.join(dir, 'u.cbor'), '--json', '--yes']);
    expect(built.code, built.err).toBe(0);
    expect(JSON.parse(built.out).calibrated).toBe(true);
    const st = await runFleet(['calib', '--model', path.join(dir, 'x.safetensors'), '--samples', sf, '--out', stats]);
    expect(st.code).not.toBe(0);
    expect(st.err).toMatch(/fleet calib runs ONNX models/);
  }, 120_000);
});
