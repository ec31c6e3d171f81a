/**
 * The trained low-rank update through the product: the factors are written
 * as a PEFT LoRA adapter (adapter_model.safetensors + adapter_config.json,
 * `bias: "all"` for the trained bias vectors, saved whole), imported with the
 * publisher's own PEFT reader (`parseLoraConfig`, `loraFactors`, `loraSource`:
 * what `fleet build --lora` runs; the whole biases become dense 1-D deltas),
 * built with `buildUpdate` in `factors` mode, and applied with the device's
 * `applyToModel` (what `fleet apply` runs).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { decodePayload, type Payload } from '../../protocol/lowrank.ts';
import { applyToModel } from '../../protocol/delta-apply.ts';
import { payloadStats } from '../../protocol/delta-info.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { buildUpdate } from '../../publisher/build.ts';
import { loraSource, type DeltaSource } from '../../publisher/delta-source.ts';
import { loraFactors, parseLoraConfig } from '../../publisher/lora.ts';
import type { Quant } from '../../publisher/quantize.ts';
import { mlpFromSafetensors, mlpToSafetensors, TENSOR_NAMES } from './fleet-build.ts';
import type { Mlp } from './mlp.ts';
import type { LoraState } from './train.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';

const PREFIX = 'base_model.model.';

function f32(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

/** `state` as a PEFT adapter: lora_A = V (r×in), lora_B = U (out×r), alpha = r (scaling 1), trained biases whole. */
export function loraAdapter(base: Mlp, s: LoraState): { adapter: Uint8Array; config: string } {
  const c = s.config;
  const tensors: TensorInput[] = [];
  const modules: Array<{ name: string; r: number }> = [];
  const fc1 = TENSOR_NAMES.w1.replace(/\.weight$/, '');
  const fc2 = TENSOR_NAMES.w2.replace(/\.weight$/, '');
  if (c.r1 > 0) {
    tensors.push({ name: `${PREFIX}${fc1}.lora_A.weight`, dtype: 'F32', shape: [c.r1, base.inputs], data: f32(s.v1) });
    tensors.push({ name: `${PREFIX}${fc1}.lora_B.weight`, dtype: 'F32', shape: [base.hidden, c.r1], data: f32(s.u1) });
    modules.push({ name: fc1, r: c.r1 });
  }
  if (c.r2 > 0) {
    tensors.push({ name: `${PREFIX}${fc2}.lora_A.weight`, dtype: 'F32', shape: [c.r2, base.hidden], data: f32(s.v2) });
    tensors.push({ name: `${PREFIX}${fc2}.lora_B.weight`, dtype: 'F32', shape: [base.outputs, c.r2], data: f32(s.u2) });
    modules.push({ name: fc2, r: c.r2 });
  }
  // PEFT with bias="all" saves the trained bias vectors whole (base + delta).
  if (c.b1) tensors.push({ name: `${PREFIX}${TENSOR_NAMES.b1}`, dtype: 'F32', shape: [base.hidden], data: f32(Array.from(base.b1, (b, j) => b + s.db1[j])) });
  if (c.b2) tensors.push({ name: `${PREFIX}${TENSOR_NAMES.b2}`, dtype: 'F32', shape: [base.outputs], data: f32(Array.from(base.b2, (b, k) => b + s.db2[k])) });
  const r = modules[0]?.r ?? 1;
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  for (const m of modules) {
    if (m.r !== r) {
      rankPattern[m.name] = m.r;
      alphaPattern[m.name] = m.r;
    }
  }
  const config = {
    peft_type: 'LORA',
    r,
    lora_alpha: r,
    rank_pattern: rankPattern,
    alpha_pattern: alphaPattern,
    target_modules: modules.map((m) => m.name),
    bias: c.b1 || c.b2 ? 'all' : 'none',
    fan_in_fan_out: false,
    use_rslora: false,
  };
  return { adapter: writeSafetensors(tensors), config: JSON.stringify(config, null, 2) };
}

/** The publisher's LoRA source (what `fleet build --lora` builds from); anything it cannot map is an error here. */
export async function peftSource(baseFile: string, adapter: Uint8Array, configJson: string): Promise<DeltaSource> {
  const header = readSafetensors(new Uint8Array(await fs.readFile(baseFile))).header;
  const { factors, whole, unmapped } = loraFactors(adapter, parseLoraConfig(configJson), header);
  if (unmapped.length) throw new Error(`adapter modules not mapped: ${unmapped.map((u) => `${u.module}: ${u.reason}`).join('; ')}`);
  return loraSource(baseFile, factors, whole);
}

export interface ProductUpdate {
  /** The base with the payload applied by the device's code. */
  model: Mlp;
  payload: Uint8Array;
  /** Factor, scale and dense-delta bytes in the payload (no CBOR framing). */
  dataBytes: number;
  target: string;
}

/** A scratch directory holding the base model for product builds; remove with `close`. */
export interface ProductPath {
  baseFile: string;
  baseBytes: Uint8Array;
  /** Adapter → `buildUpdate` (factors mode) → `applyToModel`; checks the digest the payload names. */
  build(s: LoraState, quant: Quant, keep?: string): Promise<ProductUpdate>;
  close(): Promise<void>;
}

export async function productPath(base: Mlp): Promise<ProductPath> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'paper-lora-'));
  const baseFile = path.join(dir, 'base.safetensors');
  const baseBytes = mlpToSafetensors(base);
  await fs.writeFile(baseFile, baseBytes);
  return {
    baseFile,
    baseBytes,
    async build(s, quant, keep) {
      const { adapter, config } = loraAdapter(base, s);
      if (keep) {
        await fs.mkdir(keep, { recursive: true });
        await fs.writeFile(path.join(keep, 'adapter_model.safetensors'), adapter);
        await fs.writeFile(path.join(keep, 'adapter_config.json'), config);
      }
      const source = await peftSource(baseFile, adapter, config);
      let payload: Uint8Array;
      try {
        payload = (await buildUpdate({ source, mode: { kind: 'factors' }, quant })).payload;
      } finally {
        await source.close();
      }
      const decoded: Payload = decodePayload(payload);
      const applied = applyToModel(baseBytes, decoded);
      if (applied.digest !== decoded.target) throw new Error(`applied digest ${applied.digest} is not the payload's target ${decoded.target}`);
      if (keep) await fs.writeFile(path.join(keep, 'update.cbor'), encodeUpdateFile(payload));
      return { model: mlpFromSafetensors(applied.bytes, base), payload, dataBytes: payloadStats(decoded).dataBytes, target: decoded.target };
    },
    close: () => fs.rm(dir, { recursive: true, force: true }),
  };
}
