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
 */

export type LoraErrorCode = 'malformed-adapter' | 'malformed-config';

export class LoraError extends Error {
  readonly code: LoraErrorCode;
  constructor(code: LoraErrorCode, message: string) {
    super(message);
    this.name = 'LoraError';
    this.code = code;
  }
}

export interface LoraConfig {
  r: number;
  loraAlpha: number;
  useRslora: boolean;
  fanInFanOut: boolean;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  /** Informational: PEFT's target_modules (a list or a regex string). */
  targetModules?: string[] | string | null;
  /** Modules saved whole (not supported: reported as unmapped). */
  modulesToSave?: string[];
  /** DoRA is not a low-rank delta: every module is reported as unmapped. */
  useDora?: boolean;
  /** PEFT's init_lora_weights; 'pissa…', 'olora', 'corda…', 'loftq' adapters are relative to a modified base. */
  initLoraWeights?: boolean | string;
}

function configError(detail: string): LoraError {
  return new LoraError('malformed-config', `adapter_config.json: ${detail}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function optBool(o: Record<string, unknown>, key: string): boolean {
  const v = o[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw configError(`${key} must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function pattern(o: Record<string, unknown>, key: string, check: (x: unknown) => boolean, what: string): Record<string, number> {
  const v = o[key];
  const out: Record<string, number> = Object.create(null) as Record<string, number>;
  if (v === undefined || v === null) return out;
  if (!isObject(v)) throw configError(`${key} must be an object of module pattern → ${what}`);
  for (const [k, x] of Object.entries(v)) {
    if (k.length === 0) throw configError(`${key} has an empty module pattern`);
    if (!check(x)) throw configError(`${key}[${JSON.stringify(k)}] must be ${what}, got ${JSON.stringify(x)}`);
    out[k] = x as number;
  }
  return out;
}

const isPositiveInt = (x: unknown): boolean => typeof x === 'number' && Number.isSafeInteger(x) && x > 0;
const isFiniteNumber = (x: unknown): boolean => typeof x === 'number' && Number.isFinite(x);

/** Parse and validate PEFT's adapter_config.json for a LoRA adapter. */
export function parseLoraConfig(json: string): LoraConfig {
  let o: unknown;
  try {
    o = JSON.parse(json);
  } catch (e) {
    throw configError(`not JSON: ${(e as Error).message}`);
  }
  if (!isObject(o)) throw configError('not a JSON object');
  if (o.peft_type !== undefined && o.peft_type !== null && o.peft_type !== 'LORA') {
    throw configError(`peft_type is ${JSON.stringify(o.peft_type)}, only "LORA" adapters are supported`);
  }
  if (!isPositiveInt(o.r)) throw configError(`r must be a positive integer, got ${JSON.stringify(o.r)}`);
  if (!isFiniteNumber(o.lora_alpha)) throw configError(`lora_alpha must be a finite number, got ${JSON.stringify(o.lora_alpha)}`);
  const config: LoraConfig = {
    r: o.r as number,
    loraAlpha: o.lora_alpha as number,
    useRslora: optBool(o, 'use_rslora'),
    fanInFanOut: optBool(o, 'fan_in_fan_out'),
    rankPattern: pattern(o, 'rank_pattern', isPositiveInt, 'a positive integer'),
    alphaPattern: pattern(o, 'alpha_pattern', isFiniteNumber, 'a finite number'),
    useDora: optBool(o, 'use_dora'),
  };
  const tm = o.target_modules;
  if (tm !== undefined && tm !== null) {
    if (typeof tm !== 'string' && !(Array.isArray(tm) && tm.every((x) => typeof x === 'string'))) {
      throw configError('target_modules must be a string or a list of strings');
    }
    config.targetModules = typeof tm === 'string' ? tm : tm.slice();
  }
  const ms = o.modules_to_save;
  if (ms !== undefined && ms !== null) {
    if (!Array.isArray(ms) || !ms.every((x) => typeof x === 'string')) throw configError('modules_to_save must be a list of strings');
    config.modulesToSave = ms.slice();
  }
  const init = o.init_lora_weights;
  if (init !== undefined && init !== null) {
    if (typeof init !== 'boolean' && typeof init !== 'string') throw configError('init_lora_weights must be a boolean or a string');
    config.initLoraWeights = init;
  }
  return config;
}

/**
 * The value of a rank_pattern / alpha_pattern for a module, as PEFT's
 * get_pattern_key: an exact key first, then the first key (in file order) that
 * matches `(.*\.)?(key)$` — a suffix at a dot boundary, the key read as a regex.
 */
export function patternValue(patterns: Record<string, number>, module: string): { key: string; value: number } | undefined {
  const keys = Object.keys(patterns);
  if (Object.prototype.hasOwnProperty.call(patterns, module)) return { key: module, value: patterns[module] };
  for (const key of keys) {
    if (module.endsWith(`.${key}`)) return { key, value: patterns[key] };
    let re: RegExp | undefined;
    try {
      re = new RegExp(`^(?:.*\\.)?(?:${key})$`, 'u');
    } catch {
      re = undefined;
    }
    if (re?.test(module)) return { key, value: patterns[key] };
  }
  return undefined;
}

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

export interface LoraResult {
  factors: LoraFactor[];
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
  const alt = module.startsWith('model.') ? module.slice('model.'.length) : `model.${module}`;
  return [`${module}.weight`, `${alt}.weight`];
}

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
    else {
      const dot = name.lastIndexOf('.');
      unmapped.push({
        module: dot > 0 ? name.slice(0, dot) : name,
        reason: /(^|\.)lora_/.test(name)
          ? `${t.name} is not a lora_A/lora_B tensor this converter knows`
          : `${t.name} ${fmt(t.shape)} is a whole tensor (modules_to_save, bias training or saved embedding layers), not a LoRA factor: not supported`,
      });
    }
  }
  for (const m of config.modulesToSave ?? []) {
    unmapped.push({ module: m, reason: `modules_to_save is not supported: ${m} is trained whole, not as a low-rank delta` });
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
  return { factors, unmapped };
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
