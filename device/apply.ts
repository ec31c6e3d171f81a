import { ModelDigest } from '../protocol/digest.ts';
import { applyTensor, FactorScratch, type Payload } from '../protocol/lowrank.ts';
import { encodeSafetensorsHeader } from '../protocol/safetensors.ts';
import { digestModelFile, readExactly, readModelHeader } from '../util/model-file.ts';
import { DeviceError } from './reasons.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { fsyncDir, fsyncFile } from '../util/fs-atomic.ts';
import { nodeFs, writeFully, type FileHandlePort, type FsPort } from './fs-port.ts';
import { memoryDeltas, PayloadFile, type DeltaReader, type DeltaSource } from './payload-file.ts';
import path from 'node:path';

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
    // One scratch for the factors as doubles: the reader checks a delta in it, then apply uses it again.
    const scratch = new FactorScratch();
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

/**
 * Put a finished file in place so that a power cut leaves it whole or absent:
 * fsync its bytes (a copied file was never fsynced; for one that was, this
 * costs nothing), rename it, fsync the directory. Without the first fsync the
 * name could survive a power cut and the bytes not: a torn model.
 */
export async function commitFile(tmp: string, final: string, fsys: FsPort = nodeFs): Promise<void> {
  await fsyncFile(tmp, fsys);
  await fsys.rename(tmp, final);
  await fsyncDir(path.dirname(final), fsys);
}

/** How applyUpdateFile digests and rewrites the model (util/model-format.ts's ModelFormat has both). */
export interface ApplyFormat {
  digestFile(file: string, fsys: FsPort): Promise<string>;
  apply(baseFile: string, payload: DeltaSource | Payload, outFile: string, fsys: FsPort): Promise<string>;
}
const SAFETENSORS_APPLY: ApplyFormat = { digestFile: (f, fsys) => digestModelFile(f, fsys), apply: (b, p, o, fsys) => applyToFile(b, p, o, fsys) };

/**
 * `fleet apply --model --update`, and the procedure of docs/protocol.md §7.5 that the
 * refusal vectors check: decode the payload in `updateFile` (§4.0, §6; streamed from
 * disk, tensor by tensor), read the model (§7.1), its digest must be the payload's
 * `base` (else wrong-base), apply (§7.3), and the result's digest must be the payload's
 * `target` (else digest-mismatch). Writes `outFile` only on success.
 */
export async function applyUpdateFile(modelFile: string, updateFile: string, outFile: string, fsys: FsPort = nodeFs, payloadStart = 0, format: ApplyFormat = SAFETENSORS_APPLY): Promise<string> {
  const payload = await PayloadFile.verify(updateFile, fsys, {}, payloadStart);
  const running = await format.digestFile(modelFile, fsys);
  if (running !== payload.base) {
    throw new DeviceError('wrong-base', `${modelFile} has digest ${running}; the update applies to ${payload.base}`);
  }
  const tmp = `${outFile}.tmp-${process.pid}`;
  try {
    const digest = await format.apply(modelFile, payload, tmp, fsys);
    if (digest !== payload.target) throw new DeviceError('digest-mismatch', `built ${digest}, the update names ${payload.target}`);
    await fsys.rename(tmp, outFile);
  } finally {
    await fsys.rm(tmp, { force: true });
  }
  return payload.target;
}
