/** The tensors a PEFT adapter holds whole (biases, modules_to_save) and its trainable tokens, mapped onto base tensors. */
import { isUpdatableDtype } from '../protocol/dtypes.ts';
import type { LoraConfig } from './lora-config.ts';
import { altNames, baseCandidates, decodeFloat, fmt, named, sameShape, type AdapterTensor, type BaseInfo, type LoraWhole, type Unmapped } from './lora-tensors.ts';
import { tokensComputed, type LoraComputed } from './lora-variants.ts';

/**
 * A whole tensor's path in the base model: PEFT's wrapper segments removed —
 * `base_layer` (the bias of a targeted module, bias="all"/"lora_only") and
 * `modules_to_save[.<adapter>]`; `original_module` marks the wrapper's copy of the base.
 */
export function basePath(name: string): { path: string; original: boolean } {
  const original = /\.original_module(?=\.)/.test(name);
  const path = name
    .replace(/\.base_layer(?=\.[^.]+$)/, '')
    .replace(/\.modules_to_save\.[^.]+(?=\.)/, '')
    .replace(/\.modules_to_save(?=\.[^.]+$)/, '')
    .replace(/\.original_module(?=\.)/, '');
  return { path, original };
}

/** trainable_token_indices: each token_adapter tensor replaces the listed rows of its embedding. */
export function mapTokens(
  tensors: Array<{ module: string; t: AdapterTensor }>,
  config: LoraConfig,
  byName: Map<string, BaseInfo>,
  claim: (tensor: string, by: string) => string | undefined,
  unmapped: Unmapped,
): LoraComputed[] {
  const out: LoraComputed[] = [];
  const spec = config.trainableTokenIndices;
  for (const { module, t } of tensors) {
    const fail = (reason: string) => unmapped.push({ module, reason });
    let indices: number[] | undefined;
    if (Array.isArray(spec)) indices = tensors.length === 1 ? spec : undefined;
    else if (spec) {
      const keys = Object.keys(spec).filter((k) => named(module, k));
      indices = keys.length === 1 ? spec[keys[0]] : undefined;
    }
    if (!indices) {
      fail(`${t.name} holds trainable tokens but trainable_token_indices does not name its rows for ${module}`);
      continue;
    }
    const tried = baseCandidates(module);
    const found = tried.find((n) => byName.has(n));
    if (!found) {
      fail(`no base tensor for trainable tokens of ${module}: tried ${tried.join(', ')}`);
      continue;
    }
    const info = byName.get(found)!;
    if (info.shape.length !== 2 || !sameShape(t.shape, [indices.length, info.shape[1]])) {
      fail(`${t.name} ${fmt(t.shape)} does not fit ${indices.length} rows of base tensor ${found} ${fmt(info.shape)}`);
      continue;
    }
    if (!isUpdatableDtype(info.dtype)) {
      fail(`base tensor ${found} is ${info.dtype}; only F32, F16 and BF16 can be updated`);
      continue;
    }
    const bad = indices.find((i, k) => i >= info.shape[0] || indices!.indexOf(i) !== k);
    if (bad !== undefined) {
      fail(`trainable_token_indices for ${module} has ${bad >= info.shape[0] ? `row ${bad}, beyond the ${info.shape[0]} rows of ${found}` : `row ${bad} twice`}`);
      continue;
    }
    const rows = decodeFloat(t);
    if (typeof rows === 'string') {
      fail(rows);
      continue;
    }
    const taken = claim(found, t.name);
    if (taken) {
      fail(taken);
      continue;
    }
    out.push(tokensComputed({ module, source: t.name, tensor: found, shape: info.shape.slice(), indices, rows }));
  }
  return out;
}

/** Whole tensors that map onto a base tensor of the same shape and dtype; the rest are reported. */
export function mapWhole(
  tensors: Array<{ path: string; original: boolean; t: AdapterTensor }>,
  byName: Map<string, BaseInfo>,
  claim: (tensor: string, by: string) => string | undefined,
  unmapped: Unmapped,
  adaptedBy: (tensor: string) => string | undefined,
): LoraWhole[] {
  const out: LoraWhole[] = [];
  // The wrapper's copy of the original module is not what PEFT merges: the trained copy beside it is.
  const trained = new Set(tensors.filter((x) => !x.original).map((x) => x.path));
  for (const { path, original, t } of tensors) {
    const dot = path.lastIndexOf('.');
    const module = dot > 0 ? path.slice(0, dot) : path;
    const fail = (reason: string) => unmapped.push({ module, reason });
    if (original && trained.has(path)) continue;
    if (original) {
      fail(`${t.name} is the original of a modules_to_save module whose trained copy the adapter does not hold`);
      continue;
    }
    const what = `${t.name} ${fmt(t.shape)} is a whole tensor (bias training, modules_to_save or a saved embedding layer)`;
    const tried = altNames(path);
    const found = tried.find((n) => byName.has(n));
    if (!found) {
      fail(`${what} but no base tensor matches: tried ${tried.join(', ')}`);
      continue;
    }
    const info = byName.get(found)!;
    if (!sameShape(t.shape, info.shape)) {
      fail(`${what} and does not fit base tensor ${found} ${fmt(info.shape)}: the shapes differ`);
      continue;
    }
    if (t.dtype !== info.dtype) {
      fail(`${what} of ${t.dtype} but base tensor ${found} is ${info.dtype}: the dtypes differ`);
      continue;
    }
    if (!isUpdatableDtype(info.dtype)) {
      fail(`${what} but base tensor ${found} is ${info.dtype}; only F32, F16 and BF16 can be updated`);
      continue;
    }
    const values = decodeFloat(t);
    if (typeof values === 'string') {
      fail(values);
      continue;
    }
    const adapter = adaptedBy(found);
    if (adapter !== undefined) {
      // PEFT saves an adapted embedding's own weight (save_embedding_layers): it must be the base's.
      out.push({ module, source: t.name, tensor: found, shape: info.shape.slice(), dtype: t.dtype, data: t.data, mustEqualBase: adapter });
      continue;
    }
    const same = out.find((w) => w.tensor === found);
    if (same && Buffer.compare(same.data, t.data) === 0) continue; // saved twice (bias="all" with modules_to_save): one value
    const taken = claim(found, t.name);
    if (taken) {
      fail(`${what} but ${taken}`);
      continue;
    }
    out.push({ module, source: t.name, tensor: found, shape: info.shape.slice(), dtype: t.dtype, data: t.data });
  }
  return out;
}
