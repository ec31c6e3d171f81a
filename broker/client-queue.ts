import type { Client } from 'aedes';
import type { Writable } from 'node:stream';

/**
 * The bytes a client's socket may have queued before Aedes waits for it to drain (per client).
 *
 * Aedes delivers at most 100 publishes at once (its emitter's concurrency), and a delivery to a
 * socket over its high-water mark (16 KiB: less than one 16 KiB chunk frame) is done only when that
 * socket drains. A device whose TCP is in retransmission backoff held one of the 100 for each frame
 * queued for it; with 100 held, every publish to every client waited behind them (the update server
 * sends all the devices' frames). Past this many bytes queued the wait comes back: what a device
 * asked for (a window of chunks, 32 × 16 KiB at most by default) fits, and a client that never reads
 * stays bounded.
 */
export const CLIENT_QUEUE_BYTES = 1024 * 1024;

/** Makes Aedes wait for `stream` to drain only when more than `maxBytes` are queued on it. */
export function queueBeforeWaiting(client: Client, stream: Writable, maxBytes = CLIENT_QUEUE_BYTES): void {
  const c = client as unknown as { waitForDrain?: (done: (error: Error | null, client: Client) => void) => void };
  const wait = c.waitForDrain?.bind(client);
  if (!wait) return;
  c.waitForDrain = (done) => {
    if (stream.writableLength > maxBytes) wait(done);
    else setImmediate(done, null, client);
  };
}
