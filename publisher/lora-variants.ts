import { roundToDtype, type Dtype, type WritableDtype } from '../protocol/dtypes.ts';
import { lowRankDims } from '../protocol/lowrank.ts';

/**
 * Base tensors whose merged value PEFT computes from the base itself, so the
 * delta is known only once the base tensor's values are read:
 *   - DoRA (`lora_magnitude_vector`): W' = m / ‖W + ΔW‖ · (W + ΔW), the norm
 *     taken per output channel (rows of [out, in] and conv kernels; columns of
 *     fan_in_fan_out [in, out] weights and of embeddings), as PEFT's
 *     DoraLinearLayer / DoraConvNdLayer / DoraEmbeddingLayer get_weight_norm;
 *   - trainable tokens (`token_adapter.trainable_tokens_delta`): rows of an
 *     embedding replaced (`index_copy`), a rank-k update with one-hot U;
 *   - `lora_bias`: bias + scaling·lora_B.bias (the base is not needed).
 */
export interface LoraComputed {
  module: string;
  kind: 'dora' | 'trainable-tokens' | 'lora-bias';
  /** The adapter tensors it is made of. */
  sources: string[];
  /** The base tensor's name. */
  tensor: string;
  shape: number[];
  /** ΔW (m×n doubles, row-major) from the base tensor's values; `factors` when ΔW is exactly U·V. */
  delta(base: Float64Array, dtype: Dtype): { delta: Float64Array; factors?: { u: Float64Array; v: Float64Array; rank: number } } | string;
}

/** DoRA: `lora` is s·B·A in the base tensor's layout (m×n); `perColumn` when the outputs are columns. */
export function doraComputed(o: { module: string; sources: string[]; tensor: string; shape: number[]; lora: () => Float64Array; magnitude: Float64Array; perColumn: boolean }): LoraComputed {
  return {
    module: o.module,
    kind: 'dora',
    sources: o.sources,
    tensor: o.tensor,
    shape: o.shape,
    delta(base) {
      const { m, n } = lowRankDims(o.shape);
      const w = o.lora();
      for (let i = 0; i < w.length; i++) w[i] += base[i];
      const outputs = o.perColumn ? n : m;
      const norm2 = new Float64Array(outputs);
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) norm2[o.perColumn ? j : i] += w[i * n + j] * w[i * n + j];
      const factor = new Float64Array(outputs);
      for (let k = 0; k < outputs; k++) {
        factor[k] = o.magnitude[k] / Math.sqrt(norm2[k]);
        if (!Number.isFinite(factor[k])) return `DoRA output ${k} of ${o.tensor} has weight norm ${Math.sqrt(norm2[k])}: the merge is not finite (PEFT refuses it too)`;
      }
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[i * n + j] = factor[o.perColumn ? j : i] * w[i * n + j] - base[i * n + j];
      return { delta: w };
    },
  };
}

/** Trainable tokens: rows `indices` of an m×n embedding become `rows` (k×n, rounded to the base dtype as PEFT's index_copy does). */
export function tokensComputed(o: { module: string; source: string; tensor: string; shape: number[]; indices: number[]; rows: Float64Array }): LoraComputed {
  return {
    module: o.module,
    kind: 'trainable-tokens',
    sources: [o.source],
    tensor: o.tensor,
    shape: o.shape,
    delta(base, dtype) {
      const { m, n } = lowRankDims(o.shape);
      const k = o.indices.length;
      const u = new Float64Array(m * k);
      const v = new Float64Array(k * n);
      const delta = new Float64Array(m * n);
      const writable = dtype === 'F64' || dtype === 'F32' || dtype === 'F16' || dtype === 'BF16';
      if (!writable) return `base tensor ${o.tensor} is ${dtype}; only float tensors can take trainable tokens`;
      o.indices.forEach((row, t) => {
        u[row * k + t] = 1;
        for (let j = 0; j < n; j++) {
          const d = roundToDtype(o.rows[t * n + j], dtype as WritableDtype) - base[row * n + j];
          v[t * n + j] = d;
          delta[row * n + j] = d;
        }
      });
      return { delta, factors: { u, v, rank: k } };
    },
  };
}

/** lora_bias: the base bias plus scaling·lora_B.bias. */
export function loraBiasComputed(o: { module: string; source: string; tensor: string; shape: number[]; bias: Float64Array; scaling: number }): LoraComputed {
  return {
    module: o.module,
    kind: 'lora-bias',
    sources: [o.source],
    tensor: o.tensor,
    shape: o.shape,
    delta: () => ({ delta: o.bias.map((b) => b * o.scaling) }),
  };
}
