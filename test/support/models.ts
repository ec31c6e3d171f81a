import { promises as fs } from 'node:fs';
import path from 'node:path';
import { encodeValues } from '../../protocol/dtypes.ts';
import { writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { mulberry32 } from '../../util/random.ts';

export type Spec = { name: string; shape: number[]; dtype?: 'F32' | 'F16' | 'BF16' | 'I8'; values?: Float64Array };

export function gaussian(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

export function randomValues(rand: () => number, n: number, scale = 1): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = gaussian(rand) * scale;
  return a;
}

/** m×n = (m×r)(r×n), entries of order `scale`. */
export function lowRankMatrix(rand: () => number, m: number, n: number, r: number, scale: number): Float64Array {
  const u = randomValues(rand, m * r, 1);
  const v = randomValues(rand, r * n, 1);
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let k = 0; k < r; k++) for (let j = 0; j < n; j++) out[i * n + j] += u[i * r + k] * v[k * n + j] * scale;
  return out;
}

export function tensorOf(spec: Spec, values: Float64Array): TensorInput {
  const dtype = spec.dtype ?? 'F32';
  if (dtype === 'I8') return { name: spec.name, dtype, shape: spec.shape, data: new Uint8Array(Int8Array.from(values, (x) => Math.max(-128, Math.min(127, Math.round(x)))).buffer) };
  return { name: spec.name, dtype, shape: spec.shape, data: encodeValues(values, dtype) };
}

/**
 * A base model and a retrained target: each tensor of `changes` gets
 * ΔW = low rank (`rank`) plus optional Gaussian noise; others stay.
 */
export function modelPair(seed: number, specs: Spec[], changes: Record<string, { rank?: number; noise?: number; dense?: boolean }>): { base: Uint8Array; target: Uint8Array; deltas: Map<string, Float64Array> } {
  const rand = mulberry32(seed);
  const bt: TensorInput[] = [];
  const tt: TensorInput[] = [];
  const deltas = new Map<string, Float64Array>();
  for (const s of specs) {
    const count = s.shape.reduce((a, b) => a * b, 1);
    const w = s.values ?? randomValues(rand, count, s.dtype === 'I8' ? 20 : 0.1);
    bt.push(tensorOf(s, w));
    const c = changes[s.name];
    if (!c) {
      tt.push(tensorOf(s, w));
      continue;
    }
    const m = s.shape.length >= 2 ? s.shape[0] : 1;
    const n = count / m;
    const d = c.dense || s.shape.length < 2 ? randomValues(rand, count, 0.01) : lowRankMatrix(rand, m, n, c.rank ?? 2, 0.01);
    if (c.noise) for (let i = 0; i < d.length; i++) d[i] += gaussian(rand) * c.noise;
    const t = w.map((x, i) => x + d[i]);
    deltas.set(s.name, d);
    tt.push(tensorOf(s, t));
  }
  return { base: writeSafetensors(bt), target: writeSafetensors(tt), deltas };
}

export async function writeModels(dir: string, pair: { base: Uint8Array; target: Uint8Array }): Promise<{ base: string; target: string }> {
  await fs.mkdir(dir, { recursive: true });
  const base = path.join(dir, 'base.safetensors');
  const target = path.join(dir, 'target.safetensors');
  await fs.writeFile(base, pair.base);
  await fs.writeFile(target, pair.target);
  return { base, target };
}
