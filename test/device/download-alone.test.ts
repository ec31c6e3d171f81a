/**
 * A fetcher alone on its link (a gateway's one upstream fetch, `aloneOnLink`) may reconnect on a
 * silence that costs a chunk's packet and the retained messages, where a device's share of a small
 * payload allows none; and `unmeasuredSilenceFactor` sets how long it waits before the first chunk.
 * Real storage in a temp dir, a transport whose probe connects and whose costs are the test's, a
 * manual clock.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { chunkPacketBytes, Download } from '../../device/download.ts';
import { DEVICE_DEFAULTS } from '../../device/defaults.ts';
import { DeviceStorage } from '../../device/storage.ts';
import { encodeFrame } from '../../protocol/frames.ts';
import { Topics } from '../../protocol/topics.ts';
import type { Transport } from '../../transport/types.ts';
import { silentLogger } from '../../util/log.ts';
import { ManualClock } from '../support/clock.ts';
import { payloadStep } from '../support/payload-step.ts';

// 17 chunks of 16 KiB, as the gateway's 256 KiB fetch (270,893 B): the device's share is ~1.7 KB.
const CHUNK = 16_384;
const CHUNKS = 17;
const { step } = payloadStep(CHUNK, CHUNKS, (i) => i % 251, 'cd'.repeat(32));

let dir: string | undefined;
afterEach(async () => {
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** `retained`: the retained messages' bytes this connection brought; `partial`: a frame's part under way. */
async function rig(o: { aloneOnLink?: boolean; unmeasuredSilenceFactor?: number; retained?: number; partial?: number; keepsCutFrames?: boolean; resumable?: number }) {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'download-alone-'));
  const storage = new DeviceStorage(dir);
  await storage.init();
  const files = await storage.openDownload(step);
  const clock = new ManualClock();
  const t0 = clock.now();
  /** When each reconnect was made, ms after the start. */
  const reconnects: number[] = [];
  const costs = o.retained === undefined ? {} : { reconnectCost: () => o.retained! + (o.partial ?? 0), retainedBytes: () => o.retained! };
  const transport = {
    publish: () => Promise.resolve(),
    probe: () => Promise.resolve(true),
    reconnect: () => reconnects.push(clock.now() - t0),
    ...costs,
    // A transport that keeps what a close cuts of a frame (the part the Download resumes is not in `reconnectCost`).
    ...(o.keepsCutFrames ? { keepPartial: () => undefined, takePartial: () => undefined, resumableBytes: () => o.resumable ?? 0 } : {}),
  } as unknown as Transport;
  const d = new Download({
    step,
    files,
    transport,
    topics: new Topics(),
    model: 'm',
    deviceId: 'gw',
    clock,
    log: silentLogger,
    maxWindow: 8,
    idleMs: 60_000,
    stallMs: 600_000,
    maxBadCopies: 3,
    // The socket stays silent: nothing arrives after the request.
    wireBytesIn: () => 0,
    aloneOnLink: o.aloneOnLink,
    unmeasuredSilenceFactor: o.unmeasuredSilenceFactor,
    onProgress: () => undefined,
    onComplete: () => undefined,
    onFail: (e) => {
      throw e;
    },
  });
  await d.start();
  return { clock, d, reconnects };
}

describe('download alone on its link: the silence watch may reconnect', () => {
  it("the chunk packet's size is the encoded frame's, its topic's and the MQTT header's", () => {
    const topic = new Topics().frames('m', step.updateId, 'gw');
    const frame = encodeFrame({ kind: 'chunk', updateId: step.updateId, index: CHUNKS - 1, count: CHUNKS, data: new Uint8Array(CHUNK) }).byteLength;
    expect(frame).toBeGreaterThan(CHUNK);
    expect(chunkPacketBytes(step, topic)).toBe(frame + topic.length + 7);
  });

  it('a silence costing 2.6 KB of retained messages and 9 KB of a frame: no reconnect for a device (its share is ~1.7 KB), one for a fetcher alone', async () => {
    expect(Math.round(step.size * DEVICE_DEFAULTS.silentReconnectBudget)).toBeLessThan(2600);
    const device = await rig({ retained: 2600, partial: 9000 });
    await device.clock.advance(30_000);
    expect(device.reconnects).toEqual([]);
    await device.d.close();

    const alone = await rig({ aloneOnLink: true, retained: 2600, partial: 9000 });
    await alone.clock.advance(30_000);
    expect(alone.reconnects.length).toBe(1);
    await alone.d.close();
  });

  it('alone, but retained messages larger than the budget allows for: the cost is measured, not assumed', async () => {
    // Budget: one chunk packet + the retained bytes as the transport counts them; a cost above that does not fit.
    const over = await rig({ aloneOnLink: true, retained: 2600, partial: 2 * CHUNK });
    await over.clock.advance(30_000);
    expect(over.reconnects).toEqual([]);
    await over.d.close();
  });

  it('alone, with a transport that keeps cut frames: the budget is the head of a frame and 1 KiB, not a whole packet', async () => {
    // A cut frame's data past 1 KiB is kept and resumed, so it is not in the cost: less than 1 KiB of data lost fits.
    const small = await rig({ aloneOnLink: true, keepsCutFrames: true, retained: 2600, partial: 900 });
    await small.clock.advance(30_000);
    expect(small.reconnects.length).toBe(1);
    await small.d.close();
    // 9 KB that a reconnect would throw away (not a frame it can resume): too dear now (before: one reconnect).
    const dear = await rig({ aloneOnLink: true, keepsCutFrames: true, retained: 2600, partial: 9000 });
    await dear.clock.advance(30_000);
    expect(dear.reconnects).toEqual([]);
    await dear.d.close();
  });

  it('a frame under way the transport would keep: not a cost for the fetcher alone (it resumes it), a cost for a device (its budget stays as before)', async () => {
    // 9 KB of a frame under way that a close would keep; 200 B of its head lost; 1 KB retained.
    const device = await rig({ keepsCutFrames: true, retained: 1000, partial: 200, resumable: 9000 });
    await device.clock.advance(30_000);
    expect(device.reconnects).toEqual([]);
    await device.d.close();
    const alone = await rig({ aloneOnLink: true, keepsCutFrames: true, retained: 1000, partial: 200, resumable: 9000 });
    await alone.clock.advance(30_000);
    expect(alone.reconnects.length).toBe(1);
    await alone.d.close();
  });

  it('before the first chunk: 4 × the least silence by default, 1 × with unmeasuredSilenceFactor 1', async () => {
    const shared = await rig({});
    await shared.clock.advance(6_000);
    expect(shared.reconnects).toEqual([]);
    await shared.clock.advance(3_000);
    expect(shared.reconnects.length).toBe(1);
    await shared.d.close();

    const alone = await rig({ unmeasuredSilenceFactor: 1 });
    await alone.clock.advance(3_000);
    expect(alone.reconnects.length).toBe(1);
    expect(alone.reconnects[0]).toBeLessThanOrEqual(2_500);
    await alone.d.close();
  });
});
