import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyToFile } from '../../util/apply-file.ts';
import { decodePayload } from '../../protocol/lowrank.ts';
import { deltaValues } from '../../protocol/delta-info.ts';
import { encodeValues, decodeValues } from '../../protocol/dtypes.ts';
import { readSafetensors, writeSafetensors } from '../../protocol/safetensors.ts';
import { buildUpdate } from '../../publisher/build.ts';
import { loadCalibration, type Metric } from '../../publisher/calib.ts';
import { twoModelSource } from '../../publisher/delta-source.ts';
import type { Method } from '../../publisher/rd.ts';
import { mulberry32 } from '../../util/random.ts';
import { gaussian, modelPair, writeModels, type Spec } from '../support/models.ts';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-rd-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function build(tag: string, pair: { base: Uint8Array; target: Uint8Array }, bytes: number, method: Method, metrics?: Map<string, Metric>) {
  const files = await writeModels(path.join(dir, tag), pair);
  const source = await twoModelSource(files.base, files.target);
  try {
    return { ...(await buildUpdate({ source, mode: { kind: 'budget', bytes }, quant: 'f32', method, metrics })), files };
  } finally {
    await source.close();
  }
}

/** The delta a payload applies, per tensor, as the device computes it (before the final rounding). */
function applied(payload: Uint8Array): Map<string, Float64Array> {
  return new Map(decodePayload(payload).tensors.map((d) => [d.name, deltaValues(d)]));
}

/** Σ over changed tensors of ‖applied − ΔW‖², columns weighted by w (1 if not given). */
function error2(payload: Uint8Array, deltas: Map<string, Float64Array>, shapes: Map<string, number[]>, w?: Map<string, Float64Array>): number {
  const got = applied(payload);
  let e = 0;
  for (const [name, d] of deltas) {
    const a = got.get(name);
    const shape = shapes.get(name)!;
    const n = shape.slice(1).reduce((x, y) => x * y, 1) || 1;
    const wt = w?.get(name);
    for (let i = 0; i < d.length; i++) e += (wt ? wt[i % n] : 1) * ((a ? a[i] : 0) - d[i]) ** 2;
  }
  return e;
}

const SPECS: Spec[] = [
  { name: 'a.weight', shape: [48, 64] },
  { name: 'a.bias', shape: [48] },
  { name: 'b.weight', shape: [32, 48], dtype: 'F16' },
  { name: 'conv.weight', shape: [16, 8, 3, 3] },
  { name: 'frozen.weight', shape: [10, 10] },
];
const shapes = new Map(SPECS.map((s) => [s.name, s.shape]));

describe('fleet build --method: one rate–distortion allocation', () => {
  const pair = modelPair(11, SPECS, { 'a.weight': { rank: 6, noise: 3e-4 }, 'b.weight': { rank: 3, noise: 1e-4 }, 'conv.weight': { rank: 4, noise: 2e-4 }, 'a.bias': {} });

  for (const method of ['auto', 'mixed', 'sign', 'dense'] as Method[]) {
    it(`${method}: never exceeds the budget, and the error does not grow with more bytes`, async () => {
      let previous = Infinity;
      for (const bytes of [900, 1500, 2500, 4000, 7000, 12000, 25000, 60000]) {
        let r;
        try {
          r = await build(`${method}-${bytes}`, pair, bytes, method);
        } catch (e) {
          expect(String(e)).toMatch(/cannot hold even the smallest update/);
          continue;
        }
        expect(r.payload.byteLength).toBeLessThanOrEqual(bytes);
        const e = error2(r.payload, pair.deltas, shapes);
        expect(e).toBeLessThanOrEqual(previous * (1 + 1e-9));
        previous = e;
        expect(r.report.method).toBe(method);
        for (const t of r.report.tensors) {
          if (method === 'dense') expect(t.kind).toBe('dense');
          if (method === 'sign') expect(['sign', 'dense']).toContain(t.kind);
          if (method === 'mixed') expect(['mixed', 'dense']).toContain(t.kind);
        }
      }
      expect(previous).toBeLessThan(Infinity);
    });
  }

  it("the target digest is what the device's own apply produces, with every kind in one payload", async () => {
    const r = await build('digest', pair, 9000, 'auto');
    const kinds = new Set(r.report.tensors.map((t) => t.kind));
    expect(kinds.has('mixed')).toBe(true);
    const p = decodePayload(r.payload);
    expect(await applyToFile(r.files.base, p, path.join(dir, 'digest', 'out.safetensors'))).toBe(p.target);
  });

  it('auto takes mixed-precision factors for a low-rank ΔW, with more bits for the larger singular values', async () => {
    const r = await build('lowrank', modelPair(12, SPECS, { 'a.weight': { rank: 4 } }), 2000, 'auto');
    const t = r.report.tensors.find((x) => x.name === 'a.weight')!;
    expect(t.kind).toBe('mixed');
    expect(t.relError).toBeLessThan(0.05);
    const bits = t.dtype.split('+').map((g) => Number(g.split('b')[0]));
    expect(bits).toEqual([...bits].sort((x, y) => y - x));
  });

  it('auto takes sign + scales for a ΔW that is ±s_i per row, exactly (scale = mean |ΔW| of the row)', async () => {
    const rand = mulberry32(5);
    const m = 40;
    const n = 50;
    const base = Float64Array.from({ length: m * n }, () => gaussian(rand));
    const s = Float64Array.from({ length: m }, (_, i) => 2 ** -(6 + (i % 5)));
    const target = Float64Array.from(base, (w, e) => w + (rand() < 0.5 ? -1 : 1) * s[Math.floor(e / n)]);
    const t = (values: Float64Array) => writeSafetensors([{ name: 'w', dtype: 'F32', shape: [m, n], data: encodeValues(values, 'F32') }]);
    const pairS = { base: t(base), target: t(target) };
    const r = await build('sign', pairS, 2000, 'auto'); // dense would need 8000
    expect(r.report.tensors[0].kind).toBe('sign');
    expect(r.report.tensors[0].dtype).toBe('1-bit');
    // Only the f32 rounding of the stored target is left (its ΔW differs from ±s_i by that).
    expect(r.report.tensors[0].relError).toBeLessThan(1e-5);
    const d = decodePayload(r.payload).tensors[0];
    const got = deltaValues(d);
    const want = decodeValues(readSafetensors(pairS.target).tensor('w'), 'F32');
    for (let e = 0; e < got.length; e++) expect(Math.abs(got[e]) - s[Math.floor(e / n)]).toBeLessThan(1e-8);
    expect(want.length).toBe(m * n);
  });
});

describe('fleet build --calib: output error, not weight error', () => {
  const m = 32;
  const n = 64;
  const rand = mulberry32(21);
  // Inputs live in 8 of 64 directions (plus a little noise): X = Z·B, 300 samples.
  const N = 300;
  const basis = Float64Array.from({ length: 8 * n }, () => gaussian(rand));
  const x = new Float64Array(N * n);
  for (let s = 0; s < N; s++) {
    const z = Array.from({ length: 8 }, () => gaussian(rand));
    for (let j = 0; j < n; j++) {
      let v = 0.01 * gaussian(rand);
      for (let k = 0; k < 8; k++) v += z[k] * basis[k * n + j];
      x[s * n + j] = v;
    }
  }
  const gram = new Float64Array(n * n);
  for (let s = 0; s < N; s++) for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) gram[i * n + j] += (x[s * n + i] * x[s * n + j]) / N;
  const spec: Spec[] = [{ name: 'w', shape: [m, n] }];
  const pair = modelPair(22, spec, { w: { dense: true } }); // a full-rank ΔW
  const delta = pair.deltas.get('w')!;

  // Independent features of very different variances (16 busy, 48 nearly silent): a diagonal Gram.
  const diagGram = new Float64Array(n * n);
  for (let j = 0; j < n; j++) diagGram[j * n + j] = j % 4 === 0 ? 1 : 1e-3;

  /** tr(E·G·Eᵀ): the output error on the calibration inputs (G = XᵀX / N). */
  function outputError(payload: Uint8Array, g: Float64Array): number {
    const e = Float64Array.from(applied(payload).get('w') ?? new Float64Array(m * n), (a, i) => a - delta[i]);
    let t = 0;
    for (let i = 0; i < m; i++) for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) t += e[i * n + a] * g[a * n + b] * e[i * n + b];
    return t;
  }

  for (const form of ['full', 'diag'] as const) {
    it(`with the ${form === 'full' ? 'Gram matrix' : 'diagonal'}, the same budget leaves less output error`, async () => {
      const file = path.join(dir, `calib-${form}.safetensors`);
      await fs.mkdir(dir, { recursive: true });
      const g = form === 'full' ? gram : diagGram;
      const data =
        form === 'full'
          ? encodeValues(gram, 'F32')
          : encodeValues(
              Float64Array.from({ length: n }, (_, j) => g[j * n + j]),
              'F32',
            );
      await fs.writeFile(file, writeSafetensors([{ name: 'w', dtype: 'F32', shape: form === 'full' ? [n, n] : [n], data }]));
      const metrics = await loadCalibration(file, new Map([['w', [m, n]]]));
      for (const method of ['mixed', 'auto'] as Method[]) {
        const plain = await build(`plain-${form}-${method}`, pair, 1500, method);
        const calib = await build(`calib-${form}-${method}`, pair, 1500, method, metrics);
        expect(calib.payload.byteLength).toBeLessThanOrEqual(1500);
        expect(calib.report.calibrated).toBe(true);
        const a = outputError(plain.payload, g);
        const b = outputError(calib.payload, g);
        expect(b).toBeLessThan(0.5 * a);
      }
    });
  }

  it('with output weights (<weight>:outputs), the same budget leaves less error where the outputs matter', async () => {
    const o = Float64Array.from({ length: m }, (_, i) => (i < 4 ? 1 : 1e-3)); // 4 of 32 outputs matter
    const file = path.join(dir, 'calib-rows.safetensors');
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(file, writeSafetensors([{ name: 'w:outputs', dtype: 'F32', shape: [m], data: encodeValues(o, 'F32') }]));
    const metrics = await loadCalibration(file, new Map([['w', [m, n]]]));
    const rowError = (payload: Uint8Array): number => {
      const a = applied(payload).get('w') ?? new Float64Array(m * n);
      let t = 0;
      for (let e = 0; e < a.length; e++) t += o[Math.floor(e / n)] * (a[e] - delta[e]) ** 2;
      return t;
    };
    for (const method of ['mixed', 'sign', 'auto'] as Method[]) {
      const plain = await build(`rows-plain-${method}`, pair, 1500, method);
      const calib = await build(`rows-calib-${method}`, pair, 1500, method, metrics);
      expect(calib.payload.byteLength).toBeLessThanOrEqual(1500);
      if (method === 'sign')
        expect(rowError(calib.payload)).toBeLessThanOrEqual(rowError(plain.payload) * (1 + 1e-9)); // rows are fitted alone: the same
      else expect(rowError(calib.payload)).toBeLessThan(0.5 * rowError(plain.payload));
    }
    await fs.writeFile(file, writeSafetensors([{ name: 'w:outputs', dtype: 'F32', shape: [n], data: encodeValues(new Float64Array(n), 'F32') }]));
    await expect(loadCalibration(file, new Map([['w', [m, n]]]))).rejects.toThrow(/calibration w:outputs: expected F32 or F64 of shape \[32\]/);
  });

  it('refuses a calibration file that does not fit the model, naming the tensor', async () => {
    const file = path.join(dir, 'calib-bad.safetensors');
    await fs.writeFile(file, writeSafetensors([{ name: 'w', dtype: 'F32', shape: [n + 1], data: encodeValues(new Float64Array(n + 1), 'F32') }]));
    await expect(loadCalibration(file, new Map([['w', [m, n]]]))).rejects.toThrow(/calibration w: shape \[65\], expected \[64, 64\]/);
    await fs.writeFile(file, writeSafetensors([{ name: 'v', dtype: 'F32', shape: [n], data: encodeValues(new Float64Array(n), 'F32') }]));
    await expect(loadCalibration(file, new Map([['w', [m, n]]]))).rejects.toThrow(/calibration v: the model has no such tensor/);
  });
});
