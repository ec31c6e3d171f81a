import { promises as fs } from 'node:fs';
import type { DeviceStorage } from '../device/storage.ts';
import { onnxValidator, type StagedValidator } from '../device/onnx-validate.ts';
import { loadOrt, readSamples } from '../util/onnx-run.ts';
import { ONNX } from '../util/model-format.ts';
import { UsageError } from '../platform/errors.ts';

/** `--validate-onnx SAMPLES [--min-accuracy X] [--max-drop P]` of `fleet device` and `fleet apply`. */
export interface OnnxValidationFlags {
  validateOnnx?: string;
  minAccuracy?: number;
  maxDrop?: number;
}

/**
 * The validator the flags ask for, checked before anything runs: an ONNX model
 * directory, a readable samples file, ONNX Runtime loadable. Undefined without --validate-onnx.
 */
export async function onnxValidatorFor(o: OnnxValidationFlags, storage: DeviceStorage): Promise<StagedValidator | undefined> {
  if (!o.validateOnnx) {
    if (o.minAccuracy !== undefined || o.maxDrop !== undefined) throw new UsageError('bad-options', '--min-accuracy and --max-drop need --validate-onnx SAMPLES');
    return undefined;
  }
  if (storage.format !== ONNX) throw new UsageError('bad-options', `--validate-onnx needs an ONNX model; ${storage.dir} holds ${storage.format.name} (start with --initial MODEL.onnx)`);
  const bytes = await fs.readFile(o.validateOnnx).catch((e: NodeJS.ErrnoException) => {
    throw new UsageError('bad-options', `--validate-onnx ${o.validateOnnx}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`);
  });
  const samples = readSamples(new Uint8Array(bytes), `--validate-onnx ${o.validateOnnx}`);
  await loadOrt();
  return onnxValidator({ samples, minAccuracy: o.minAccuracy, maxDropPoints: o.maxDrop, fsys: storage.fsys });
}
