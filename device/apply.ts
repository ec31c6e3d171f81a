import { ModelDigest } from '../protocol/digest.ts';
import { applyTensor, decodePayload, type Payload, type TensorDelta } from '../protocol/lowrank.ts';
import { encodeSafetensorsHeader } from '../protocol/safetensors.ts';
import { digestModelFile, readExactly, readModelHeader } from '../util/model-file.ts';
import { DeviceError } from './reasons.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { fsyncDir, fsyncFile } from '../util/fs-atomic.ts';
import { nodeFs, writeFully, type FileHandlePort, type FsPort } from '../platform/fs-port.ts';
import path from 'node:path';

/**
 * Apply a payload to a model file, one tensor at a time, writing a new file
 * (deterministic layout) and computing its digest on the way. Holds at most
 * one tensor and its replacement in memory. The output is fsynced; the caller
 * renames it into place only when the digest is the one the release names.
 */
export async function applyToFile(baseFile: string, payload: Payload, outFile: string, fsys: FsPort = nodeFs): Promise<string> {
  const deltas = new Map<string, TensorDelta>(payload.tensors.map((t) => [t.name, t]));
  const base = await fsys.open(baseFile, 'r');
  let out: FileHandlePort | undefined;
  try {
    const header = await readModelHeader(base);
    const known = new Set(header.tensors.map((t) => t.name));
    for (const name of deltas.keys()) {
      if (!known.has(name)) throw new ProtocolError('shape-mismatch', `the model has no tensor ${name}`);
    }
    const { header: outHeader, layout } = encodeSafetensorsHeader(header.tensors, header.metadata);
    out = await fsys.open(outFile, 'w');
    await writeFully(out, outHeader, 0);
    const byName = new Map(header.tensors.map((t) => [t.name, t]));
    const digest = new ModelDigest();
    // Two buffers of the largest tensor, reused for every tensor: memory stays flat however large the model.
    const largest = header.tensors.reduce((a, t) => Math.max(a, t.end - t.begin), 0);
    const inBuf = new Uint8Array(largest);
    const outBuf = deltas.size > 0 ? new Uint8Array(largest) : undefined;
    for (const slot of layout) {
      const src = byName.get(slot.name)!;
      const bytes = await readExactly(base, src.end - src.begin, header.dataStart + src.begin, inBuf);
      const delta = deltas.get(slot.name);
      const result = delta ? applyTensor(src, bytes, delta, outBuf) : bytes;
      await writeFully(out, result, outHeader.byteLength + slot.begin);
      digest.addTensor(slot, result);
    }
    await out.sync();
    return digest.digest();
  } finally {
    await base.close();
    await out?.close();
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

/**
 * `fleet apply --model --update`, and the procedure of docs/protocol.md §7.5 that the
 * refusal vectors check: decode the payload (§4.0, §6), read the model (§7.1), its digest
 * must be the payload's `base` (else wrong-base), apply (§7.3), and the result's digest
 * must be the payload's `target` (else digest-mismatch). Writes `outFile` only on success.
 */
export async function applyUpdateFile(modelFile: string, payloadBytes: Uint8Array, outFile: string, fsys: FsPort = nodeFs): Promise<string> {
  const payload = decodePayload(payloadBytes);
  const running = await digestModelFile(modelFile, fsys);
  if (running !== payload.base) {
    throw new DeviceError('wrong-base', `${modelFile} has digest ${running}; the update applies to ${payload.base}`);
  }
  const tmp = `${outFile}.tmp-${process.pid}`;
  try {
    const digest = await applyToFile(modelFile, payload, tmp, fsys);
    if (digest !== payload.target) throw new DeviceError('digest-mismatch', `built ${digest}, the update names ${payload.target}`);
    await fsys.rename(tmp, outFile);
  } finally {
    await fsys.rm(tmp, { force: true });
  }
  return payload.target;
}
