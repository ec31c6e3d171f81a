/** What the LoRA reader's parts share: an adapter's tensors, base tensor names, and how they are named in messages. */
import { decodeValues, isUpdatableDtype, type Dtype } from '../protocol/dtypes.ts';

export interface AdapterTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

export type BaseInfo = { name: string; dtype: string; shape: number[] };

export type Unmapped = Array<{ module: string; reason: string }>;

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
  /** A saved copy of a base tensor that this module adapts: it must equal the base (else the adapter is for another base). */
  mustEqualBase?: string;
}

export const fmt = (shape: readonly number[]): string => `[${shape.join(', ')}]`;
export const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);
/** A module named by `name` (whole, or a suffix at a dot). */
export const named = (module: string, name: string): boolean => module === name || module.endsWith(`.${name}`);

/** Base tensor names tried for a module path, in order. */
export function baseCandidates(module: string): string[] {
  return altNames(module).map((m) => `${m}.weight`);
}

/** A path, then the same path with a leading `model.` removed or added. */
export function altNames(path: string): string[] {
  return [path, path.startsWith('model.') ? path.slice('model.'.length) : `model.${path}`];
}

export function decodeFloat(t: AdapterTensor): Float64Array | string {
  if (t.dtype !== 'F64' && !isUpdatableDtype(t.dtype)) return `${t.name} is ${t.dtype}, not a float tensor`;
  const values = decodeValues(t.data, t.dtype);
  for (let j = 0; j < values.length; j++) {
    if (!Number.isFinite(values[j])) return `${t.name} holds a non-finite value at element ${j}`;
  }
  return values;
}
