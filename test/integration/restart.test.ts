/**
 * Restarts lose nothing: the broker (its own OS process) is stopped by PID in
 * the middle of a transfer, with SIGTERM and with SIGKILL, and started again on
 * the same port with the same data directory (on-disk default) or the same
 * Redis (--cluster). Every device completes and acks, the retained release is
 * byte for byte the one published, and the retained statuses reappear.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { BrokerProcess } from '../support/broker-process.ts';
import { createFixture, currentDigest, freePort, GROUP, MEDIUM_LAYERS, MODEL, publish, spawnDevice, StatusWatch, topics, connect, type Fixture } from '../support/harness.ts';
import { findRedis, startRedis, type RedisServer } from '../support/redis.ts';
import { until } from '../support/wait.ts';

const redisBin = findRedis();
if (!redisBin) console.warn('skipping the Redis restart cases: redis-server is not installed (apt-get install redis-server; .ci/run installs it)');

let f: Fixture | undefined;
let broker: BrokerProcess | undefined;
let proxy: LinkProxy | undefined;
let redis: RedisServer | undefined;
afterEach(async () => {
  // The broker first: it writes into the fixture's directory (its data dir) until it stops, and
  // removing that directory under it failed a run with ENOTEMPTY.
  await broker?.stop();
  await f?.close();
  await proxy?.stop();
  await redis?.stop();
  f = broker = proxy = redis = undefined;
});

const DEVICES = ['r-1', 'r-2', 'r-3'];

/** The retained bytes on a topic as a fresh subscriber sees them (undefined: none within the wait). */
async function retained(fx: Fixture, topic: string, waitMs = 5000): Promise<Buffer | undefined> {
  const t = await connect(fx, `test-retained-${Math.random().toString(36).slice(2)}`);
  const got = new Promise<Buffer | undefined>((resolve) => {
    const timer = setTimeout(() => resolve(undefined), waitMs);
    t.onMessage((tp, payload, isRetained) => {
      if (tp !== topic || !isRetained) return;
      clearTimeout(timer);
      resolve(Buffer.from(payload));
    });
  });
  await t.subscribe(topic, 1);
  return got;
}

const cases: Array<{ store: 'disk' | 'redis'; signal: 'SIGTERM' | 'SIGKILL' }> = [
  { store: 'disk', signal: 'SIGKILL' },
  { store: 'disk', signal: 'SIGTERM' },
  { store: 'redis', signal: 'SIGKILL' },
  { store: 'redis', signal: 'SIGTERM' },
];

describe('a broker restarted in the middle of a transfer loses nothing', () => {
  for (const c of cases) {
    it.skipIf(c.store === 'redis' && !redisBin)(`${c.store}, ${c.signal}: every device acks, the release is intact, retained statuses reappear`, async () => {
      const port = await freePort();
      f = await createFixture(`restart-${c.store}`, { externalUrl: `mqtt://127.0.0.1:${port}`, layers: MEDIUM_LAYERS, rank: 16 });
      const extra = ['--data-dir', path.join(f.dir, 'broker')];
      if (c.store === 'redis') {
        redis = await startRedis(redisBin!);
        extra.push('--cluster', redis.url);
      }
      broker = await BrokerProcess.start(port, extra, f.dir);
      // Devices sit behind a slow shared link so that the stop lands mid-transfer.
      proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: port, bytesPerSecond: 24_000, sharedBandwidth: true });
      await proxy.start();
      const watch = await StatusWatch.start(f);
      for (const id of DEVICES) spawnDevice(f, id, ['--reconnect-max', '2'], proxy.url);
      for (const id of DEVICES) await watch.until(id, (s) => s.state === 'idle', 60_000);
      const before = proxy.deliveredDown;
      await publish(f);
      const releaseTopic = topics.release(GROUP, MODEL);
      const published = await retained(f, releaseTopic);
      expect(published).toBeDefined();

      // Stop the broker once about a third of the fleet's payload has crossed the link.
      const total = DEVICES.length * f.update.payload.byteLength;
      await until(() => proxy!.deliveredDown - before >= total / 3, { what: "a third of the fleet's payload across the link", timeoutMs: 60_000, intervalMs: 20 });
      expect(proxy.deliveredDown - before).toBeLessThan(total);
      await broker.kill(c.signal);
      const acksBeforeRestart = DEVICES.filter((id) => watch.latest.get(id)?.state === 'ok').length;
      expect(acksBeforeRestart).toBeLessThan(DEVICES.length);
      await new Promise((r) => setTimeout(r, 500));
      await broker.restart();

      for (const id of DEVICES) {
        const s = await watch.until(id, (s) => s.state === 'ok', 90_000);
        expect(s.running).toBe(f.update.targetDigest);
        expect(await currentDigest(f, id)).toBe(f.update.targetDigest);
      }
      expect(Buffer.compare((await retained(f, releaseTopic))!, published!)).toBe(0);

      // Devices gone, broker stopped the same way again: the acks are still there for operators.
      await Promise.all(
        f.children.splice(0).map(
          (ch) =>
            new Promise<void>((r) => {
              ch.once('exit', () => r());
              process.kill(ch.pid!, 'SIGTERM');
            }),
        ),
      );
      await new Promise((r) => setTimeout(r, 300));
      await broker.kill(c.signal);
      await broker.restart();
      const fresh = await StatusWatch.start(f);
      for (const id of DEVICES) {
        const s = await fresh.until(id, (s) => s.state === 'ok', 30_000);
        expect(s.running).toBe(f.update.targetDigest);
      }
      expect(Buffer.compare((await retained(f, releaseTopic))!, published!)).toBe(0);
    });
  }
});
