import { decodeValues, isUpdatableDtype, type Dtype } from '../protocol/dtypes.ts';
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
 * `bias="lora_only"` (`base_model.model.<path>.bias`), `modules_to_save`
 * modules and saved embedding layers — are the trained tensors themselves:
 * when one maps onto a base tensor of the same shape and dtype it becomes a
 * `LoraWhole`, whose delta (trained − base) the publisher builds like a
 * two-model delta (1-D tensors dense).
 */

import { isFiniteNumber, isObject, isPositiveInt, LoraError, patternValue, type LoraConfig } from './lora-config.ts';

export { LoraError, parseLoraConfig, patternValue, type LoraConfig, type LoraErrorCode } from './lora-config.ts';

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

/** A tensor the adapter holds whole (trained value, not a delta), mapped onto a base tensor of the same shape and dtype. */
export interface LoraWhole {
  module: string;
  /** The adapter's tensor name. */
  source: string;
  /** The base tensor's name. */
  tensor: string;
  shape: number[];
  dtype: Dtype;
  /** The trained values, encoded in `dtype` (all finite). */
  data: Uint8Array;
}

export interface LoraResult {
  factors: LoraFactor[];
  whole: LoraWhole[];
  unmapped: Array<{ module: string; reason: string }>;
}

interface AdapterTensor { name: string; dtype: Dtype; shape: number[]; data: Uint8Array }

interface Group {
  kind: 'lora' | 'embedding';
  a: AdapterTensor[];
  b: AdapterTensor[];
  problems: string[];
}

const PEFT_PREFIX = 'base_model.model.';
const FACTOR = /^(.+)\.lora_(A|B)(?:\.[^.]+)?\.weight$/;
const EMBEDDING_FACTOR = /^(.+)\.lora_embedding_(A|B)(?:\.[^.]+)?$/;
const SHIFTED_BASE = /^(pissa|olora|corda|loftq)/i;

const fmt = (shape: readonly number[]): string => `[${shape.join(', ')}]`;
const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

/** Base tensor names tried for a module path, in order. */
export function baseCandidates(module: string): string[] {
  return altNames(module).map((m) => `${m}.weight`);
}

/** A path, then the same path with a leading `model.` removed or added. */
function altNames(path: string): string[] {
  return [path, path.startsWith('model.') ? path.slice('model.'.length) : `model.${path}`];
}

/** A whole tensor's path in the base model: PEFT's `modules_to_save.<adapter>.` wrapper segment removed. */
const MODULES_TO_SAVE_SEGMENT = /\.modules_to_save\.[^.]+(?=\.)/;

function decodeFloat(t: AdapterTensor): Float64Array | string {
  if (t.dtype !== 'F64' && !isUpdatableDtype(t.dtype)) return `${t.name} is ${t.dtype}, not a float tensor`;
  const values = decodeValues(t.data, t.dtype);
  for (let j = 0; j < values.length; j++) {
    if (!Number.isFinite(values[j])) return `${t.name} holds a non-finite value at element ${j}`;
  }
  return values;
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
    return fanInFanOut
      ? { transposed: true, a: [r, base[0]], b: [base[1], r] }
      : { transposed: false, a: [r, base[1]], b: [base[0], r] };
  }
  if (base.length !== a.shape.length) return `a conv adapter needs a ${a.shape.length}-D base tensor`;
  return { transposed: false, a: [r, ...base.slice(1)], b: [base[0], r, ...base.slice(2).map(() => 1)] };
}

/** The low-rank delta of one module, or the reason it cannot be made. */
function factorFor(module: string, g: Group, config: LoraConfig, baseInfo: { name: string; dtype: string; shape: number[] }): LoraFactor | string {
  const a = g.a[0];
  const b = g.b[0];
  const rp = patternValue(config.rankPattern, module);
  const ap = patternValue(config.alphaPattern, module);
  const r = rp?.value ?? config.r;
  const alpha = ap?.value ?? config.loraAlpha;
  const rSource = rp ? `rank_pattern[${JSON.stringify(rp.key)}]` : 'r';
  if (a.shape[0] !== r || b.shape.length < 2 || b.shape[1] !== r) {
    return `rank mismatch: the config gives ${rSource} = ${r} but ${a.name} is ${fmt(a.shape)} and ${b.name} is ${fmt(b.shape)}`;
  }
  if (!isUpdatableDtype(baseInfo.dtype)) return `base tensor ${baseInfo.name} is ${baseInfo.dtype}; only F32, F16 and BF16 can be updated`;
  const base = baseInfo.shape;
  const layout = expectedLayout(g.kind, a, base, r, config.fanInFanOut);
  const mismatch = (why: string): string =>
    `${a.name} ${fmt(a.shape)} and ${b.name} ${fmt(b.shape)} do not fit base tensor ${baseInfo.name} ${fmt(base)}: ${why}`;
  if (typeof layout === 'string') return mismatch(layout);
  if (!sameShape(a.shape, layout.a) || !sameShape(b.shape, layout.b)) {
    let hint = '';
    if (g.kind === 'lora' && a.shape.length === 2 && base.length === 2) {
      const other = expectedLayout('lora', a, base, r, !config.fanInFanOut) as Layout;
      if (sameShape(a.shape, other.a) && sameShape(b.shape, other.b)) hint = ` (they would fit with fan_in_fan_out = ${!config.fanInFanOut})`;
    }
    return mismatch(`expected lora_A ${fmt(layout.a)} and lora_B ${fmt(layout.b)}${hint}`);
  }
  const av = decodeFloat(a);
  if (typeof av === 'string') return av;
  const bv = decodeFloat(b);
  if (typeof bv === 'string') return bv;
  const scaling = config.useRslora ? alpha / Math.sqrt(r) : alpha / r;
  const { m, n } = lowRankDims(base);
  // Not transposed: ΔW (m×n) = (B·s)(m×r) · A(r×n). Transposed: ΔW = (B·A)ᵀ·s = (Aᵀ·s)(m×r) · Bᵀ(r×n).
  const u = layout.transposed ? transposed(av, r, m, scaling) : scaled(bv, scaling);
  const v = layout.transposed ? transposed(bv, n, r, 1) : av.slice();
  return { module, tensor: baseInfo.name, shape: base.slice(), rank: r, u, v };
}

/**
 * Group an adapter's lora_A/lora_B pairs per module and turn each into a
 * low-rank delta of its base tensor. Problems with a well-formed adapter are
 * reported in `unmapped`; only unreadable input throws a LoraError.
 */
export function loraFactors(
  adapter: Uint8Array,
  config: LoraConfig,
  base: { tensors: ReadonlyArray<{ name: string; dtype: string; shape: number[] }> },
): LoraResult {
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
  const wholeTensors: Array<{ path: string; t: AdapterTensor }> = [];
  const groups = new Map<string, Group>();
  const group = (module: string, kind: Group['kind']): Group => {
    let g = groups.get(module);
    if (!g) groups.set(module, (g = { kind, a: [], b: [], problems: [] }));
    else if (g.kind !== kind) g.problems.push('it has both lora_A/lora_B and lora_embedding_A/lora_embedding_B tensors');
    return g;
  };
  for (const t of file.tensors) {
    const name = t.name.startsWith(PEFT_PREFIX) ? t.name.slice(PEFT_PREFIX.length) : t.name;
    const f = FACTOR.exec(name);
    const e = f ? null : EMBEDDING_FACTOR.exec(name);
    const hit = f ?? e;
    if (hit) {
      const g = group(hit[1], f ? 'lora' : 'embedding');
      (hit[2] === 'A' ? g.a : g.b).push({ name: t.name, dtype: t.dtype, shape: t.shape, data: t.data });
      continue;
    }
    const dora = /^(.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$/.exec(name);
    const bias = /^(.+)\.lora_(?:embedding_)?B(?:\.[^.]+)?\.bias$/.exec(name);
    if (dora) group(dora[1], 'lora').problems.push(`${t.name} is a DoRA magnitude vector; DoRA is not a low-rank delta`);
    else if (bias) group(bias[1], 'lora').problems.push(`${t.name} is a LoRA bias (lora_bias); bias deltas are not supported`);
    else if (/(^|\.)lora_/.test(name)) {
      const dot = name.lastIndexOf('.');
      unmapped.push({ module: dot > 0 ? name.slice(0, dot) : name, reason: `${t.name} is not a lora_A/lora_B tensor this converter knows` });
    } else {
      wholeTensors.push({ path: name.replace(MODULES_TO_SAVE_SEGMENT, ''), t: { name: t.name, dtype: t.dtype, shape: t.shape, data: t.data } });
    }
  }
  const byName = new Map(base.tensors.map((t) => [t.name, t]));
  const claimed = new Map<string, string>();
  const factors: LoraFactor[] = [];
  for (const [module, g] of groups) {
    const fail = (reason: string) => unmapped.push({ module, reason });
    const [aKey, bKey] = g.kind === 'lora' ? ['lora_A', 'lora_B'] : ['lora_embedding_A', 'lora_embedding_B'];
    if (g.problems.length > 0) { fail(g.problems.join('; ')); continue; }
    if (config.useDora) { fail('the config has use_dora = true; DoRA is not a low-rank delta'); continue; }
    if (typeof config.initLoraWeights === 'string' && SHIFTED_BASE.test(config.initLoraWeights)) {
      fail(`init_lora_weights = ${JSON.stringify(config.initLoraWeights)} changes the base weights; convert the adapter with PEFT first (path_initial_model_for_weight_conversion)`);
      continue;
    }
    if (g.a.length > 1 || g.b.length > 1) {
      fail(`several adapters in one file: ${[...g.a, ...g.b].map((t) => t.name).join(', ')}`);
      continue;
    }
    if (g.a.length === 0 || g.b.length === 0) {
      const have = g.a[0] ?? g.b[0];
      fail(`${have.name} has no matching ${g.a.length === 0 ? aKey : bKey} tensor`);
      continue;
    }
    const tried = baseCandidates(module);
    const found = tried.find((n) => byName.has(n));
    if (!found) { fail(`no base tensor for module ${module}: tried ${tried.join(', ')}`); continue; }
    const prior = claimed.get(found);
    if (prior !== undefined) { fail(`base tensor ${found} is already targeted by module ${prior}`); continue; }
    const result = factorFor(module, g, config, byName.get(found)!);
    if (typeof result === 'string') { fail(result); continue; }
    claimed.set(found, module);
    factors.push(result);
  }
  const whole = mapWhole(wholeTensors, byName, claimed, unmapped);
  for (const m of config.modulesToSave ?? []) {
    if (!whole.some((w) => w.module === m || w.module.endsWith(`.${m}`)) && !unmapped.some((u) => u.module === m || u.module.endsWith(`.${m}`))) {
      unmapped.push({ module: m, reason: `modules_to_save lists ${m} but the adapter holds no tensor of it` });
    }
  }
  return { factors, whole, unmapped };
}

/** Whole tensors that map onto a base tensor of the same shape and dtype; the rest are reported. */
function mapWhole(
  tensors: Array<{ path: string; t: AdapterTensor }>,
  byName: Map<string, { name: string; dtype: string; shape: number[] }>,
  claimed: Map<string, string>,
  unmapped: LoraResult['unmapped'],
): LoraWhole[] {
  const out: LoraWhole[] = [];
  for (const { path, t } of tensors) {
    const dot = path.lastIndexOf('.');
    const module = dot > 0 ? path.slice(0, dot) : path;
    const fail = (reason: string) => unmapped.push({ module, reason });
    const what = `${t.name} ${fmt(t.shape)} is a whole tensor (bias training, modules_to_save or a saved embedding layer)`;
    const tried = altNames(path);
    const found = tried.find((n) => byName.has(n));
    if (!found) { fail(`${what} but no base tensor matches: tried ${tried.join(', ')}`); continue; }
    const info = byName.get(found)!;
    if (!sameShape(t.shape, info.shape)) { fail(`${what} and does not fit base tensor ${found} ${fmt(info.shape)}: the shapes differ`); continue; }
    if (t.dtype !== info.dtype) { fail(`${what} of ${t.dtype} but base tensor ${found} is ${info.dtype}: the dtypes differ`); continue; }
    if (!isUpdatableDtype(info.dtype)) { fail(`${what} but base tensor ${found} is ${info.dtype}; only F32, F16 and BF16 can be updated`); continue; }
    const values = decodeFloat(t);
    if (typeof values === 'string') { fail(values); continue; }
    const prior = claimed.get(found);
    if (prior !== undefined) { fail(`${what} but base tensor ${found} is already targeted by ${prior}`); continue; }
    claimed.set(found, t.name);
    out.push({ module, source: t.name, tensor: found, shape: info.shape.slice(), dtype: t.dtype, data: t.data });
  }
  return out;
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
