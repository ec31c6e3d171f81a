import { ModelDigest } from '../protocol/digest.ts';
import { FactorScratch, type Payload } from '../protocol/lowrank.ts';
import { applyTensor } from '../protocol/delta-apply.ts';
import { encodeSafetensorsHeader } from '../protocol/safetensors.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { nodeFs, writeFully, type FileHandlePort, type FsPort } from '../platform/fs-port.ts';
import { readExactly, readModelHeader } from './model-file.ts';
import { memoryDeltas, type DeltaReader, type DeltaSource } from './payload-file.ts';

/**
 * Apply a payload to a model file, one tensor at a time, writing a new file
 * (deterministic layout) and computing its digest on the way. Holds at most
 * one base tensor, its replacement and that tensor's delta in memory (the
 * deltas come one at a time from `deltas`: a PayloadFile reads each from disk).
 * The output is fsynced; the caller renames it into place only when the digest
 * is the one the release names. With `outFile` null nothing is written: only
 * the result's digest (`fleet publish --base` checks an update that way).
 */
export async function applyToFile(baseFile: string, deltas: DeltaSource | Payload, outFile: string | null, fsys: FsPort = nodeFs): Promise<string> {
  const source = 'tensors' in deltas ? memoryDeltas(deltas) : deltas;
  const names = source.names;
  const base = await fsys.open(baseFile, 'r');
  let out: FileHandlePort | undefined;
  let reader: DeltaReader | undefined;
  try {
    const header = await readModelHeader(base);
    const known = new Set(header.tensors.map((t) => t.name));
    for (const name of names) {
      if (!known.has(name)) throw new ProtocolError('shape-mismatch', `the model has no tensor ${name}`);
    }
    const { header: outHeader, layout } = encodeSafetensorsHeader(header.tensors, header.metadata);
    out = outFile === null ? undefined : await fsys.open(outFile, 'w');
    if (out) await writeFully(out, outHeader, 0);
    // One scratch for the factors (their bytes and as doubles): the reader checks a delta in it, then apply
    // uses it again; nothing per tensor is allocated, so nothing waits for V8 to collect it.
    const scratch = new FactorScratch({ reuseBytes: true });
    reader = names.size > 0 ? await source.open(scratch) : undefined;
    const byName = new Map(header.tensors.map((t) => [t.name, t]));
    const digest = new ModelDigest();
    // Two buffers of the largest tensor, reused for every tensor: memory stays flat however large the model.
    const largest = header.tensors.reduce((a, t) => Math.max(a, t.end - t.begin), 0);
    const inBuf = new Uint8Array(largest);
    const outBuf = names.size > 0 ? new Uint8Array(largest) : undefined;
    for (const slot of layout) {
      const src = byName.get(slot.name)!;
      const bytes = await readExactly(base, src.end - src.begin, header.dataStart + src.begin, inBuf);
      const result = reader && names.has(slot.name) ? applyTensor(src, bytes, await reader.delta(slot.name), outBuf, scratch) : bytes;
      if (out) await writeFully(out, result, outHeader.byteLength + slot.begin);
      digest.addTensor(slot, result);
    }
    await out?.sync();
    return digest.digest();
  } finally {
    await base.close();
    await out?.close();
    await reader?.close();
  }
}
