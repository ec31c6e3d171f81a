/**
 * The gateway's one upstream fetch goes on through a reconnect of its upstream connection with the
 * same Download, as a device's does (issue 20, sixth pass): what it measured of the link (round trip,
 * rate, window) is kept, and only what it lacks is asked again. Before, the link going closed the
 * Download and the reconnect started a new one, at a window of 4. Real broker and update server,
 * a rate-limited TCP proxy in front of them (loopback).
 */
import { describe, expect, it } from 'vitest';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import type { MqttTransport } from '../../transport/mqtt.ts';
import { createLogger } from '../../util/log.ts';
import { createFixture, MEDIUM_LAYERS, publish, GROUP, type Fixture } from '../support/harness.ts';
import { startGateway, untilGateway } from './helpers.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
let gw: Gateway | undefined;
let proxy: LinkProxy | undefined;
const own = ownAfterEach();

describe('site gateway: the upstream fetch through a reconnect', () => {
  it("a reconnect mid-fetch (the silence watch's, or a cut of a second): the same fetch goes on, not a new one", async () => {
    f = own(await createFixture('gwkeep', { layers: MEDIUM_LAYERS, rank: 16 }));
    proxy = own(new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 24_000 }));
    await proxy.start();
    const lines: Array<{ msg: string }> = [];
    const log = createLogger('gw', 'info', (l) => lines.push(JSON.parse(l) as { msg: string }));
    gw = own(await startGateway(f, { groups: [GROUP], log }, proxy.url));
    const r = await publish(f);
    const step = r.release.steps[0];
    expect(step.chunks).toBeGreaterThan(50);
    await untilGateway(gw, (s) => (s.fetching[0]?.bytes ?? 0) >= step.size * 0.2, 60_000, '20 % fetched');
    // What the silence watch does when the socket is silent while a fresh connection gets through.
    const upstream = (gw.gateway as unknown as { upstream: MqttTransport }).upstream;
    upstream.reconnect('test: silent while the link was up');
    await untilGateway(gw, (s) => s.upstream.connects >= 2 && s.upstream.state === 'connected', 15_000, 'reconnected');
    await untilGateway(gw, (s) => (s.fetching[0]?.bytes ?? 0) >= step.size * 0.5, 60_000, '50 % fetched');
    // And a cut of a second (the link down, then back).
    proxy.takeDown();
    await untilGateway(gw, (s) => s.upstream.state === 'down', 15_000, 'the link down');
    await new Promise((res) => setTimeout(res, 1000));
    proxy.restore();
    await untilGateway(gw, (s) => s.cache.some((c) => c.updateId === r.updateId), 120_000, 'the payload fetched');
    const starts = lines.filter((l) => l.msg === 'fetching from upstream').length;
    const kept = lines.filter((l) => l.msg.startsWith('the link is back')).length;
    // Before: three Downloads (the start, and one after each reconnect).
    expect({ starts, kept }).toEqual({ starts: 1, kept: 2 });
    const gs = await gw.status();
    expect(gs.fetched.payloadBytes).toBe(step.size);
  });
});
