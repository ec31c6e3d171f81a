import { decodeValues } from '../protocol/dtypes.ts';
import { readOnnx, type ModelProto } from '../protocol/onnx.ts';
import { nodeFs, type FsPort } from '../platform/fs-port.ts';
import { readOnnxSkeleton } from './onnx-file.ts';
import { readSafetensors } from '../protocol/safetensors.ts';
import { RefusalError, UsageError } from '../platform/errors.ts';

/**
 * Running an ONNX model with ONNX Runtime on a sample file (docs/onnx.md): validation
 * (device/onnx-validate.ts) and calibration statistics (publisher/onnx-calib.ts).
 * onnxruntime-node is an optional dependency, loaded here on first use only.
 *
 * SAMPLES file: safetensors with `inputs` (F32, F16, BF16 or F64; shape [N, …the model's
 * input dims without the batch dim]) and, for validation, `labels` (an integer dtype,
 * shape [N], each the index of the right class).
 */

export interface Samples {
  /** N × per-sample values, row-major, as float32. */
  inputs: Float32Array;
  /** The dims of one sample. */
  sampleShape: number[];
  /** Empty when the file has none (calibration needs no labels). */
  labels: Int32Array;
  count: number;
}

const MAX_SAMPLES = 100_000;

export function readSamples(bytes: Uint8Array, what = 'samples file', needLabels = true): Samples {
  let f;
  try {
    f = readSafetensors(bytes);
  } catch (e) {
    throw new RefusalError('invalid-samples', `${what} is not a safetensors file: ${(e as Error).message}`, { cause: e });
  }
  const inputs = f.info('inputs');
  const labels = f.info('labels');
  if (!inputs || (needLabels && !labels))
    throw new RefusalError('invalid-samples', `${what} needs tensors "inputs" [N, …]${needLabels ? ' and "labels" [N]' : ''} (it has ${f.tensors.map((t) => t.name).join(', ') || 'none'})`);
  if (!['F32', 'F16', 'BF16', 'F64'].includes(inputs.dtype)) throw new RefusalError('invalid-samples', `${what}: inputs are ${inputs.dtype}; give F32 (or F16, BF16, F64)`);
  const n = inputs.shape[0];
  if (inputs.shape.length < 2 || n === 0) throw new RefusalError('invalid-samples', `${what}: inputs [${inputs.shape}] must be [N, …] with N ≥ 1`);
  if (n > MAX_SAMPLES) throw new RefusalError('invalid-samples', `${what}: ${n} samples; at most ${MAX_SAMPLES}`);
  if (labels) {
    if (!['I64', 'I32', 'I16', 'I8', 'U8', 'U16', 'U32'].includes(labels.dtype)) throw new RefusalError('invalid-samples', `${what}: labels are ${labels.dtype}; give an integer dtype`);
    if (labels.shape.length !== 1 || labels.shape[0] !== n) throw new RefusalError('invalid-samples', `${what}: labels [${labels.shape}] must be [N] with N = ${n}, as inputs [${inputs.shape}]`);
  }
  return {
    inputs: Float32Array.from(decodeValues(f.tensor('inputs'), inputs.dtype)),
    sampleShape: inputs.shape.slice(1),
    labels: labels ? Int32Array.from(decodeValues(f.tensor('labels'), labels.dtype)) : new Int32Array(0),
    count: n,
  };
}

type Ort = typeof import('onnxruntime-node');
let ortModule: Promise<Ort> | undefined;

/** onnxruntime-node, loaded on first use; a clear error when it is not installed. */
export function loadOrt(): Promise<Ort> {
  ortModule ??= import('onnxruntime-node').catch((e: unknown) => {
    ortModule = undefined;
    throw new UsageError('onnx-runtime-missing', `ONNX Runtime (onnxruntime-node) could not be loaded (${(e as Error).message.split('\n')[0]}): install it with npm install onnxruntime-node`);
  });
  return ortModule;
}

/** The graph's first real input (not an initializer), its fixed batch size if any, and its first output. */
export function ioOf(model: Uint8Array): { input: string; batch: number | undefined; output: string } {
  return ioOfProto(readOnnx(model).skeletonProto);
}

function ioOfProto(proto: ModelProto): { input: string; batch: number | undefined; output: string } {
  const graph = proto.graph!;
  const inits = new Set((graph.initializer ?? []).map((t) => t.name));
  const input = (graph.input ?? []).find((i) => !inits.has(i.name ?? ''));
  const output = graph.output?.[0];
  if (!input?.name || !output?.name) throw new RefusalError('unsupported-model', 'the model has no graph input or output');
  const d0 = input.type?.tensorType?.shape?.dim?.[0];
  const fixed = d0 && Object.prototype.hasOwnProperty.call(d0, 'dimValue') ? Number(d0.dimValue) : undefined;
  return { input: input.name, batch: fixed, output: output.name };
}

export interface OutputBatch {
  data: Float32Array;
  dims: readonly number[];
}

/** A model for ONNX Runtime: its bytes, or a file that ONNX Runtime loads itself (only its skeleton is read here). */
export type OrtModel = Uint8Array | { file: string; fsys?: FsPort };

/**
 * Run the model on every sample (in one batch, or one sample at a time when its input has
 * a fixed batch of 1), handing each batch's named outputs (default: the first output) to `onBatch`.
 */
export async function runSamples(model: OrtModel, s: Samples, onBatch: (start: number, count: number, outputs: Record<string, OutputBatch>) => void, outputs?: string[]): Promise<void> {
  const ort = await loadOrt();
  const io = model instanceof Uint8Array ? ioOf(model) : ioOfProto((await readOnnxSkeleton(model.file, model.fsys ?? nodeFs)).skeletonProto);
  if (io.batch !== undefined && io.batch !== 1 && io.batch !== s.count)
    throw new RefusalError('unsupported-model', `the model's input has a fixed batch of ${io.batch}; give ${io.batch} samples, or export it with batch 1 or a dynamic batch`);
  const session = model instanceof Uint8Array ? await ort.InferenceSession.create(model) : await ort.InferenceSession.create(model.file);
  try {
    const per = s.sampleShape.reduce((a, b) => a * b, 1);
    const batch = io.batch ?? s.count;
    const names = outputs ?? [io.output];
    for (let start = 0; start < s.count; start += batch) {
      const b = Math.min(batch, s.count - start);
      const x = new ort.Tensor('float32', s.inputs.subarray(start * per, (start + b) * per), [b, ...s.sampleShape]);
      const got = await session.run({ [io.input]: x }, names);
      const out: Record<string, OutputBatch> = {};
      for (const n of names) {
        if (got[n].type !== 'float32') throw new RefusalError('unsupported-model', `output ${n} is ${got[n].type}, not float32`);
        out[n] = { data: got[n].data as Float32Array, dims: got[n].dims };
      }
      onBatch(start, b, out);
    }
  } finally {
    await session.release();
  }
}
