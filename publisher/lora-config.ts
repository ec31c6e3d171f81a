/** PEFT's adapter_config.json for LoRA adapters: parsing, validation and rank/alpha patterns. */

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
  /** Modules saved whole: their tensors are imported as whole tensors (ΔW = trained − base). */
  modulesToSave?: string[];
  /** DoRA is not a low-rank delta: every module is reported as unmapped. */
  useDora?: boolean;
  /** PEFT's init_lora_weights; 'pissa…', 'olora', 'corda…', 'loftq' adapters are relative to a modified base. */
  initLoraWeights?: boolean | string;
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
