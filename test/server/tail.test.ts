/**
 * The update server answers a request's `tail` entries (protocol.md §4.2) with tail frames: the
 * chunk from the byte offset named on (§4.1); an offset at or past the chunk's end gets the chunk
 * whole; one byte before its end, that last byte alone (a device's probe marker); a malformed tail, a
 * bad-request error frame. Real broker and update server (Aedes in-process).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { chunkRange } from '../../protocol/chunks.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { decodeFrame, encodeRequest, type Frame } from '../../protocol/frames.ts';
import { connect, createFixture, MODEL, publish, topics, type Fixture } from '../support/harness.ts';
import { until } from '../support/wait.ts';

let f: Fixture | undefined;
afterEach(async () => {
  await f?.close();
  f = undefined;
});

describe('update server: tails', () => {
  it('serves chunk i from byte o on; o at the end of the chunk: the chunk whole; a malformed tail: bad-request', async () => {
    f = await createFixture('tail');
    const chunkSize = 1024;
    const r = await publish(f, f.update.payload, chunkSize);
    const step = r.release.steps[0];
    expect(step.chunks).toBeGreaterThanOrEqual(3);
    const t = await connect(f, 'fleet-device-tail1');
    const frames: Frame[] = [];
    t.onMessage((_topic, payload) => frames.push(decodeFrame(payload)));
    await t.subscribe(topics.framesFor(MODEL, 'tail1'), 1);
    const ask = (req: Uint8Array) => t.publish(topics.request(MODEL, step.updateId, 'tail1'), req, { qos: 1 });
    const payload = f.update.payload;
    const chunk = (i: number) => payload.subarray(...chunkRange(step.size, chunkSize, i));

    await ask(
      encodeRequest({
        want: [0, 1, 2],
        list: false,
        tail: [
          [0, 100],
          [1, chunkSize],
          // A probe's marker (the device's): the chunk's last byte alone.
          [2, chunkSize - 1],
        ],
      }),
    );
    await until(() => frames.length >= 3, { what: 'three frames', timeoutMs: 10_000 });
    const byIndex = new Map(frames.map((x) => [x.kind === 'chunk' ? x.index : -1, x]));
    expect(byIndex.get(0)).toEqual({ kind: 'chunk', updateId: step.updateId, index: 0, count: step.chunks, offset: 100, data: chunk(0).subarray(100) });
    // Offset at the chunk's end: nothing to send from there; the chunk whole.
    expect(byIndex.get(1)).toEqual({ kind: 'chunk', updateId: step.updateId, index: 1, count: step.chunks, data: chunk(1) });
    expect(byIndex.get(2)).toEqual({ kind: 'chunk', updateId: step.updateId, index: 2, count: step.chunks, offset: chunkSize - 1, data: chunk(2).subarray(chunkSize - 1) });
    expect((byIndex.get(2) as { data: Uint8Array }).data.byteLength).toBe(1);
    const stats = f.broker!.updateServer!.stats;
    expect({ chunks: stats.chunksSent, tails: stats.tailsSent }).toEqual({ chunks: 3, tails: 2 });

    // A tail naming a chunk the request does not want: malformed.
    frames.length = 0;
    await ask(cborEncode({ v: 1, want: [1], tail: [[2, 10]] }));
    await until(() => frames.length >= 1, { what: 'the answer', timeoutMs: 10_000 });
    expect(frames).toEqual([{ kind: 'error', updateId: step.updateId, error: 'bad-request' }]);
  }, 60_000);
});
