import type { ValidationFigures } from '../protocol/status.ts';
import { runSamples, type OrtModel, type Samples } from '../util/onnx-run.ts';
import type { FsPort } from '../platform/fs-port.ts';
import { DeviceError } from './reasons.ts';

/**
 * Validation of a staged ONNX model with ONNX Runtime (docs/onnx.md, "Validation"):
 * accuracy on a small labelled sample file (util/onnx-run.ts), against a floor and
 * against the running model on the same samples.
 */

export { loadOrt, readSamples, type Samples } from '../util/onnx-run.ts';
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
  /** Where the model files are (the device's storage port); ONNX Runtime loads them by path. */
  fsys?: FsPort;
}

/** The fraction of samples whose argmax over the first output's last axis is the label. */
export async function onnxAccuracy(model: OrtModel, s: Samples): Promise<{ accuracy: number; predictions: Int32Array }> {
  const predictions = new Int32Array(s.count);
  await runSamples(model, s, (start, b, out) => {
    const scores = Object.values(out)[0].data;
    const classes = scores.length / b;
    for (let i = 0; i < b; i++) {
      let best = 0;
      for (let c = 1; c < classes; c++) if (scores[i * classes + c] > scores[i * classes + best]) best = c;
      predictions[start + i] = best;
    }
  });
  let correct = 0;
  predictions.forEach((p, i) => (correct += p === s.labels[i] ? 1 : 0));
  return { accuracy: correct / s.count, predictions };
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
        accuracy = (await onnxAccuracy({ file: stagedFile, fsys: o.fsys }, o.samples)).accuracy;
      } catch (e) {
        throw new DeviceError('validation-failed', `ONNX Runtime could not run the staged model: ${(e as Error).message.split('\n')[0]}`);
      }
      const running = await onnxAccuracy({ file: runningFile, fsys: o.fsys }, o.samples).then(
        (r) => r.accuracy,
        () => null,
      );
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
  constructor(
    detail: string,
    readonly figures: ValidationFigures,
  ) {
    super('validation-failed', detail);
  }
}
