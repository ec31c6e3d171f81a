import { describe, expect, it } from 'vitest';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { createFixture, currentDigest, publish, spawnDevice, StatusWatch, type Fixture, MEDIUM_LAYERS } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

const DEVICES = ['site-1', 'site-2', 'site-3'];

let f: Fixture | undefined;
let proxy: LinkProxy | undefined;
const own = ownAfterEach();

describe('a site whose link keeps dropping', () => {
  it('three devices behind one slow link cut at random still all end ok on the new digest', async () => {
    f = own(await createFixture('random-cuts', { layers: MEDIUM_LAYERS, rank: 16 }));
    // One site: three devices share 40 kB/s each way; seeded, so a failure can be replayed.
    proxy = own(new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 40_000, sharedBandwidth: true, seed: 20240611 }));
    await proxy.start();
    const watch = await StatusWatch.start(f);
    for (const id of DEVICES) spawnDevice(f, id, [], proxy.url);
    for (const id of DEVICES) await watch.until(id, (s) => s.state === 'idle', 20_000);
    const connectionsBefore = proxy.connections;
    expect(connectionsBefore).toBe(DEVICES.length);

    // The link starts dropping as the release goes out (the publisher is on the broker's side of the link).
    proxy.randomCuts([400, 1200]);
    const startedAt = Date.now();
    const r = await publish(f);
    expect(r.release.steps[0].chunks).toBeGreaterThan(50);
    const target = f.update.targetDigest;
    for (const id of DEVICES) {
      const s = await watch.until(id, (s) => s.state === 'ok' && s.running === target, 120_000);
      expect(s.running).toBe(target);
    }
    const tookMs = Date.now() - startedAt;
    proxy.randomCuts(undefined);
    const cutsDuring = proxy.cutLog.filter((c) => c.cause === 'random' && c.dropped > 0);

    for (const id of DEVICES) expect(await currentDigest(f, id)).toBe(target);
    expect(cutsDuring.length).toBeGreaterThanOrEqual(3);
    expect(proxy.cuts).toBe(cutsDuring.length);
    // Devices came back after the cuts (each cut drops every device's connection).
    expect(proxy.connections).toBeGreaterThan(DEVICES.length);
    expect(proxy.connections - connectionsBefore).toBeGreaterThanOrEqual(cutsDuring.length);
    // Three copies of the update crossed the link (plus what cuts lost in flight).
    expect(proxy.bytesDown).toBeGreaterThan(3 * r.release.steps[0].size);
    expect(tookMs).toBeLessThan(120_000);
  }, 180_000);
});
