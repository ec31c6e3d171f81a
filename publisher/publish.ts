import { chunkCount, chunkList, chunkRange, sha256Hex, updateIdOf } from '../protocol/chunks.ts';
import { decodeReceipt, encodeFrame, type UploadReceipt } from '../protocol/frames.ts';
import { decodePayload } from '../protocol/lowrank.ts';
import { decodeReleaseBody, decodeSignedRelease, signRelease, type ReleaseBody, type SigningKey } from '../protocol/release.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';

export interface PublishOptions {
  transport: Transport;
  topics: Topics;
  payload: Uint8Array;
  keys: SigningKey[];
  model: string;
  group: string;
  chunkSize: number;
  /** Release lifetime in seconds. */
  ttlSeconds: number;
  /** Explicit sequence number; default max(current + 1, now in seconds). */
  seq?: number;
  /** Publishes in flight at once during the upload. */
  window?: number;
  /** How long to wait for the update server's receipt. */
  receiptTimeoutMs?: number;
  log: Logger;
  onProgress?: (sentChunks: number, totalChunks: number) => void;
  now?: () => number;
}

export interface PublishResult {
  updateId: string;
  release: ReleaseBody;
  uploadedChunks: number;
  alreadyStored: boolean;
}

export class PublishError extends Error {
  constructor(readonly code: 'no-update-server' | 'upload-refused' | 'bad-update', message: string) {
    super(message);
    this.name = 'PublishError';
  }
}

/**
 * Upload the payload to the update server (only the chunks it lacks), wait
 * for its confirmation, then publish the signed release retained for the group.
 */
export async function publishUpdate(o: PublishOptions): Promise<PublishResult> {
  const t = o.transport;
  let decoded;
  try {
    decoded = decodePayload(o.payload);
  } catch (e) {
    throw new PublishError('bad-update', `the update file is not a valid payload: ${(e as Error).message}`);
  }
  const updateId = updateIdOf(o.payload);
  const count = chunkCount(o.payload.byteLength, o.chunkSize);
  const list = chunkList(o.payload, o.chunkSize);
  const receiptTopic = o.topics.uploadReceipt(o.model, updateId);
  const releaseTopic = o.topics.release(o.group, o.model);

  let currentSeq = -1;
  const receipts: UploadReceipt[] = [];
  let wake: (() => void) | undefined;
  const off = t.onMessage((topic, payload) => {
    if (topic === releaseTopic && payload.byteLength > 0) {
      try {
        currentSeq = Math.max(currentSeq, decodeReleaseBody(decodeSignedRelease(payload).body).seq);
      } catch {
        o.log.warn('the current release on the broker is malformed; replacing it');
      }
    } else if (topic === receiptTopic) {
      try {
        receipts.push(decodeReceipt(payload));
        wake?.();
      } catch (e) {
        o.log.warn('bad receipt', { error: (e as Error).message });
      }
    }
  });
  await t.subscribe([receiptTopic, releaseTopic], 1);

  /** Waits for the next receipt, calling `nudge` every `reprobeMs` (the server may be starting or restarting). */
  const nextReceipt = async (nudge: () => Promise<void>): Promise<UploadReceipt> => {
    const timeout = o.receiptTimeoutMs ?? 30_000;
    const reprobe = 2000;
    const deadline = Date.now() + timeout;
    let nextNudge = Date.now() + reprobe;
    while (receipts.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new PublishError('no-update-server', `no update server answered on ${receiptTopic} within ${timeout} ms; is 'fleet broker' or 'fleet serve' running?`);
      }
      if (Date.now() >= nextNudge) {
        nextNudge = Date.now() + reprobe;
        await nudge();
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, Math.max(1, nextNudge - Date.now())));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return receipts.shift()!;
  };

  const send = (i: number): Promise<void> => {
    const [b, e] = chunkRange(o.payload.byteLength, o.chunkSize, i);
    return t.publish(o.topics.upload(o.model, updateId), encodeFrame({ kind: 'chunk', updateId, index: i, count, data: o.payload.subarray(b, e) }), { qos: 1 });
  };

  // Probe with the last chunk: the receipt says whether the server already has
  // the update, or which chunks it lacks (a resumed upload sends only those).
  let uploaded = 1;
  const probe = (): Promise<void> => send(count - 1);
  await probe();
  let receipt = await nextReceipt(probe);
  const alreadyStored = receipt.stored && count > 1;
  let sent = 0;
  for (let round = 0; !receipt.stored; round++) {
    if (receipt.error) throw new PublishError('upload-refused', `the update server refused the upload: ${receipt.error}`);
    if (round > 20) throw new PublishError('upload-refused', `upload of ${updateId} did not complete after ${round} rounds`);
    const missing = receipt.missing.filter((i) => i !== count - 1);
    const window = o.window ?? 32;
    for (let k = 0; k < missing.length; k += window) {
      await Promise.all(missing.slice(k, k + window).map(send));
      sent += Math.min(window, missing.length - k);
      uploaded += Math.min(window, missing.length - k);
      o.onProgress?.(Math.min(count, receipt.have + sent), count);
    }
    // The last chunk triggers the next receipt.
    await probe();
    uploaded++;
    receipt = await nextReceipt(probe);
  }
  o.onProgress?.(count, count);
  o.log.info('update stored on the server', { updateId, chunks: count, uploaded, alreadyStored });

  const now = Math.floor((o.now ?? Date.now)() / 1000);
  const body: ReleaseBody = {
    model: o.model,
    group: o.group,
    seq: o.seq ?? Math.max(currentSeq + 1, now),
    issued: now,
    expires: now + o.ttlSeconds,
    target: decoded.target,
    steps: [
      {
        updateId,
        from: decoded.base,
        to: decoded.target,
        size: o.payload.byteLength,
        sha256: sha256Hex(o.payload),
        chunkSize: o.chunkSize,
        chunks: count,
        listSha256: sha256Hex(list),
      },
    ],
  };
  await t.publish(releaseTopic, signRelease(body, o.keys), { qos: 1, retain: true });
  off();
  await t.unsubscribe([receiptTopic, releaseTopic]);
  return { updateId, release: body, uploadedChunks: uploaded, alreadyStored };
}
