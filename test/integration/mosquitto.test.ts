import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createFixture, currentDigest, publish, spawnDevice, spawnFleet, StatusWatch, type Fixture, untilLog } from '../support/harness.ts';
import { findMosquitto, startMosquitto, type Mosquitto } from '../support/mosquitto.ts';

const bin = findMosquitto();
if (!bin) console.warn('skipping Mosquitto suite: mosquitto is not installed (apt-get install mosquitto; .ci/run installs it)');

let f: Fixture | undefined;
let mq: Mosquitto | undefined;
afterEach(async () => {
  await f?.close();
  await mq?.stop();
  f = undefined;
  mq = undefined;
});

describe.skipIf(!bin)('against Mosquitto with `fleet serve` beside it', () => {
  it('devices download, apply and ack through Mosquitto', async () => {
    const dir = path.join(await import('node:os').then((o) => o.tmpdir()), `fleet-mq-${process.pid}`);
    mq = await startMosquitto(bin!, dir);
    f = await createFixture('mosquitto', { externalUrl: mq.url });
    spawnFleet(f, 'serve', ['serve', '--broker', mq.url, '--data-dir', path.join(f.dir, 'store')]);
    const watch = await StatusWatch.start(f);
    for (const id of ['mq-1', 'mq-2']) spawnDevice(f, id);
    for (const id of ['mq-1', 'mq-2']) await watch.until(id, (s) => s.state === 'idle');
    await publish(f);
    for (const id of ['mq-1', 'mq-2']) {
      const s = await watch.until(id, (s) => s.state === 'ok');
      expect(s.running).toBe(f.update.targetDigest);
      expect(await currentDigest(f, id)).toBe(f.update.targetDigest);
    }
  });

  it('the update server re-asserts its releases when Mosquitto restarts empty', async () => {
    const dir = path.join(await import('node:os').then((o) => o.tmpdir()), `fleet-mq2-${process.pid}`);
    mq = await startMosquitto(bin!, dir);
    f = await createFixture('mosquitto-restart', { externalUrl: mq.url });
    spawnFleet(f, 'serve', ['serve', '--broker', mq.url, '--data-dir', path.join(f.dir, 'store')]);
    await untilLog(path.join(f.dir, 'serve.log'), /fleet update server on/);
    await publish(f);
    // Mosquitto without persistence forgets every retained message when it restarts.
    await mq.stop();
    mq = await startMosquitto(bin!, dir, mq.port);
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'after-restart');
    const s = await watch.until('after-restart', (s) => s.state === 'ok', 45_000);
    expect(s.running).toBe(f.update.targetDigest);
  });
});
