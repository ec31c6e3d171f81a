import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyToFile } from '../../util/apply-file.ts';
import { decodePayload, isLowRank } from '../../protocol/lowrank.ts';
import { buildUpdate, type BuildMode } from '../../publisher/build.ts';
import { BuildError } from '../../publisher/build-error.ts';
import { twoModelSource } from '../../publisher/delta-source.ts';
import type { Quant } from '../../publisher/quantize.ts';
import { decodeValues, encodeValues } from '../../protocol/dtypes.ts';
import { readSafetensors, writeSafetensors } from '../../protocol/safetensors.ts';
import { modelPair, writeModels, type Spec } from '../support/models.ts';

/** The same model with one tensor's values edited. */
function withTensor(model: Uint8Array, name: string, edit: (v: Float64Array) => void): Uint8Array {
  const f = readSafetensors(model);
  return writeSafetensors(
    f.tensors.map((t) => {
      if (t.name !== name) return t;
      const v = decodeValues(t.data, t.dtype);
      edit(v);
      const data = t.dtype === 'I8' ? new Uint8Array(Int8Array.from(v).buffer) : encodeValues(v, t.dtype as 'F32');
      return { ...t, data };
    }),
  );
}

const SPECS: Spec[] = [
  { name: 'conv.weight', shape: [16, 8, 3, 3] },
  { name: 'fc1.bias', shape: [48] },
  { name: 'fc1.weight', shape: [48, 64] },
  { name: 'fc2.weight', shape: [40, 48], dtype: 'F16' },
  { name: 'head.weight', shape: [10, 40], dtype: 'BF16' },
  { name: 'embed.q', shape: [12, 4], dtype: 'I8' },
  { name: 'frozen.weight', shape: [20, 20] },
];

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-build-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function build(tag: string, pair: { base: Uint8Array; target: Uint8Array }, mode: BuildMode, quant: Quant = 'f32') {
  const files = await writeModels(path.join(dir, tag), pair);
  const source = await twoModelSource(files.base, files.target);
  try {
    return { ...(await buildUpdate({ source, mode, quant })), files };
  } finally {
    await source.close();
  }
}

describe('fleet build from two models', () => {
  it('recovers an exactly low-rank ΔW to float32 precision, and leaves unchanged tensors out', async () => {
    const pair = modelPair(1, SPECS, { 'fc1.weight': { rank: 3 }, 'conv.weight': { rank: 2 }, 'fc1.bias': {} });
    const { payload, report } = await build('exact', pair, { kind: 'rank', rank: 3 });
    const p = decodePayload(payload);
    expect(p.tensors.map((t) => t.name)).toEqual(['conv.weight', 'fc1.bias', 'fc1.weight']);
    const fc1 = report.tensors.find((t) => t.name === 'fc1.weight')!;
    expect(fc1.kind).toBe('low-rank');
    expect(fc1.rank).toBe(3);
    expect(fc1.relError).toBeLessThan(1e-6);
    const conv = report.tensors.find((t) => t.name === 'conv.weight')!;
    expect(conv.rank).toBe(3);
    expect(conv.relError).toBeLessThan(1e-6);
    expect(report.unchanged).toBe(4);
  });

  it('sends a matrix dense when its factors would cost more', async () => {
    const pair = modelPair(2, SPECS, { 'head.weight': { rank: 9 } });
    const { payload } = await build('dense', pair, { kind: 'rank', rank: 9 });
    const head = decodePayload(payload).tensors.find((t) => t.name === 'head.weight')!;
    expect(isLowRank(head)).toBe(false);
  });

  it('never exceeds a budget, spends it where the error is largest, and errs less with more bytes', async () => {
    const pair = modelPair(3, SPECS, { 'fc1.weight': { rank: 6, noise: 2e-4 }, 'conv.weight': { rank: 4, noise: 2e-4 }, 'fc2.weight': { rank: 3, noise: 1e-4 }, 'fc1.bias': {} });
    let previous = Infinity;
    for (const bytes of [1200, 2500, 5000, 9000, 20000]) {
      for (const quant of ['f32', 'f16', 'int8'] as const) {
        const { payload, report } = await build(`budget-${bytes}-${quant}`, pair, { kind: 'budget', bytes }, quant);
        expect(payload.byteLength).toBeLessThanOrEqual(bytes);
        if (quant === 'f32') {
          // Total squared error left, weighted by each tensor's ΔW energy.
          const left = report.tensors.reduce((a, t) => a + t.relError, 0) + (4 - report.tensors.length);
          expect(left).toBeLessThanOrEqual(previous + 1e-9);
          previous = left;
        }
      }
    }
  });

  it('refuses a budget below the smallest possible update, naming the sizes', async () => {
    const pair = modelPair(4, SPECS, { 'fc1.weight': { rank: 2 } });
    await expect(build('tiny', pair, { kind: 'budget', bytes: 100 })).rejects.toThrow(/cannot hold even the smallest update \(\d+ bytes\)/);
  });

  it('--energy keeps at least the fraction asked of every ΔW', async () => {
    const pair = modelPair(5, SPECS, { 'fc1.weight': { rank: 8, noise: 1e-3 }, 'conv.weight': { rank: 5, noise: 1e-3 } });
    for (const fraction of [0.5, 0.8, 0.95, 0.999]) {
      const { report } = await build(`energy-${fraction}`, pair, { kind: 'energy', fraction });
      for (const t of report.tensors) expect(1 - t.relError ** 2).toBeGreaterThanOrEqual(fraction - 1e-6);
    }
  });

  it('int8 and f16 factor errors stay within the documented bounds', async () => {
    const pair = modelPair(6, SPECS, { 'fc1.weight': { rank: 4 }, 'conv.weight': { rank: 3 } });
    const f16 = await build('q-f16', pair, { kind: 'rank', rank: 4 }, 'f16');
    const i8 = await build('q-i8', pair, { kind: 'rank', rank: 4 }, 'int8');
    for (const t of f16.report.tensors) expect(t.relError).toBeLessThan(2e-3);
    for (const t of i8.report.tensors) expect(t.relError).toBeLessThan(3e-2);
    // And they are smaller: f16 about half, int8 about a quarter of f32 factor bytes.
    const f32 = await build('q-f32', pair, { kind: 'rank', rank: 4 }, 'f32');
    expect(f16.payload.byteLength).toBeLessThan(0.6 * f32.payload.byteLength);
    expect(i8.payload.byteLength).toBeLessThan(0.45 * f32.payload.byteLength);
  });

  it("the build's target digest is what the device's own apply produces, for every quantisation", async () => {
    const pair = modelPair(7, SPECS, { 'fc1.weight': { rank: 3, noise: 1e-4 }, 'fc2.weight': { rank: 2 }, 'head.weight': { rank: 2 }, 'conv.weight': { rank: 2 }, 'fc1.bias': {} });
    for (const quant of ['f32', 'f16', 'int8'] as const) {
      const { payload, files } = await build(`digest-${quant}`, pair, { kind: 'rank', rank: 2 }, quant);
      const p = decodePayload(payload);
      const out = path.join(dir, `digest-${quant}`, 'applied.safetensors');
      expect(await applyToFile(files.base, p, out)).toBe(p.target);
    }
  });

  it('refuses bad input with a message naming the tensor and the problem', async () => {
    const pair = modelPair(8, SPECS, { 'fc1.weight': { rank: 2 } });
    const other = modelPair(8, [...SPECS.slice(0, 2), { name: 'fc1.weight', shape: [64, 48] }, ...SPECS.slice(3)], {});
    await expect(build('shape', { base: pair.base, target: other.target }, { kind: 'rank', rank: 2 })).rejects.toThrow(/fc1.weight has shape \[48,64\] in the base and \[64,48\]/);
    const renamed = modelPair(
      8,
      SPECS.map((s) => (s.name === 'fc1.bias' ? { ...s, name: 'fc1.b' } : s)),
      {},
    );
    await expect(build('names', { base: pair.base, target: renamed.target }, { kind: 'rank', rank: 2 })).rejects.toThrow(/only in the base: fc1.bias.*only in the target: fc1.b/);
    const intChanged = withTensor(pair.target, 'embed.q', (v) => (v[3] += 1));
    await expect(build('int', { base: pair.base, target: intChanged }, { kind: 'rank', rank: 2 })).rejects.toThrow(/embed.q is I8 and changed/);
    const nan = withTensor(pair.target, 'fc1.bias', (v) => (v[5] = NaN));
    await expect(build('nan', { base: pair.base, target: nan }, { kind: 'rank', rank: 2 })).rejects.toThrow(/target tensor fc1.bias has NaN at element 5/);
    const inf = withTensor(pair.target, 'fc2.weight', (v) => (v[7] = Infinity));
    await expect(build('inf', { base: pair.base, target: inf }, { kind: 'rank', rank: 2 })).rejects.toThrow(/target tensor fc2.weight has Infinity at element 7/);
    await expect(build('rank0', pair, { kind: 'rank', rank: 0 })).rejects.toThrow(BuildError);
    await expect(build('rankbig', pair, { kind: 'rank', rank: 49 })).rejects.toThrow(/rank 49 is above min\(m, n\) = 48 of the largest changed matrix, fc1.weight/);
    await expect(build('energy0', pair, { kind: 'energy', fraction: 0 })).rejects.toThrow(/energy 0/);
    await expect(build('same', { base: pair.base, target: pair.base }, { kind: 'rank', rank: 2 })).rejects.toThrow(/identical/);
    await expect(build('trunc', { base: pair.base, target: pair.target.subarray(0, pair.target.byteLength - 10) }, { kind: 'rank', rank: 2 })).rejects.toThrow(/target model .* is not a valid safetensors file/);
  });
});

describe('budget allocation', () => {
  it('spends a small budget on the tensor whose ΔW carries the most energy per byte', async () => {
    const specs: Spec[] = [
      { name: 'big.weight', shape: [64, 64] },
      { name: 'small.weight', shape: [64, 64] },
    ];
    const pair = modelPair(12, specs, { 'big.weight': { rank: 4 }, 'small.weight': { rank: 4 } });
    // Shrink one delta by 100×: its singular values are 100× smaller.
    const f = readSafetensors(pair.base);
    const t = readSafetensors(pair.target);
    const smallBase = decodeValues(f.tensor('small.weight'), 'F32');
    const smallTarget = decodeValues(t.tensor('small.weight'), 'F32');
    const shrunk = withTensor(pair.target, 'small.weight', (v) => v.forEach((_, i) => (v[i] = smallBase[i] + (smallTarget[i] - smallBase[i]) / 100)));
    const oneLayer = 2 * 64 * 4 * 4 + 400; // about rank 2 of one layer
    const { report } = await build('alloc', { base: pair.base, target: shrunk }, { kind: 'budget', bytes: oneLayer });
    const big = report.tensors.find((x) => x.name === 'big.weight');
    expect(big?.kind).toBe('low-rank');
    expect(big!.rank).toBeGreaterThanOrEqual(1);
    expect(report.tensors.find((x) => x.name === 'small.weight')).toBeUndefined();
  });
});
