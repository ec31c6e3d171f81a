import { isUpdatableDtype } from '../protocol/dtypes.ts';
import { lowRankDims, type TensorDelta } from '../protocol/lowrank.ts';
import { readSafetensors } from '../protocol/safetensors.ts';

/**
 * PEFT LoRA adapters (`adapter_model.safetensors` + `adapter_config.json`) as
 * low-rank deltas of base-model tensors.
 *
 * PEFT saves, per adapted module `<path>` (the module's name in the base model):
 *   base_model.model.<path>.lora_A[.<adapter>].weight   [r, in]          (Linear, Conv1D)
 *   base_model.model.<path>.lora_B[.<adapter>].weight   [out, r]
 *   conv: A [r, in, k...], B [out, r, 1...]
 *   base_model.model.<path>.lora_embedding_A[.<adapter>] [r, num_embeddings]  (Embedding)
 *   base_model.model.<path>.lora_embedding_B[.<adapter>] [dim, r]
 * and ΔW = scaling · B·A (Linear, conv with kernels flattened), (B·A)ᵀ·scaling
 * (fan_in_fan_out, i.e. GPT-2 Conv1D stored [in, out]; and Embedding), with
 * scaling = alpha / r, or alpha / sqrt(r) with use_rslora.
 *
 * Whole tensors saved beside the factors — the biases of `bias="all"` /
 * `bias="lora_only"` (`<path>.base_layer.bias` for a targeted module,
 * `<path>.bias` otherwise), `modules_to_save` modules and saved embedding
 * layers — are the trained tensors themselves: when one maps onto a base
 * tensor of the same shape and dtype it becomes a `LoraWhole`, whose delta
 * (trained − base) the publisher builds like a two-model delta (1-D dense).
 * DoRA, lora_bias and trainable tokens are `LoraComputed` (lora-variants.ts);
 * which tensor of the file is which, lora-classify.ts.
 * What PEFT's merge_and_unload would not turn into base + delta is refused
 * (lora-config.ts); what this reader cannot place is reported in `unmapped`,
 * which fails a build unless --allow-partial. docs/compression.md has the table.
 */

import { classifyTensors, groupProblem, type Group } from './lora-classify.ts';
import { isFiniteNumber, isObject, isPositiveInt, LoraError, patternValue, type LoraConfig } from './lora-config.ts';
import { altNames, baseCandidates, decodeFloat, fmt, named, sameShape, type AdapterTensor, type BaseInfo, type LoraWhole, type Unmapped } from './lora-tensors.ts';
import { doraComputed, loraBiasComputed, type LoraComputed } from './lora-variants.ts';
import { mapTokens, mapWhole } from './lora-whole.ts';

export { LoraError, parseLoraConfig, patternValue, type LoraConfig, type LoraErrorCode } from './lora-config.ts';
export type { LoraComputed } from './lora-variants.ts';
export { baseCandidates, type LoraWhole } from './lora-tensors.ts';

export interface LoraFactor {
  module: string;
  /** The base tensor's name. */
  tensor: string;
  /** The base tensor's shape. */
  shape: number[];
  rank: number;
  /** m×r row-major: B·scaling, or Aᵀ·scaling when the base is stored transposed (fan_in_fan_out, Embedding). */
  u: Float64Array;
  /** r×n row-major: A (conv kernels flattened), or Bᵀ when transposed. */
  v: Float64Array;
}

/** How a square 2-D module's factors were read: PEFT's layout is per layer (Conv1D forces fan_in_fan_out), the shape alone cannot tell. */
export interface LoraLayout {
  module: string;
  tensor: string;
  /** '[out, in]': ΔW = s·B·A (nn.Linear); '[in, out]': ΔW = (s·B·A)ᵀ (fan_in_fan_out, GPT-2 Conv1D). */
  storedAs: '[out, in]' | '[in, out]';
  by: 'shape' | 'the other layers' | 'adapter_config.json fan_in_fan_out' | '--fan-in-fan-out';
}

export interface LoraResult {
  factors: LoraFactor[];
  whole: LoraWhole[];
  /** Tensors whose merged value depends on the base (DoRA, trainable tokens) or that are not factors (lora_bias). */
  computed: LoraComputed[];
  /** What the adapter holds that is not used, and why: a build uses it only with --allow-partial. */
  unmapped: Array<{ module: string; reason: string }>;
  layout: LoraLayout[];
}

export interface LoraOptions {
  /** Modules (names or suffixes at a dot) stored [in, out]; the others [out, in]. Without it, square layers follow the rest. */
  fanInFanOut?: readonly string[];
}

/** Transpose of a rows×cols row-major matrix, times s. */
function transposed(x: Float64Array, rows: number, cols: number, s: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = x[i * cols + j] * s;
  return out;
}

function scaled(x: Float64Array, s: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let j = 0; j < x.length; j++) out[j] = x[j] * s;
  return out;
}

type Layout = { transposed: boolean; a: number[]; b: number[] };

/** Where A and B must sit for this base shape: expected shapes, and whether ΔW is (B·A)ᵀ. */
function expectedLayout(kind: Group['kind'], a: AdapterTensor, base: readonly number[], r: number, fanInFanOut: boolean): Layout | string {
  if (kind === 'embedding') {
    if (base.length !== 2) return `an embedding adapter needs a 2-D base tensor`;
    return { transposed: true, a: [r, base[0]], b: [base[1], r] };
  }
  if (a.shape.length === 2) {
    if (base.length !== 2) return `a linear adapter needs a 2-D base tensor`;
    return fanInFanOut ? { transposed: true, a: [r, base[0]], b: [base[1], r] } : { transposed: false, a: [r, base[1]], b: [base[0], r] };
  }
  if (base.length !== a.shape.length) return `a conv adapter needs a ${a.shape.length}-D base tensor`;
  return { transposed: false, a: [r, ...base.slice(1)], b: [base[0], r, ...base.slice(2).map(() => 1)] };
}

/** A module whose factors found their base tensor, with PEFT's rank and alpha for it. */
interface Resolved {
  module: string;
  g: Group;
  base: BaseInfo;
  r: number;
  alpha: number;
  rSource: string;
  scaling: number;
}

function fits(x: Resolved, fanInFanOut: boolean): boolean {
  const l = expectedLayout(x.g.kind, x.g.a[0], x.base.shape, x.r, fanInFanOut);
  return typeof l !== 'string' && sameShape(x.g.a[0].shape, l.a) && sameShape(x.g.b[0].shape, l.b);
}

/** The low-rank delta of one module, or the reason it cannot be made. */
function factorFor(x: Resolved, fanInFanOut: boolean): LoraFactor | string {
  const { g, base: baseInfo, r } = x;
  const a = g.a[0];
  const b = g.b[0];
  if (a.shape[0] !== r || b.shape.length < 2 || b.shape[1] !== r) {
    return `rank mismatch: the config gives ${x.rSource} = ${r} but ${a.name} is ${fmt(a.shape)} and ${b.name} is ${fmt(b.shape)}`;
  }
  if (!isUpdatableDtype(baseInfo.dtype)) return `base tensor ${baseInfo.name} is ${baseInfo.dtype}; only F32, F16 and BF16 can be updated`;
  const base = baseInfo.shape;
  const layout = expectedLayout(g.kind, a, base, r, fanInFanOut);
  const mismatch = (why: string): string => `${a.name} ${fmt(a.shape)} and ${b.name} ${fmt(b.shape)} do not fit base tensor ${baseInfo.name} ${fmt(base)}: ${why}`;
  if (typeof layout === 'string') return mismatch(layout);
  if (!sameShape(a.shape, layout.a) || !sameShape(b.shape, layout.b)) {
    const hint = g.kind === 'lora' && a.shape.length === 2 && base.length === 2 && fits(x, !fanInFanOut) ? ` (they would fit stored ${fanInFanOut ? '[out, in]' : '[in, out]'})` : '';
    return mismatch(`expected lora_A ${fmt(layout.a)} and lora_B ${fmt(layout.b)}${hint}`);
  }
  const av = decodeFloat(a);
  if (typeof av === 'string') return av;
  const bv = decodeFloat(b);
  if (typeof bv === 'string') return bv;
  const { m, n } = lowRankDims(base);
  // Not transposed: ΔW (m×n) = (B·s)(m×r) · A(r×n). Transposed: ΔW = (B·A)ᵀ·s = (Aᵀ·s)(m×r) · Bᵀ(r×n).
  const u = layout.transposed ? transposed(av, r, m, x.scaling) : scaled(bv, x.scaling);
  const v = layout.transposed ? transposed(bv, n, r, 1) : av.slice();
  return { module: x.module, tensor: baseInfo.name, shape: base.slice(), rank: r, u, v };
}

/**
 * Read an adapter as PEFT's merge_and_unload would merge it: per module the
 * lora_A/lora_B pair as a low-rank delta of its base tensor (DoRA and
 * lora_bias as computed tensors), trainable tokens, and the tensors saved
 * whole. Whatever is not used is reported in `unmapped`; unreadable input and
 * settings PEFT cannot merge into base + delta throw a LoraError.
 */
export function loraFactors(adapter: Uint8Array, config: LoraConfig, base: { tensors: ReadonlyArray<BaseInfo> }, options: LoraOptions = {}): LoraResult {
  let file: ReturnType<typeof readSafetensors>;
  try {
    file = readSafetensors(adapter);
  } catch (e) {
    throw new LoraError('malformed-adapter', `adapter_model.safetensors: ${(e as Error)?.message ?? String(e)}`);
  }
  if (!isObject(config) || !isPositiveInt(config.r) || !isFiniteNumber(config.loraAlpha)) {
    throw new LoraError('malformed-config', 'LoraConfig needs a positive integer r and a finite loraAlpha');
  }
  const unmapped: LoraResult['unmapped'] = [];
  const { groups, wholeTensors, tokenTensors } = classifyTensors(file.tensors, unmapped);
  const byName = new Map(base.tensors.map((t) => [t.name, t]));
  const claimed = new Map<string, string>();
  const claim = (tensor: string, by: string): string | undefined => {
    const prior = claimed.get(tensor);
    if (prior !== undefined) return `base tensor ${tensor} is already targeted by ${prior}`;
    claimed.set(tensor, by);
    return undefined;
  };
  const resolved = resolveGroups(groups, config, byName, unmapped);
  const { decided, layout } = decideLayouts(resolved, config, options, unmapped);
  const { factors, computed } = mapFactors(resolved, decided, byName, claim, unmapped);
  computed.push(...mapTokens(tokenTensors, config, byName, claim, unmapped));
  const whole = mapWhole(wholeTensors, byName, claim, unmapped, (tensor) => (claimed.get(tensor)?.startsWith('module ') ? claimed.get(tensor) : undefined));
  for (const m of config.modulesToSave ?? []) {
    if (!whole.some((w) => named(w.module, m)) && !unmapped.some((u) => named(u.module, m))) {
      unmapped.push({ module: m, reason: `modules_to_save lists ${m} but the adapter holds no tensor of it` });
    }
  }
  return { factors, whole, computed, unmapped, layout };
}

/** Each mergeable group with its base tensor, rank, alpha and scaling (rank_pattern, alpha_pattern, rsLoRA). */
function resolveGroups(groups: Map<string, Group>, config: LoraConfig, byName: Map<string, BaseInfo>, unmapped: Unmapped): Resolved[] {
  const resolved: Resolved[] = [];
  for (const [module, g] of groups) {
    const problem = groupProblem(module, g, config);
    if (problem !== undefined) {
      unmapped.push({ module, reason: problem });
      continue;
    }
    const tried = baseCandidates(module);
    const found = tried.find((n) => byName.has(n));
    if (!found) {
      unmapped.push({ module, reason: `no base tensor for module ${module}: tried ${tried.join(', ')}` });
      continue;
    }
    const rp = patternValue(config.rankPattern, module, 'rank_pattern');
    const ap = patternValue(config.alphaPattern, module, 'alpha_pattern');
    const r = rp?.value ?? config.r;
    const alpha = ap?.value ?? config.loraAlpha;
    const scaling = config.useRslora ? alpha / Math.sqrt(r) : alpha / r;
    resolved.push({ module, g, base: byName.get(found)!, r, alpha, rSource: rp ? `rank_pattern[${JSON.stringify(rp.key)}]` : 'r', scaling });
  }
  return resolved;
}

/** Per resolved module with a decided layout: its factors, or its DoRA / lora_bias computed tensors, each base tensor claimed once. */
function mapFactors(
  resolved: Resolved[],
  decided: Map<string, boolean>,
  byName: Map<string, BaseInfo>,
  claim: (tensor: string, by: string) => string | undefined,
  unmapped: Unmapped,
): { factors: LoraFactor[]; computed: LoraComputed[] } {
  const factors: LoraFactor[] = [];
  const computed: LoraComputed[] = [];
  for (const x of resolved) {
    const fanInFanOut = decided.get(x.module);
    if (fanInFanOut === undefined) continue; // reported by decideLayouts
    const fail = (reason: string) => unmapped.push({ module: x.module, reason });
    const f = factorFor(x, fanInFanOut);
    if (typeof f === 'string') {
      fail(f);
      continue;
    }
    const extra = x.g.magnitude.length ? doraOf(x, f, fanInFanOut) : undefined;
    if (typeof extra === 'string') {
      fail(extra);
      continue;
    }
    const bias = x.g.bias.length ? loraBiasOf(x, byName) : undefined;
    if (typeof bias === 'string') {
      fail(bias);
      continue;
    }
    const taken = claim(f.tensor, `module ${x.module}`) ?? (bias ? claim(bias.tensor, `module ${x.module}`) : undefined);
    if (taken) {
      fail(taken);
      continue;
    }
    if (extra) computed.push(extra);
    else factors.push(f);
    if (bias) computed.push(bias);
  }
  return { factors, computed };
}

/**
 * PEFT reads each 2-D layer by its type: nn.Linear [out, in], GPT-2 Conv1D
 * [in, out] (fan_in_fan_out forced either way). A non-square layer shows its
 * layout by its shape; a square one follows --fan-in-fan-out if given, else the
 * non-square layers when they agree, else adapter_config.json's fan_in_fan_out
 * when there are none; a mixed model with square layers is refused.
 */
function decideLayouts(resolved: Resolved[], config: LoraConfig, options: LoraOptions, unmapped: LoraResult['unmapped']): { decided: Map<string, boolean>; layout: LoraLayout[] } {
  const decided = new Map<string, boolean>();
  const layout: LoraLayout[] = [];
  const note = (x: Resolved, t: boolean, by: LoraLayout['by']): void => {
    decided.set(x.module, t);
    layout.push({ module: x.module, tensor: x.base.name, storedAs: t ? '[in, out]' : '[out, in]', by });
  };
  const square: Resolved[] = [];
  const evidence = new Set<boolean>();
  for (const x of resolved) {
    if (x.g.kind === 'embedding' || x.g.a[0].shape.length !== 2) {
      decided.set(x.module, false);
      continue;
    }
    if (options.fanInFanOut) {
      note(
        x,
        options.fanInFanOut.some((n) => named(x.module, n)),
        '--fan-in-fan-out',
      );
      continue;
    }
    const normal = fits(x, false);
    const flipped = fits(x, true);
    if (normal && flipped) square.push(x);
    else if (normal || flipped) {
      note(x, flipped, 'shape');
      evidence.add(flipped);
    } else decided.set(x.module, config.fanInFanOut); // factorFor names the mismatch
  }
  for (const x of square) {
    if (evidence.size === 2) {
      unmapped.push({
        module: x.module,
        reason: `${x.base.name} ${fmt(x.base.shape)} is square and the model mixes layers stored [out, in] and [in, out] (fan_in_fan_out): name the [in, out] layers with --fan-in-fan-out`,
      });
    } else if (evidence.size === 1) note(x, [...evidence][0], 'the other layers');
    else note(x, config.fanInFanOut, 'adapter_config.json fan_in_fan_out');
  }
  return { decided, layout };
}

function doraOf(x: Resolved, f: LoraFactor, fanInFanOut: boolean): LoraComputed | string {
  const mag = x.g.magnitude[0];
  const values = decodeFloat(mag);
  if (typeof values === 'string') return values;
  const { m, n } = lowRankDims(f.shape);
  const perColumn = x.g.kind === 'embedding' || fanInFanOut;
  const outputs = perColumn ? n : m;
  if (values.length !== outputs) return `${mag.name} ${fmt(mag.shape)} does not fit base tensor ${f.tensor} ${fmt(f.shape)}: DoRA needs one magnitude per output (${outputs})`;
  return doraComputed({
    module: x.module,
    sources: [x.g.a[0].name, x.g.b[0].name, mag.name],
    tensor: f.tensor,
    shape: f.shape,
    lora: () => denseLoraDelta(f),
    magnitude: values,
    perColumn,
  });
}

function loraBiasOf(x: Resolved, byName: Map<string, BaseInfo>): LoraComputed | string {
  const t = x.g.bias[0];
  const tried = altNames(x.module).map((p) => `${p}.bias`);
  const found = tried.find((n) => byName.has(n));
  if (!found) return `${t.name} is a lora_B bias but the base layer has no bias (tried ${tried.join(', ')}); PEFT cannot merge it either`;
  const info = byName.get(found)!;
  if (!sameShape(info.shape, t.shape)) return `${t.name} ${fmt(t.shape)} does not fit base tensor ${found} ${fmt(info.shape)}`;
  if (!isUpdatableDtype(info.dtype)) return `base tensor ${found} is ${info.dtype}; only F32, F16 and BF16 can be updated`;
  const values = decodeFloat(t);
  if (typeof values === 'string') return values;
  return loraBiasComputed({ module: x.module, source: t.name, tensor: found, shape: info.shape.slice(), bias: values, scaling: x.scaling });
}

/** ΔW = U·V as an m×n row-major matrix (m = shape[0], n = product of the rest). */
export function denseLoraDelta(f: LoraFactor): Float64Array {
  const { m, n } = lowRankDims(f.shape);
  const r = f.rank;
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let k = 0; k < r; k++) {
      const uik = f.u[i * r + k];
      for (let j = 0; j < n; j++) out[i * n + j] += uik * f.v[k * n + j];
    }
  }
  return out;
}

function f32Bytes(values: ArrayLike<number>): Uint8Array {
  const a = Float32Array.from(values);
  return new Uint8Array(a.buffer);
}

/**
 * A payload delta for one factor, f32: low-rank when rank <= min(m, n) (the
 * payload's limit), otherwise dense (the f32 rounding of U·V).
 */
export function loraTensorDelta(f: LoraFactor): TensorDelta {
  const { m, n } = lowRankDims(f.shape);
  if (f.rank <= Math.min(m, n)) {
    return { name: f.tensor, shape: f.shape.slice(), rank: f.rank, dtype: 'f32', u: f32Bytes(f.u), v: f32Bytes(f.v) };
  }
  return { name: f.tensor, shape: f.shape.slice(), dense: f32Bytes(denseLoraDelta(f)) };
}
