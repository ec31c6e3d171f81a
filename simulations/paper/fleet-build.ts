/**
 * The product's own path: write the base and the fine-tuned MLP as
 * safetensors, run `buildUpdate` (what `fleet build --budget` runs: truncated
 * randomized SVD of each ΔW, ranks allocated across tensors, CBOR payload),
 * and apply the payload to the base with the device's `applyToModel`.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { decodeValues } from '../../protocol/dtypes.ts';
import { decodePayload } from '../../protocol/lowrank.ts';
import { applyToModel } from '../../protocol/delta-apply.ts';
import { describeDelta, payloadStats } from '../../protocol/delta-info.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { BuildError } from '../../publisher/build-error.ts';
import { buildUpdate } from '../../publisher/build.ts';
import { twoModelSource } from '../../publisher/delta-source.ts';
import { loadCalibration } from '../../publisher/calib.ts';
import type { Method } from '../../publisher/rd.ts';
import type { Quant } from '../../publisher/quantize.ts';
import { cloneMlp, type Mlp, type TensorKey } from './mlp.ts';

/** safetensors names of the MLP's tensors. */
export const TENSOR_NAMES: Record<TensorKey, string> = { w1: 'fc1.weight', b1: 'fc1.bias', w2: 'fc2.weight', b2: 'fc2.bias' };

export function mlpToSafetensors(p: Mlp): Uint8Array {
  const t = (key: TensorKey, shape: number[]): TensorInput => ({
    name: TENSOR_NAMES[key],
    dtype: 'F32',
    shape,
    data: new Uint8Array(p[key].buffer.slice(p[key].byteOffset, p[key].byteOffset + p[key].byteLength)),
  });
  return writeSafetensors([t('w1', [p.hidden, p.inputs]), t('b1', [p.hidden]), t('w2', [p.outputs, p.hidden]), t('b2', [p.outputs])]);
}

export function mlpFromSafetensors(bytes: Uint8Array, like: Mlp): Mlp {
  const file = readSafetensors(bytes);
  const p = cloneMlp(like);
  for (const key of Object.keys(TENSOR_NAMES) as TensorKey[]) {
    const v = decodeValues(file.tensor(TENSOR_NAMES[key]), 'F32');
    p[key] = Float32Array.from(v);
  }
  return p;
}

export interface FleetBuilder {
  /** The base with a `budget`-byte update applied, or null when fleet refuses the budget as too small. */
  build(budget: number, quant: Quant, how?: { method: Method; calib?: string }): Promise<{ model: Mlp; bytes: number; dataBytes: number; ranks: Record<string, number | string> } | null>;
  close(): Promise<void>;
}

/** `calibs`: calibration files (simulations/paper/calib-stats.ts) by name, for builds with `calib: name`. */
export async function fleetBuilder(base: Mlp, target: Mlp, calibs: Record<string, Uint8Array> = {}): Promise<FleetBuilder> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'paper-sim-'));
  const baseFile = path.join(dir, 'base.safetensors');
  const targetFile = path.join(dir, 'target.safetensors');
  const baseBytes = mlpToSafetensors(base);
  await fs.writeFile(baseFile, baseBytes);
  await fs.writeFile(targetFile, mlpToSafetensors(target));
  const calibFiles = new Map<string, string>();
  for (const [name, bytes] of Object.entries(calibs)) {
    const file = path.join(dir, `stats-${calibFiles.size}.safetensors`);
    await fs.writeFile(file, bytes);
    calibFiles.set(name, file);
  }
  return {
    async build(budget, quant, how) {
      const source = await twoModelSource(baseFile, targetFile);
      try {
        const calibFile = how?.calib === undefined ? undefined : calibFiles.get(how.calib);
        if (how?.calib !== undefined && !calibFile) throw new Error(`internal: no calibration file ${how.calib}`);
        const metrics = calibFile ? await loadCalibration(calibFile, new Map(source.base.tensors.map((t) => [t.name, t.shape]))) : undefined;
        const { payload, report } = await buildUpdate({ source, mode: { kind: 'budget', bytes: budget }, quant, method: how?.method, metrics });
        const decoded = decodePayload(payload);
        const applied = applyToModel(baseBytes, decoded);
        const ranks: Record<string, number | string> = {};
        for (const t of decoded.tensors) {
          const d = describeDelta(t);
          const kind = d.kind === 'dense' ? 'dense' : d.kind === 'low-rank' ? (d.rank ?? 0) : d.kind === 'sign' ? 'sign' : `mixed ${d.dtype}`;
          ranks[t.name] = report.refitted.includes(t.name) ? `${kind} re-fit` : kind;
        }
        return { model: mlpFromSafetensors(applied.bytes, base), bytes: payload.byteLength, dataBytes: payloadStats(decoded).dataBytes, ranks };
      } catch (e) {
        if (e instanceof BuildError && e.code === 'budget-too-small') return null;
        throw e;
      } finally {
        await source.close();
      }
    },
    close: () => fs.rm(dir, { recursive: true, force: true }),
  };
}
