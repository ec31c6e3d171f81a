/**
 * The gateway's upstream fetch through a reconnect in the middle of a chunk frame (issue 20, seventh
 * pass): its gated transport forwards `keepPartial`/`takePartial`, so the fetch, as a device's
 * download does, asks for the cut chunk from where its frame stopped instead of whole. Real broker
 * and update server, a rate-limited TCP proxy in front of them (loopback).
 */
import { describe, expect, it } from 'vitest';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import type { MqttTransport } from '../../transport/mqtt.ts';
import { createFixture, MEDIUM_LAYERS, publish, GROUP } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';
import { until } from '../support/wait.ts';
import { startGateway, untilGateway } from './helpers.ts';

const own = ownAfterEach();

const underWay = (t: MqttTransport): number => (t as unknown as { scanner?: { partialBytes: number } }).scanner?.partialBytes ?? 0;

describe('site gateway: a reconnect in the middle of a chunk frame', () => {
  it('the fetch asks for the cut chunk from where its frame stopped, and completes', async () => {
    const f = own(await createFixture('gwresume', { layers: MEDIUM_LAYERS, rank: 16 }));
    const proxy = own(new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 24_000 }));
    await proxy.start();
    const gw = own(await startGateway(f, { groups: [GROUP] }, proxy.url));
    const chunkSize = 8192;
    const r = await publish(f, f.update.payload, chunkSize);
    const step = r.release.steps[0];
    expect(step.chunks).toBeGreaterThanOrEqual(5);
    await untilGateway(gw, (s) => (s.fetching[0]?.bytes ?? 0) >= chunkSize, 60_000, 'a chunk fetched');
    const upstream = (gw.gateway as unknown as { upstream: MqttTransport }).upstream;
    await until(() => underWay(upstream) >= 3000 && underWay(upstream) <= 6000, { what: 'a chunk frame half received', timeoutMs: 30_000, intervalMs: 2 });
    const cut = underWay(upstream);
    upstream.reconnect('test: cut in the middle of a frame');
    await untilGateway(gw, (s) => s.cache.some((c) => c.updateId === r.updateId), 120_000, 'the payload fetched');
    expect(f.broker!.updateServer!.stats.tailsSent).toBeGreaterThanOrEqual(1);
    expect(upstream.loss.partialBytesKept).toBeGreaterThanOrEqual(1024);
    expect(upstream.loss.partialBytesDropped).toBeLessThan(cut - 1024);
    const gs = await gw.status();
    expect(gs.fetched.payloadBytes).toBe(step.size);
  }, 180_000);
});
