import { decodeValues, elementCount, elementReader, isUpdatableDtype, type Dtype } from '../protocol/dtypes.ts';
import type { TensorInfo } from '../protocol/safetensors.ts';
import { modelFormatOf, openModelFile, type ModelFile } from '../util/model-format.ts';
import { BuildError } from './build-error.ts';
import { denseLoraDelta, type LoraComputed, type LoraFactor, type LoraWhole } from './lora.ts';

/** A tensor the update changes, and how to get its exact intended ΔW. */
export interface ChangedTensor {
  info: TensorInfo;
  /** Rows and columns of ΔW as a matrix (m = shape[0], n = the rest); 1-D tensors have m = 1. */
  m: number;
  n: number;
  /** Known factors (LoRA): ΔW = u·v exactly. */
  factors?: { u: Float64Array; v: Float64Array; rank: number };
}

/** Where the intended change comes from: a retrained model, or a LoRA adapter. */
export interface DeltaSource {
  base: ModelFile;
  /** Changed tensors in name order. */
  changed: ChangedTensor[];
  /**
   * The exact intended ΔW of a changed tensor (row-major, m×n doubles). `into`: an array of the
   * caller's (m·n long) that a source may fill and return instead of allocating one — for
   * callers that do not keep the result (8 MB for a 1024×1024 tensor, asked for many times).
   */
  delta(t: ChangedTensor, into?: Float64Array): Promise<Float64Array>;
  close(): Promise<void>;
}

function dims(shape: readonly number[]): { m: number; n: number } {
  if (shape.length < 2) return { m: 1, n: shape.reduce((a, b) => a * b, 1) };
  return { m: shape[0], n: shape.slice(1).reduce((a, b) => a * b, 1) };
}

function checkFinite(values: Float64Array, name: string, which: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new BuildError('non-finite', `${which} tensor ${name} has ${values[i]} at element ${i}`);
  }
}

/** The same check on a tensor's bytes, without a decoded copy (a 1024×1024 F32 tensor would be 8 MB of doubles). */
function checkFiniteBytes(bytes: Uint8Array, dtype: Dtype, name: string, which: string): void {
  const read = elementReader(bytes, dtype);
  const count = elementCount(bytes, dtype);
  for (let i = 0; i < count; i++) {
    const x = read(i);
    if (!Number.isFinite(x)) throw new BuildError('non-finite', `${which} tensor ${name} has ${x} at element ${i}`);
  }
}

/** ΔW = target − base, tensor by tensor; refuses models that do not match. */
export async function twoModelSource(baseFile: string, targetFile: string): Promise<DeltaSource> {
  const base = await openModel(baseFile, 'base');
  let target: ModelFile;
  try {
    target = await openModel(targetFile, 'target');
  } catch (e) {
    await base.close();
    throw e;
  }
  try {
    if (base.format !== target.format) throw new BuildError('mismatched-models', `the base is ${base.format} and the target ${target.format}: give two models of one format`);
    // An ONNX graph, opsets and metadata must be the same: an update changes weights only.
    const graph = modelFormatOf(baseFile).structureDifference(base, target);
    if (graph !== undefined) throw new BuildError('mismatched-models', `base and target differ outside their weights, first at ${graph}: an update changes initializer values only; export both from the same graph`);
    const tNames = new Set(target.tensors.map((t) => t.name));
    const bNames = new Set(base.tensors.map((t) => t.name));
    const missing = base.tensors.filter((t) => !tNames.has(t.name)).map((t) => t.name);
    const extra = target.tensors.filter((t) => !bNames.has(t.name)).map((t) => t.name);
    if (missing.length || extra.length) {
      throw new BuildError(
        'mismatched-models',
        `base and target have different tensors: ${[
          missing.length ? `only in the base: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? '…' : ''}` : '',
          extra.length ? `only in the target: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? '…' : ''}` : '',
        ]
          .filter(Boolean)
          .join('; ')}`,
      );
    }
    // Structure first (every name, dtype and shape), then contents.
    for (const b of base.tensors) {
      const t = target.info(b.name)!;
      if (t.dtype !== b.dtype) throw new BuildError('mismatched-models', `tensor ${b.name} is ${b.dtype} in the base and ${t.dtype} in the target`);
      if (t.shape.join(',') !== b.shape.join(',')) throw new BuildError('mismatched-models', `tensor ${b.name} has shape [${b.shape}] in the base and [${t.shape}] in the target`);
    }
    const changed: ChangedTensor[] = [];
    const largest = base.tensors.reduce((a, t) => Math.max(a, t.end - t.begin), 0);
    const buffers = { base: new Uint8Array(largest), target: new Uint8Array(largest) };
    for (const b of base.tensors) {
      const t = target.info(b.name)!;
      const [bb, tb] = [await base.read(b, buffers.base), await target.read(t, buffers.target)];
      if (Buffer.compare(bb, tb) === 0) continue;
      if (!isUpdatableDtype(b.dtype)) {
        throw new BuildError('unsupported-dtype', `tensor ${b.name} is ${b.dtype} and changed; only F32, F16 and BF16 tensors can be updated`);
      }
      checkFiniteBytes(bb, b.dtype, b.name, 'base');
      checkFiniteBytes(tb, t.dtype, b.name, 'target');
      changed.push({ info: b, ...dims(b.shape) });
    }
    return {
      base,
      changed,
      delta: twoModelDelta(base, target, buffers),
      async close() {
        await base.close();
        await target.close();
      },
    };
  } catch (e) {
    await base.close();
    await target.close();
    throw e;
  }
}

/**
 * ΔW = target − base for `twoModelSource`: at most one array of doubles per call, both models
 * read in place into two buffers (the largest tensor's size) reused call after call (unless calls
 * overlap): the builds ask for many.
 */
function twoModelDelta(base: ModelFile, target: ModelFile, buffers: { base: Uint8Array; target: Uint8Array }): DeltaSource['delta'] {
  let reading = false;
  return async (c, into) => {
    const lend = !reading;
    reading = true;
    try {
      const bb = await base.read(c.info, lend ? buffers.base : undefined);
      const tb = await target.read(target.info(c.info.name)!, lend ? buffers.target : undefined);
      const count = elementCount(tb, c.info.dtype);
      const [bv, tv] = [elementReader(bb, c.info.dtype), elementReader(tb, c.info.dtype)];
      const out = into && into.length === count ? into : new Float64Array(count);
      for (let i = 0; i < count; i++) out[i] = tv(i) - bv(i);
      return out;
    } finally {
      if (lend) reading = false;
    }
  };
}

/**
 * ΔW = U·V from a LoRA adapter's factors, and ΔW = trained − base (in
 * doubles) for the tensors the adapter holds whole (biases, modules_to_save),
 * all already mapped to base tensors. A whole tensor equal to the base is
 * unchanged and left out; a whole tensor has no factors, so it is built like
 * a two-model delta (1-D dense; 2-D by SVD, or dense in factors mode).
 * Computed tensors (DoRA, trainable tokens, lora_bias) take their ΔW from the
 * base tensor's values; a computed ΔW of exactly known factors keeps them.
 */
export async function loraSource(baseFile: string, factors: LoraFactor[], whole: readonly LoraWhole[] = [], computed: readonly LoraComputed[] = []): Promise<DeltaSource> {
  const base = await openModel(baseFile, 'base');
  try {
    const changed: ChangedTensor[] = [];
    const updatable = (info: TensorInfo): void => {
      if (!isUpdatableDtype(info.dtype)) throw new BuildError('unsupported-dtype', `tensor ${info.name} is ${info.dtype}; only F32, F16 and BF16 tensors can be updated`);
    };
    for (const f of factors) {
      const info = base.info(f.tensor);
      if (!info) throw new BuildError('bad-adapter', `the adapter targets ${f.tensor}, which the base model does not have`);
      updatable(info);
      changed.push({ info, ...dims(info.shape), factors: { u: f.u, v: f.v, rank: f.rank } });
    }
    const wholeBy = new Map<string, LoraWhole>();
    for (const w of whole) {
      const info = base.info(w.tensor);
      if (!info) throw new BuildError('bad-adapter', `adapter tensor ${w.source} maps to ${w.tensor}, which the base model does not have`);
      if (info.dtype !== w.dtype || info.shape.join(',') !== w.shape.join(',')) {
        throw new BuildError('bad-adapter', `adapter tensor ${w.source} is ${w.dtype} [${w.shape}] but base tensor ${info.name} is ${info.dtype} [${info.shape}]`);
      }
      if (w.mustEqualBase !== undefined) {
        if (Buffer.compare(await base.read(info), w.data) === 0) continue;
        throw new BuildError(
          'bad-adapter',
          `adapter tensor ${w.source} is the saved base weight of ${w.mustEqualBase}, but it differs from ${info.name} in the base model: the adapter was made for another base, or trained that tensor too, which cannot be combined here`,
        );
      }
      if (wholeBy.has(info.name) || changed.some((c) => c.info.name === info.name)) throw new BuildError('bad-adapter', `base tensor ${info.name} is targeted twice by the adapter`);
      updatable(info);
      const bb = await base.read(info);
      if (Buffer.compare(bb, w.data) === 0) continue;
      checkFinite(decodeValues(bb, info.dtype), info.name, 'base');
      checkFinite(decodeValues(w.data, w.dtype), w.source, 'adapter');
      wholeBy.set(info.name, w);
      changed.push({ info, ...dims(info.shape) });
    }
    const computedBy = new Map<string, LoraComputed>();
    const computedDelta = async (k: LoraComputed, info: TensorInfo) => {
      const bv = decodeValues(await base.read(info), info.dtype);
      checkFinite(bv, info.name, 'base');
      const d = k.delta(bv, info.dtype);
      if (typeof d === 'string') throw new BuildError('bad-adapter', d);
      checkFinite(d.delta, info.name, `${k.kind} merged`);
      return d;
    };
    for (const k of computed) {
      const info = base.info(k.tensor);
      if (!info) throw new BuildError('bad-adapter', `the adapter targets ${k.tensor}, which the base model does not have`);
      if (computedBy.has(info.name) || wholeBy.has(info.name) || changed.some((c) => c.info.name === info.name)) throw new BuildError('bad-adapter', `base tensor ${info.name} is targeted twice by the adapter`);
      updatable(info);
      const d = await computedDelta(k, info);
      computedBy.set(info.name, k);
      const fits = d.factors && d.factors.rank <= Math.min(dims(info.shape).m, dims(info.shape).n);
      changed.push({ info, ...dims(info.shape), ...(fits ? { factors: d.factors } : {}) });
    }
    changed.sort((a, b) => Buffer.compare(Buffer.from(a.info.name), Buffer.from(b.info.name)));
    const byTensor = new Map(factors.map((f) => [f.tensor, f]));
    return {
      base,
      changed,
      async delta(c) {
        const k = computedBy.get(c.info.name);
        if (k) return (await computedDelta(k, c.info)).delta;
        const w = wholeBy.get(c.info.name);
        if (!w) return denseLoraDelta(byTensor.get(c.info.name)!);
        const d = decodeValues(w.data, w.dtype);
        const bv = decodeValues(await base.read(c.info), c.info.dtype);
        for (let i = 0; i < d.length; i++) d[i] -= bv[i];
        return d;
      },
      close: () => base.close(),
    };
  } catch (e) {
    await base.close();
    throw e;
  }
}

/** Arrays of doubles to lend to `DeltaSource.delta`, one per length. */
export class DeltaScratch {
  private readonly arrays = new Map<number, Float64Array>();
  get(length: number): Float64Array {
    let a = this.arrays.get(length);
    if (!a) this.arrays.set(length, (a = new Float64Array(length)));
    return a;
  }
}

async function openModel(file: string, which: string): Promise<ModelFile> {
  try {
    return await openModelFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new BuildError('malformed-model', `${which} model ${file} does not exist`);
    throw new BuildError('malformed-model', `${which} model ${file} is not a valid ${modelFormatOf(file).name} file: ${(e as Error).message}`);
  }
}
