/**
 * A reconnect in the middle of a chunk frame (issue 20, seventh pass): the device keeps the part of
 * the frame that came, asks for the chunk from that byte on (a request's `tail`), joins the two and
 * checks the chunk against the list. Before, the part was thrown away and the chunk sent again whole.
 * Real broker and update server (Aedes in-process), a rate-limited TCP proxy in front of them
 * (loopback), a device agent in this process.
 */
import { describe, expect, it } from 'vitest';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import type { MqttTransport } from '../../transport/mqtt.ts';
import { createFixture, MEDIUM_LAYERS, publish, startAgent, StatusWatch } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';
import { until } from '../support/wait.ts';
import { createLogger } from '../../util/log.ts';

const own = ownAfterEach();

/** Bytes of the packet under way on the transport's current connection (its packet scanner's count). */
const underWay = (t: MqttTransport): number => (t as unknown as { scanner?: { partialBytes: number } }).scanner?.partialBytes ?? 0;

describe('a reconnect in the middle of a chunk frame', () => {
  it('the chunk is asked for from where the frame stopped, joined and checked; the part received is not thrown away', async () => {
    const f = own(await createFixture('resumecut', { layers: MEDIUM_LAYERS, rank: 16 }));
    const proxy = own(new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 24_000 }));
    await proxy.start();
    const watch = await StatusWatch.start(f);
    const lines: Array<{ msg: string; tail?: boolean }> = [];
    const log = createLogger('dev', 'debug', (l) => lines.push(JSON.parse(l) as { msg: string }));
    const { transport } = await startAgent(f, 'cut1', log, { retryMs: 500 }, proxy.url);
    const chunkSize = 8192;
    const r = await publish(f, f.update.payload, chunkSize);
    const step = r.release.steps[0];
    expect(step.chunks).toBeGreaterThanOrEqual(5);
    // In the middle of a frame after the first chunks (the release and the list are in): 3-6 KB of an 8 KiB chunk's frame.
    await until(() => transport.stats().bytesIn > 3 * chunkSize && underWay(transport) >= 3000 && underWay(transport) <= 6000, { what: 'a chunk frame half received', timeoutMs: 60_000, intervalMs: 2 });
    const cut = underWay(transport);
    transport.reconnect('test: cut in the middle of a frame');
    await watch.until('cut1', (s) => s.state === 'ok', 120_000);
    const server = f.broker!.updateServer!.stats;
    // The chunk cut was served again from the byte where its frame stopped, not whole.
    expect(server.tailsSent).toBeGreaterThanOrEqual(1);
    // What a close threw away on the device's socket: less than the part of the frame that had come
    // (before: all of it, `cut` bytes, and the whole chunk again on top); what it kept, at least 1 KiB of it.
    expect(transport.loss.partialBytesKept).toBeGreaterThanOrEqual(1024);
    expect(transport.loss.partialBytesDropped).toBeLessThan(cut - 1024);
    // The device joined a chunk from the part kept and a tail, and the join matched the chunk list.
    expect(lines.filter((l) => l.msg === 'chunk' && l.tail === true).length).toBeGreaterThanOrEqual(1);
    expect(lines.filter((l) => /does not match the chunk list/.test(l.msg))).toEqual([]);
  }, 180_000);
});
