import { DeviceError } from './reasons.ts';
import { fsyncDir, fsyncFile } from '../util/fs-atomic.ts';
import { nodeFs, type FsPort } from '../platform/fs-port.ts';
import { PayloadFile } from '../util/payload-file.ts';
import { SAFETENSORS, type ModelFormat } from '../util/model-format.ts';
import path from 'node:path';

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
 * refusal vectors check: decode the payload in `updateFile` (§4.0, §6; streamed from
 * disk, tensor by tensor), read the model (§7.1), its digest must be the payload's
 * `base` (else wrong-base), apply (§7.3), and the result's digest must be the payload's
 * `target` (else digest-mismatch). Writes `outFile` only on success.
 */
export async function applyUpdateFile(modelFile: string, updateFile: string, outFile: string, fsys: FsPort = nodeFs, payloadStart = 0, format: ModelFormat = SAFETENSORS): Promise<string> {
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
