import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { chunkRange } from '../../protocol/chunks.ts';
import { synthesizeUpdate } from '../../publisher/synth.ts';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { expectNoEventWithin } from '../support/wait.ts';
import { createFixture, currentDigest, publish, spawnDevice, spawnFleet, StatusWatch, type Fixture, MEDIUM_LAYERS, untilLog } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
let proxy: LinkProxy | undefined;
const own = ownAfterEach();

async function slowLink(fx: Fixture, bytesPerSecond: number): Promise<LinkProxy> {
  const p = new LinkProxy({ targetHost: '127.0.0.1', targetPort: fx.broker!.port, bytesPerSecond });
  await p.start();
  return p;
}

describe('transfer faults', () => {
  it('the update server killed (SIGKILL) mid-transfer and restarted on its data dir loses nothing; devices continue', async () => {
    f = own(await createFixture('server-kill', { layers: MEDIUM_LAYERS, rank: 16, updateServer: false }));
    const store = path.join(f.dir, 'serve-store');
    const serveArgs = ['serve', '--broker', f.url, '--data-dir', store];
    const first = spawnFleet(f, 'serve1', serveArgs);
    await untilLog(path.join(f.dir, 'serve1.log'), /fleet update server on/);
    proxy = own(await slowLink(f, 24_000));
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'sk-1', [], proxy.url);
    await watch.until('sk-1', (s) => s.state === 'idle');
    await publish(f);
    await watch.until('sk-1', (s) => s.state === 'downloading' && s.progress >= 0.25);
    const exited = new Promise((r) => first.once('exit', r));
    process.kill(first.pid!, 'SIGKILL');
    await exited;
    // An outage of the server, not a wait for anything: the device's requests go unanswered for a moment.
    await new Promise((r) => setTimeout(r, 1000));
    spawnFleet(f, 'serve2', serveArgs);
    const s = await watch.until('sk-1', (s) => s.state === 'ok', 60_000);
    expect(s.running).toBe(f.update.targetDigest);
    expect(await currentDigest(f, 'sk-1')).toBe(f.update.targetDigest);
  });

  it('a corrupt chunk in the store is detected; the device gives up after a bounded number of bad copies (corrupt-source)', async () => {
    f = own(await createFixture('corrupt', { layers: MEDIUM_LAYERS, rank: 16 }));
    const r = await publish(f);
    const payloadFile = path.join(f.dir, 'broker', 'store', 'updates', r.updateId, 'payload');
    const bytes = await fs.readFile(payloadFile);
    const [b] = chunkRange(bytes.byteLength, r.release.steps[0].chunkSize, 5);
    bytes[b + 10] ^= 0xff;
    await fs.writeFile(payloadFile, bytes);
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'cs-1', ['--retry', '1s']);
    const s = await watch.until('cs-1', (s) => s.state === 'failed', 30_000);
    expect(s.reason).toBe('corrupt-source');
    expect(s.message).toMatch(/chunk 5 arrived 3 times/);
    expect(s.badChunks).toBe(3);
    expect(s.running).toBe(f.update.baseDigest);
    // It does not keep asking: no new request after giving up.
    await expectNoEventWithin(2500, () => watch.latest.get('cs-1')!.state !== 'failed' && watch.latest.get('cs-1'), "cs-1 leaving 'failed' (asking again) after giving up");
    expect(await currentDigest(f, 'cs-1')).toBe(f.update.baseDigest);
  });

  it('a newer release supersedes one being downloaded; gc then removes the update no release names, without disturbing the named one', async () => {
    f = own(await createFixture('supersede', { layers: MEDIUM_LAYERS, rank: 16 }));
    // 8 kB/s: the first download (~68 kB) takes ~8 s, longer than publishing the second release takes
    // on a loaded machine (at 20 kB/s, ~3.4 s, a CI run saw the first complete before the second came).
    proxy = own(await slowLink(f, 8_000));
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'ss-1', [], proxy.url);
    await watch.until('ss-1', (s) => s.state === 'idle');
    const first = await publish(f);
    await watch.until('ss-1', (s) => s.state === 'downloading' && s.updateId === first.updateId && s.progress > 0.1);
    const second = synthesizeUpdate(f.base, 12, 77);
    const r2 = await publish(f, second.payload);
    await watch.until('ss-1', (s) => s.state === 'downloading' && s.updateId === r2.updateId);
    // gc while the device fetches the second update.
    const storeDir = path.join(f.dir, 'broker', 'store', 'updates');
    expect((await fs.readdir(storeDir)).sort()).toEqual([first.updateId, r2.updateId].sort());
    const gc = spawnFleet(f, 'gc', ['gc', '--data-dir', path.join(f.dir, 'broker')]);
    await new Promise((res) => gc.once('exit', res));
    expect(await fs.readdir(storeDir)).toEqual([r2.updateId]);
    const log = await fs.readFile(path.join(f.dir, 'gc.log'), 'utf8');
    expect(log).toMatch(new RegExp(`removed 1 update\\(s\\): ${first.updateId}; kept 1`));
    const s = await watch.until('ss-1', (s) => s.state === 'ok', 60_000);
    expect(s.running).toBe(second.targetDigest);
    expect(await currentDigest(f, 'ss-1')).toBe(second.targetDigest);
  });

  it('a device that cannot make progress ends failed (download-stalled), then retries and completes from what it had', async () => {
    f = own(await createFixture('stall', { layers: MEDIUM_LAYERS, rank: 16 }));
    proxy = own(await slowLink(f, 24_000));
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'st-1', ['--stall-timeout', '2s', '--retry', '1s'], proxy.url);
    await watch.until('st-1', (s) => s.state === 'idle');
    await publish(f);
    await watch.until('st-1', (s) => s.state === 'downloading' && s.progress >= 0.2);
    proxy.takeDown();
    // The link is down, so the status cannot come upstream: the device's own log says when it gave up.
    await untilLog(path.join(f.dir, 'st-1.log'), /"to":"failed"/, 30_000);
    proxy.restore();
    const s = await watch.until('st-1', (s) => s.state === 'ok', 60_000);
    expect(s.running).toBe(f.update.targetDigest);
    const failed = watch.history.find((h) => h.device === 'st-1' && h.state === 'failed');
    expect(failed?.reason).toBe('download-stalled');
    expect(failed?.message).toMatch(/no chunk for \d+ s; \d+ of \d+ chunks kept/);
  });
});
