import { decodeValues } from '../protocol/dtypes.ts';
import { readOnnx } from '../protocol/onnx.ts';
import { readSafetensors } from '../protocol/safetensors.ts';
import type { ValidationFigures } from '../protocol/status.ts';
import { DeviceError } from './reasons.ts';

/**
 * Validation of a staged ONNX model with ONNX Runtime (docs/onnx.md, "Validation"):
 * accuracy on a small labelled sample file, against a floor and against the running
 * model on the same samples. onnxruntime-node is an optional dependency, loaded only here.
 *
 * SAMPLES file: safetensors with `inputs` (F32, F16, BF16 or F64; shape [N, …the model's
 * input dims without the batch dim]) and `labels` (an integer dtype, shape [N], each the
 * index of the right class). The model's first graph input is fed and its first output's
 * last axis is the class scores (argmax).
 */

export interface Samples {
  /** N × per-sample values, row-major, as float32. */
  inputs: Float32Array;
  /** The dims of one sample. */
  sampleShape: number[];
  labels: Int32Array;
  count: number;
}

/** The figures of one validation, as the device status carries them (protocol/status.ts). */
export type { ValidationFigures };

/** Checks a staged model before it may become current: figures, or a DeviceError('validation-failed'). */
export interface StagedValidator {
  validate(stagedFile: string, runningFile: string): Promise<ValidationFigures>;
}

export interface OnnxValidationOptions {
  samples: Samples;
  /** Refuse below this accuracy (0..1; default 0). */
  minAccuracy?: number;
  /** Refuse when accuracy falls more than this many percentage points below the running model's (default: no limit). */
  maxDropPoints?: number;
  /** Reads a model file (the device's storage port). */
  readFile: (file: string) => Promise<Uint8Array>;
}

const MAX_SAMPLES = 100_000;

export function readSamples(bytes: Uint8Array, what = 'samples file'): Samples {
  let f;
  try {
    f = readSafetensors(bytes);
  } catch (e) {
    throw new Error(`${what} is not a safetensors file: ${(e as Error).message}`);
  }
  const inputs = f.info('inputs');
  const labels = f.info('labels');
  if (!inputs || !labels) throw new Error(`${what} needs tensors "inputs" [N, …] and "labels" [N] (it has ${f.tensors.map((t) => t.name).join(', ') || 'none'})`);
  if (!['F32', 'F16', 'BF16', 'F64'].includes(inputs.dtype)) throw new Error(`${what}: inputs are ${inputs.dtype}; give F32 (or F16, BF16, F64)`);
  if (!['I64', 'I32', 'I16', 'I8', 'U8', 'U16', 'U32'].includes(labels.dtype)) throw new Error(`${what}: labels are ${labels.dtype}; give an integer dtype`);
  const n = inputs.shape[0];
  if (inputs.shape.length < 2 || labels.shape.length !== 1 || labels.shape[0] !== n || n === 0) {
    throw new Error(`${what}: inputs [${inputs.shape}] and labels [${labels.shape}] must be [N, …] and [N] with N ≥ 1`);
  }
  if (n > MAX_SAMPLES) throw new Error(`${what}: ${n} samples; at most ${MAX_SAMPLES}`);
  const lv = decodeValues(f.tensor('labels'), labels.dtype);
  return {
    inputs: Float32Array.from(decodeValues(f.tensor('inputs'), inputs.dtype)),
    sampleShape: inputs.shape.slice(1),
    labels: Int32Array.from(lv),
    count: n,
  };
}

type Ort = typeof import('onnxruntime-node');
let ortModule: Promise<Ort> | undefined;

/** onnxruntime-node, loaded on first use; a clear error when it is not installed. */
export function loadOrt(): Promise<Ort> {
  ortModule ??= import('onnxruntime-node').catch((e: unknown) => {
    ortModule = undefined;
    throw new Error(`ONNX validation needs onnxruntime-node, which could not be loaded (${(e as Error).message.split('\n')[0]}): install it with npm install onnxruntime-node`);
  });
  return ortModule;
}

/** The graph's first real input (not an initializer), its fixed batch size if any, and its first output. */
function ioOf(model: Uint8Array): { input: string; batch: number | undefined; output: string } {
  const { proto } = readOnnx(model);
  const graph = proto.graph!;
  const inits = new Set((graph.initializer ?? []).map((t) => t.name));
  const input = (graph.input ?? []).find((i) => !inits.has(i.name ?? ''));
  const output = graph.output?.[0];
  if (!input?.name || !output?.name) throw new Error('the model has no graph input or output');
  const d0 = input.type?.tensorType?.shape?.dim?.[0];
  const fixed = d0 && Object.prototype.hasOwnProperty.call(d0, 'dimValue') ? Number(d0.dimValue) : undefined;
  return { input: input.name, batch: fixed, output: output.name };
}

/** The fraction of samples whose argmax over the first output's last axis is the label. */
export async function onnxAccuracy(model: Uint8Array, s: Samples): Promise<{ accuracy: number; predictions: Int32Array }> {
  const ort = await loadOrt();
  const io = ioOf(model);
  if (io.batch !== undefined && io.batch !== 1 && io.batch !== s.count) throw new Error(`the model's input has a fixed batch of ${io.batch}; give ${io.batch} samples, or export it with batch 1 or a dynamic batch`);
  const session = await ort.InferenceSession.create(model);
  try {
    const per = s.sampleShape.reduce((a, b) => a * b, 1);
    const batch = io.batch ?? s.count;
    const predictions = new Int32Array(s.count);
    for (let start = 0; start < s.count; start += batch) {
      const b = Math.min(batch, s.count - start);
      const x = new ort.Tensor('float32', s.inputs.subarray(start * per, (start + b) * per), [b, ...s.sampleShape]);
      const out = (await session.run({ [io.input]: x }))[io.output];
      const scores = out.data as Float32Array;
      const classes = scores.length / b;
      for (let i = 0; i < b; i++) {
        let best = 0;
        for (let c = 1; c < classes; c++) if (scores[i * classes + c] > scores[i * classes + best]) best = c;
        predictions[start + i] = best;
      }
    }
    let correct = 0;
    predictions.forEach((p, i) => (correct += p === s.labels[i] ? 1 : 0));
    return { accuracy: correct / s.count, predictions };
  } finally {
    await session.release();
  }
}

const pct = (x: number): string => `${(100 * x).toFixed(1)} %`;

/** One line: the staged model's accuracy and the running model's. */
export function describeValidation(f: ValidationFigures): string {
  return `ONNX validation: accuracy ${pct(f.accuracy)} on ${f.samples} samples (running model ${f.runningAccuracy === null ? 'not run' : pct(f.runningAccuracy)})`;
}

/** The validator `fleet device --validate-onnx` and `fleet apply --validate-onnx` use. */
export function onnxValidator(o: OnnxValidationOptions): StagedValidator & { last?: ValidationFigures } {
  const v: StagedValidator & { last?: ValidationFigures } = {
    async validate(stagedFile, runningFile) {
      let accuracy: number;
      try {
        accuracy = (await onnxAccuracy(await o.readFile(stagedFile), o.samples)).accuracy;
      } catch (e) {
        throw new DeviceError('validation-failed', `ONNX Runtime could not run the staged model: ${(e as Error).message.split('\n')[0]}`);
      }
      const running = await o.readFile(runningFile).then((b) => onnxAccuracy(b, o.samples)).then((r) => r.accuracy, () => null);
      const figures = { accuracy, runningAccuracy: running, samples: o.samples.count };
      v.last = figures;
      const said = describeValidation(figures).replace('ONNX validation: ', '');
      if (o.minAccuracy !== undefined && accuracy < o.minAccuracy) throw new ValidationRefused(`${said}: below --min-accuracy ${pct(o.minAccuracy)}`, figures);
      if (o.maxDropPoints !== undefined && running !== null && 100 * (running - accuracy) > o.maxDropPoints) {
        throw new ValidationRefused(`${said}: ${(100 * (running - accuracy)).toFixed(1)} points below the running model, over --max-drop ${o.maxDropPoints}`, figures);
      }
      return figures;
    },
  };
  return v;
}

/** A refusal that carries its figures for the status. */
export class ValidationRefused extends DeviceError {
  constructor(detail: string, readonly figures: ValidationFigures) {
    super('validation-failed', detail);
  }
}
