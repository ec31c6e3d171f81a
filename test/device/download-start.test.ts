/**
 * The start of a download costs one round trip, not two: the first request asks for the
 * chunk list and the first window together, and chunks that arrive before the list is
 * checked and saved are kept and checked once it is (a bad one is still refused).
 * Real storage in a temp dir, a recording transport and a manual clock.
 */
import { describe, expect, it } from 'vitest';
import { chunkRange } from '../../protocol/chunks.ts';
import { decodeRequest, type ChunkRequest, type Frame } from '../../protocol/frames.ts';
import { ownAfterEach } from '../support/cleanup.ts';
import { downloadRig } from '../support/download-rig.ts';
import { payloadStep } from '../support/payload-step.ts';
import { until } from '../support/wait.ts';

const CHUNK = 512;
const CHUNKS = 10;
const { payload, list, updateId, step } = payloadStep(CHUNK, CHUNKS, (i) => (i * 7 + 3) % 253, 'cd'.repeat(32));

const own = ownAfterEach();

describe('download start: the list and the first window in one request', () => {
  it('asks for both at once; chunks that come before the list are verified once it is saved; a bad early chunk is refused', async () => {
    const requests: ChunkRequest[] = [];
    let done = false;
    const { d } = await downloadRig(own, 'download-start', step, {
      transport: { publish: async (_t: string, p: Uint8Array | string) => void requests.push(decodeRequest(p as Uint8Array)) },
      onComplete: () => (done = true),
    });
    await d.start();
    expect(requests).toHaveLength(1);
    expect(requests[0].list).toBe(true);
    const first = requests[0].want;
    expect(first.length).toBeGreaterThanOrEqual(2);
    const frame = (i: number, corrupt = false): Frame => {
      const [b, e] = chunkRange(step.size, CHUNK, i);
      const data = Uint8Array.from(payload.subarray(b, e));
      if (corrupt) data[0] ^= 0xff;
      return { kind: 'chunk', updateId, index: i, count: CHUNKS, data };
    };
    // The first window's chunks arrive before the list (one of them damaged on the way).
    d.onFrame(frame(first[0], true));
    for (const i of first.slice(1)) d.onFrame(frame(i));
    expect(d.receivedChunks).toBe(0);
    d.onFrame({ kind: 'list', updateId, count: CHUNKS, list });
    await until(() => d.receivedChunks === first.length - 1, { what: 'the early chunks but the bad one received', timeoutMs: 5000, intervalMs: 5 });
    expect(d.receivedChunks).toBe(first.length - 1);
    expect(d.badChunks).toBe(1);
    expect(d.duplicateChunks).toBe(0);
    // Everything else, as asked.
    for (let k = 1; k < 100 && !done; k++) {
      await until(() => requests.length > k || done, { what: `request ${k + 1} or the end`, timeoutMs: 5000, intervalMs: 5 });
      for (const i of requests[k]?.want ?? []) d.onFrame(frame(i));
    }
    await until(() => done, { what: 'the download done', timeoutMs: 5000, intervalMs: 5 });
    expect(done).toBe(true);
    expect(Buffer.from(await d.readPayload()).equals(Buffer.from(payload))).toBe(true);
    expect(requests.filter((r) => r.list)).toHaveLength(1);
    await d.close();
  });
});
