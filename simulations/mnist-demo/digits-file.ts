/** Held-out digits as a small safetensors file (x: F32 [n, 784], y: U8 [n]) and accuracy of a model file on them. */
import { promises as fs } from 'node:fs';
import { readSafetensors, writeSafetensors } from '../../protocol/safetensors.ts';
import { PIXELS, CLASSES, type Dataset } from '../paper/data.ts';
import { accuracy, initMlp, type Mlp } from '../paper/mlp.ts';
import { mlpFromSafetensors } from '../paper/fleet-build.ts';

export function digitsToBytes(ds: Dataset): Uint8Array {
  return writeSafetensors([
    { name: 'x', dtype: 'F32', shape: [ds.n, PIXELS], data: new Uint8Array(ds.x.buffer.slice(ds.x.byteOffset, ds.x.byteOffset + ds.x.byteLength)) },
    { name: 'y', dtype: 'U8', shape: [ds.n], data: ds.y.slice() },
  ]);
}

export function digitsFromBytes(bytes: Uint8Array): Dataset {
  const f = readSafetensors(bytes);
  const xb = f.tensor('x');
  const x = new Float32Array(xb.slice().buffer);
  const y = f.tensor('y').slice();
  return { n: y.length, x, y };
}

/** An MLP 784-h-10 read from a model file (the hidden size from the file's fc1.weight). */
export async function loadMlp(file: string): Promise<Mlp> {
  const bytes = new Uint8Array(await fs.readFile(file));
  const hidden = readSafetensors(bytes).info('fc1.weight')?.shape[0];
  if (!hidden) throw new Error(`${file} has no fc1.weight`);
  return mlpFromSafetensors(
    bytes,
    initMlp(() => 0, PIXELS, hidden, CLASSES),
  );
}

export async function fileAccuracy(modelFile: string, ds: Dataset): Promise<number> {
  return accuracy(await loadMlp(modelFile), ds);
}
