import { describe, expect, it } from 'vitest';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { connect, createFixture, GROUP, MEDIUM_LAYERS, MODEL, publish, runFleet, spawnDevice, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { expectNoEventWithin } from '../support/wait.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
let proxy: LinkProxy | undefined;
const own = ownAfterEach();

describe('fleet withdraw', () => {
  it("takes a group's release back: a download in progress stops, the device keeps its model, and the broker keeps no release", async () => {
    f = own(await createFixture('withdraw', { layers: MEDIUM_LAYERS, rank: 16 }));
    // A slow link, so the withdrawal arrives mid-download.
    proxy = own(new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 8_000 }));
    await proxy.start();
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'w1', [], proxy.url);
    await watch.until('w1', (s) => s.state === 'idle');
    await publish(f);
    await watch.until('w1', (s) => s.state === 'downloading' && s.bytes > 0, 60_000);
    const r = await runFleet(['withdraw', '--model', MODEL, '--group', GROUP, '--broker', f.url]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toBe(`withdrew the release of ${MODEL} for group ${GROUP} (${topics.release(GROUP, MODEL)}); devices keep the model they run\n`);
    const s = await watch.until('w1', (s) => s.state === 'idle', 60_000);
    expect(s.message).toBe('release withdrawn');
    expect(s.running).toBe(f.update.baseDigest);
    // Nothing retained any more: a new subscriber to the release topic receives nothing.
    const t = await connect(f, 'withdraw-check');
    const got: Uint8Array[] = [];
    t.onMessage((topic, payload) => {
      if (topic === topics.release(GROUP, MODEL)) got.push(payload);
    });
    await t.subscribe(topics.release(GROUP, MODEL), 1);
    await expectNoEventWithin(1000, () => got[0], 'a retained release after the withdrawal');
  }, 120_000);
});
