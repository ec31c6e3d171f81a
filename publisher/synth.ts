import { encodePayload, type Payload, type TensorDelta } from '../protocol/lowrank.ts';
import { applyToModel } from '../protocol/delta-apply.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../protocol/safetensors.ts';
import { safetensorsDigest } from '../protocol/digest.ts';
import { mulberry32, randomF32 } from '../util/random.ts';

/** An MLP-shaped model: [out, in] weights and [out] biases, F32. */
export const DEFAULT_LAYERS: Array<[number, number]> = [
  [512, 784],
  [1024, 512],
  [1024, 1024],
  [256, 1024],
  [10, 256],
];

function bytesOf(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A reproducible synthetic base model (uniform init scaled by 1/sqrt(fan-in)). */
export function synthesizeModel(seed = 1, layers = DEFAULT_LAYERS): Uint8Array {
  const rand = mulberry32(seed);
  const tensors: TensorInput[] = [];
  layers.forEach(([out, inp], k) => {
    tensors.push({ name: `layers.${k}.weight`, dtype: 'F32', shape: [out, inp], data: bytesOf(randomF32(rand, out * inp, 1 / Math.sqrt(inp))) });
    tensors.push({ name: `layers.${k}.bias`, dtype: 'F32', shape: [out], data: bytesOf(randomF32(rand, out, 0.01)) });
  });
  return writeSafetensors(tensors, { producer: 'fleet synth', seed: String(seed) });
}

export interface SynthUpdate {
  payload: Uint8Array;
  target: Uint8Array;
  baseDigest: string;
  targetDigest: string;
}

/**
 * A random low-rank update of every 2-D tensor (rank `rank`, f32 factors) and
 * a dense delta of every 1-D tensor. The target digest is computed with the
 * very apply the device runs.
 */
export function synthesizeUpdate(base: Uint8Array, rank = 4, seed = 2): SynthUpdate {
  const rand = mulberry32(seed);
  const model = readSafetensors(base);
  const tensors: TensorDelta[] = [];
  for (const t of model.header.tensors) {
    if (t.shape.length >= 2) {
      const m = t.shape[0];
      const n = t.shape.slice(1).reduce((a, b) => a * b, 1);
      const r = Math.min(rank, m, n);
      // Product entries ~ r * 0.02^2 * ... small next to the weights.
      tensors.push({ name: t.name, shape: t.shape, rank: r, dtype: 'f32', u: bytesOf(randomF32(rand, m * r, 0.05)), v: bytesOf(randomF32(rand, r * n, 0.05)) });
    } else {
      tensors.push({ name: t.name, shape: t.shape, dense: bytesOf(randomF32(rand, t.shape[0] ?? 1, 0.001)) });
    }
  }
  const baseDigest = safetensorsDigest(base);
  const draft: Payload = { v: 1, base: baseDigest, target: '0'.repeat(64), tensors };
  const { bytes: target, digest } = applyToModel(base, draft);
  return { payload: encodePayload({ ...draft, target: digest }), target, baseDigest, targetDigest: digest };
}
