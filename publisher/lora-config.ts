/** PEFT's adapter_config.json for LoRA adapters: parsing, validation and rank/alpha patterns. */
import { FleetError } from '../platform/errors.ts';

export type LoraErrorCode = 'malformed-adapter' | 'malformed-config' | 'unsupported-adapter';

/** The adapter or its config is not one we can read: a refusal of that input. */
export class LoraError extends FleetError<LoraErrorCode> {
  override readonly name = 'LoraError';
  constructor(code: LoraErrorCode, message: string) {
    super('refusal', code, message);
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
  /** Modules saved whole: their tensors are imported as whole tensors (ΔW = trained − base). */
  modulesToSave?: string[];
  /** DoRA is not a low-rank delta: every module is reported as unmapped. */
  useDora?: boolean;
  /** PEFT's init_lora_weights; 'pissa…', 'olora', 'corda…', 'loftq', 'lora_ga' adapters are relative to a modified base. */
  initLoraWeights?: boolean | string;
  /** PEFT's bias: which biases the adapter saves whole ("all": every bias; "lora_only": the targeted modules'). */
  bias?: 'none' | 'all' | 'lora_only';
  /** lora_bias = true: lora_B has a bias, merged as base bias + scaling·lora_B.bias. */
  loraBias?: boolean;
  /** trainable_token_indices: rows of an embedding replaced by token_adapter.trainable_tokens_delta. */
  trainableTokenIndices?: number[] | Record<string, number[]>;
}

/**
 * Settings with which PEFT's merge_and_unload does not give base + the
 * adapter's delta (or refuses to merge at all). Each refuses the whole adapter.
 */
const UNMERGEABLE: Array<[key: string, why: string]> = [
  ['alora_invocation_tokens', 'it is an activated LoRA (aLoRA), applied only after its invocation tokens; PEFT cannot merge it either'],
  ['layer_replication', 'layer_replication expands the model with layers that have no base tensors of their own'],
  ['kasa_config', "KaSA (lora_diag) truncates the base weight's r smallest singular components when the adapter loads, so the merged model is not base + B·diag·A; merge it with PEFT and build with --target"],
  ['use_qalora', 'QALoRA pools the input features, so its delta is not B·A'],
  ['arrow_config', 'Arrow routes tokens between LoRA experts; PEFT cannot merge it either'],
  ['use_bdlora', 'BD-LoRA stores block-diagonal factors that this converter does not read'],
  ['target_parameters', 'target_parameters adapts nn.Parameter tensors whose names this converter cannot map'],
];
const SHIFTED_BASE = /^(pissa|olora|corda|loftq|lora_ga)/i;

/** The reason PEFT's merge of an adapter with this adapter_config.json is not base + its delta, or undefined. */
function unmergeable(o: Record<string, unknown>): string | undefined {
  for (const [key, why] of UNMERGEABLE) {
    const v = o[key];
    if (v === undefined || v === null || v === false || (Array.isArray(v) && v.length === 0)) continue;
    return `${key} is set: ${why}`;
  }
  const init = o.init_lora_weights;
  if (typeof init === 'string' && SHIFTED_BASE.test(init)) {
    return `init_lora_weights = ${JSON.stringify(init)} changes the base weights when the adapter is created; convert the adapter with PEFT first (save_pretrained with path_initial_model_for_weight_conversion) or merge it and build with --target`;
  }
  return undefined;
}

function configError(detail: string): LoraError {
  return new LoraError('malformed-config', `adapter_config.json: ${detail}`);
}

export function isObject(v: unknown): v is Record<string, unknown> {
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

export const isPositiveInt = (x: unknown): boolean => typeof x === 'number' && Number.isSafeInteger(x) && x > 0;
export const isFiniteNumber = (x: unknown): boolean => typeof x === 'number' && Number.isFinite(x);

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
  const bias = o.bias ?? 'none';
  if (bias !== 'none' && bias !== 'all' && bias !== 'lora_only') throw configError(`bias must be "none", "all" or "lora_only", got ${JSON.stringify(bias)}`);
  config.bias = bias;
  config.loraBias = optBool(o, 'lora_bias');
  const tti = o.trainable_token_indices;
  if (tti !== undefined && tti !== null) config.trainableTokenIndices = tokenIndices(tti);
  const why = unmergeable(o);
  if (why) throw new LoraError('unsupported-adapter', `adapter_config.json: ${why}`);
  return config;
}

function tokenIndices(v: unknown): number[] | Record<string, number[]> {
  const list = (x: unknown, where: string): number[] => {
    if (!Array.isArray(x) || !x.every((i) => typeof i === 'number' && Number.isSafeInteger(i) && i >= 0)) {
      throw configError(`${where} must be a list of token indices (non-negative integers)`);
    }
    return x.slice() as number[];
  };
  if (Array.isArray(v)) return list(v, 'trainable_token_indices');
  if (!isObject(v)) throw configError('trainable_token_indices must be a list of token indices or an object of module → indices');
  const out: Record<string, number[]> = Object.create(null) as Record<string, number[]>;
  for (const [k, x] of Object.entries(v)) out[k] = list(x, `trainable_token_indices[${JSON.stringify(k)}]`);
  return out;
}

/**
 * The value of a rank_pattern / alpha_pattern for a module, as PEFT's
 * get_pattern_key: the first key in the file's order for which Python's
 * `re.match(rf"(.*\.)?({key})$", module)` matches; no key is preferred for
 * being exact. Keys are Python regular expressions: the Python-only syntax is
 * translated ((?P<name>…), (?P=name), \A, \Z, \U…), and a key that cannot be
 * read exactly as Python reads it is a LoraError, never a silent non-match.
 */
export function patternValue(patterns: Record<string, number>, module: string, field = 'pattern'): { key: string; value: number } | undefined {
  const keys = Object.keys(patterns);
  if (keys.length > 1 && keys.some((k) => /^(0|[1-9]\d*)$/.test(k))) {
    throw new LoraError(
      'unsupported-adapter',
      `adapter_config.json: ${field} has a key that is a whole number (${keys.find((k) => /^(0|[1-9]\d*)$/.test(k))}), whose place in the file's order cannot be kept; PEFT takes the first matching key in that order`,
    );
  }
  for (const key of keys) {
    if (pythonRegex(key, field, module).test(module)) return { key, value: patterns[key] };
  }
  return undefined;
}

const SYNTAX = new Set('^$\\.*+?()[]{}|/'.split(''));

/** `^(.*\.)?(key)$` as a JavaScript RegExp that matches exactly what Python's re.match does, or a LoraError. */
export function pythonRegex(key: string, field: string, subject: string): RegExp {
  const refuse = (why: string): LoraError => new LoraError('unsupported-adapter', `adapter_config.json: ${field} key ${JSON.stringify(key)} ${why}; rewrite it as a plain regular expression`);
  let out = '';
  for (let i = 0; i < key.length; i++) {
    const c = key[i];
    if (c === '\\') {
      const d = key[i + 1];
      if (d === undefined) throw refuse('ends with a lone backslash');
      i++;
      if (d === 'A') out += '^';
      else if (d === 'Z') out += '$';
      else if (d === 'U') {
        const hex = key.slice(i + 1, i + 9);
        if (!/^[0-9a-fA-F]{8}$/.test(hex)) throw refuse('has a \\U escape without 8 hex digits');
        out += `\\u{${hex}}`;
        i += 8;
      } else if ('bBdDwWsS'.includes(d)) {
        // Python reads these by Unicode categories, JavaScript by ASCII: the same on an ASCII module name.
        if (/[^\x00-\x7f]/.test(subject)) throw refuse(`uses \\${d}, which Python and JavaScript read differently on the non-ASCII module name ${JSON.stringify(subject)}`);
        out += `\\${d}`;
      } else if (/[0-9]/.test(d)) {
        if (d === '0' || (/[0-7]{2}/.test(key.slice(i, i + 2)) && /[0-7]/.test(key[i + 2] ?? ''))) throw refuse('has an octal escape');
        // Python's groups: 1 is the (.*\.)? prefix, 2 the key; a key's own groups start at 3, as here.
        out += `\\${d}`;
      } else if (/[a-zA-Z]/.test(d)) {
        if (!'tnrfvux'.includes(d)) throw refuse(`has the escape \\${d}, which JavaScript does not read as Python does`);
        out += `\\${d}`;
      } else {
        // Python reads an escaped punctuation character as itself.
        out += SYNTAX.has(d) || d === '-' ? `\\${d}` : `\\u{${d.codePointAt(0)!.toString(16)}}`;
      }
    } else if (c === '(' && key[i + 1] === '?') {
      const rest = key.slice(i + 2);
      const named = /^P<([A-Za-z_][A-Za-z0-9_]*)>/.exec(rest);
      const backref = /^P=([A-Za-z_][A-Za-z0-9_]*)\)/.exec(rest);
      if (named) {
        out += `(?<${named[1]}>`;
        i += 1 + named[0].length;
      } else if (backref) {
        out += `\\k<${backref[1]}>`;
        i += 1 + backref[0].length;
      } else if (/^(:|=|!|<=|<!)/.test(rest)) out += c;
      else throw refuse(`uses the Python-only group (?${rest.slice(0, 2)}…`);
    } else out += c;
  }
  try {
    return new RegExp(`^(.*\\.)?(${out})$`, 'u');
  } catch (e) {
    throw refuse(`is not a regular expression JavaScript reads as Python does (${(e as Error).message})`);
  }
}
