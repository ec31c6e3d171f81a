import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { decodePayload } from '../protocol/lowrank.ts';
import { modelFormatOf } from '../util/model-format.ts';
import { PublishError } from './group-release.ts';
import { orderChain } from './publish.ts';

/**
 * `fleet publish --base MODEL`: before anything is uploaded, the device's own
 * apply (device/apply.ts, streamed tensor by tensor) runs the updates on
 * MODEL, whose digest must be one of their from-digests; every step must end
 * at the digest it names, and the last at the release's target. What a device
 * would refuse (wrong-base, digest-mismatch, shape-mismatch, non-finite) is
 * refused here, naming the model. Returns the target digest.
 */
export async function checkUpdatesOnBase(baseFile: string, payloads: Uint8Array[]): Promise<string> {
  const { links, target } = orderChain(payloads);
  const format = modelFormatOf(baseFile);
  const running = await format.digestFile(baseFile).catch((e: unknown) => {
    throw new PublishError('bad-update', `--base ${baseFile} is not a model the update can be checked on: ${(e as Error).message}`);
  });
  const start = links.findIndex((l) => l.base === running);
  if (start < 0) {
    throw new PublishError(
      'bad-update',
      `--base ${baseFile} is not the update's base: its digest is ${running}, the update applies to ${links.map((l) => l.base).join(' or ')} (devices on it would refuse: wrong-base); give the model the devices run, or build the update from it`,
    );
  }
  const scratch = links.length - start > 1 ? await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-publish-base-')) : undefined;
  try {
    let from = baseFile;
    for (let k = start; k < links.length; k++) {
      const last = k === links.length - 1;
      const out = last ? null : path.join(scratch!, `step-${k}${format.extension}`);
      const got = await format.apply(from, decodePayload(links[k].payload), out).catch((e: unknown) => {
        throw new PublishError('bad-update', `applying the update to --base ${baseFile} fails: ${(e as Error).message}`);
      });
      if (got !== links[k].target) {
        throw new PublishError('bad-update', `applying the update to --base ${baseFile} gives ${got}, not the target ${links[k].target} it names (devices would refuse it: digest-mismatch); rebuild it with fleet build`);
      }
      if (out) from = out;
    }
    return target;
  } finally {
    if (scratch) await fs.rm(scratch, { recursive: true, force: true });
  }
}
