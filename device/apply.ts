import { promises as fs } from 'node:fs';
import { ModelDigest } from '../protocol/digest.ts';
import { applyTensor, type Payload, type TensorDelta } from '../protocol/lowrank.ts';
import { encodeSafetensorsHeader } from '../protocol/safetensors.ts';
import { readExactly, readModelHeader } from '../util/model-file.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { fsyncDir } from '../util/fs-atomic.ts';
import path from 'node:path';

/**
 * Apply a payload to a model file, one tensor at a time, writing a new file
 * (deterministic layout) and computing its digest on the way. Holds at most
 * one tensor and its replacement in memory. The output is fsynced; the caller
 * renames it into place only when the digest is the one the release names.
 */
export async function applyToFile(baseFile: string, payload: Payload, outFile: string): Promise<string> {
  const deltas = new Map<string, TensorDelta>(payload.tensors.map((t) => [t.name, t]));
  const base = await fs.open(baseFile, 'r');
  let out: fs.FileHandle | undefined;
  try {
    const header = await readModelHeader(base);
    const known = new Set(header.tensors.map((t) => t.name));
    for (const name of deltas.keys()) {
      if (!known.has(name)) throw new ProtocolError('shape-mismatch', `the model has no tensor ${name}`);
    }
    const { header: outHeader, layout } = encodeSafetensorsHeader(header.tensors, header.metadata);
    out = await fs.open(outFile, 'w');
    await out.write(outHeader, 0, outHeader.byteLength, 0);
    const byName = new Map(header.tensors.map((t) => [t.name, t]));
    const digest = new ModelDigest();
    for (const slot of layout) {
      const src = byName.get(slot.name)!;
      const bytes = await readExactly(base, src.end - src.begin, header.dataStart + src.begin);
      const delta = deltas.get(slot.name);
      const result = delta ? applyTensor(src, bytes, delta) : bytes;
      await out.write(result, 0, result.byteLength, outHeader.byteLength + slot.begin);
      digest.addTensor(slot, result);
    }
    await out.sync();
    return digest.digest();
  } finally {
    await base.close();
    await out?.close();
  }
}

/** Rename a finished file into place and make the rename durable. */
export async function commitFile(tmp: string, final: string): Promise<void> {
  await fs.rename(tmp, final);
  await fsyncDir(path.dirname(final));
}
