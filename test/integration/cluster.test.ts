/**
 * Two Aedes nodes on one Redis (`fleet broker --cluster`), each its own OS
 * process with its own update server on one shared content store; node A
 * holds the lease (uploads, releases). An update published through A is
 * fetched by devices connected to B (answered by B); B killed in the middle
 * of a transfer: its devices fail over to A and complete there.
 */
import path from 'node:path';
import { createRequire } from 'node:module';
import { afterEach, describe, expect, it } from 'vitest';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { BrokerProcess } from '../support/broker-process.ts';
import { createFixture, currentDigest, freePort, MEDIUM_LAYERS, publish, spawnDevice, StatusWatch, type Fixture } from '../support/harness.ts';
import { findRedis, RedisSpy, startRedis, type RedisServer } from '../support/redis.ts';
import { until } from '../support/wait.ts';

const Redis = createRequire(import.meta.url)('ioredis') as new (url: string) => { get(key: string): Promise<string | null>; disconnect(): void };

/** A Redis key's value, read over a connection of its own. */
async function redisGet(url: string, key: string): Promise<string | null> {
  const r = new Redis(url);
  try {
    return await r.get(key);
  } finally {
    r.disconnect();
  }
}

const redisBin = findRedis();
if (!redisBin) console.warn('skipping the cluster suite: redis-server is not installed (apt-get install redis-server; .ci/run installs it)');

let f: Fixture | undefined;
let nodes: BrokerProcess[] = [];
let proxy: LinkProxy | undefined;
let redis: RedisServer | undefined;
afterEach(async () => {
  await f?.close();
  for (const n of nodes) await n.stop();
  await proxy?.stop();
  await redis?.stop();
  f = proxy = redis = undefined;
  nodes = [];
});

/** Redis, node A (lease holder) and node B, each with its update server on one shared store, and a fixture whose own clients use A. */
async function twoNodes(tag: string): Promise<{ a: BrokerProcess; b: BrokerProcess }> {
  redis = await startRedis(redisBin!);
  const [pa, pb] = [await freePort(), await freePort()];
  f = await createFixture(tag, { externalUrl: `mqtt://127.0.0.1:${pa}`, layers: MEDIUM_LAYERS, rank: 16 });
  const store = ['--store', path.join(f.dir, 'shared-store')];
  const a = await BrokerProcess.start(pa, ['--data-dir', path.join(f.dir, 'node-a'), '--cluster', redis.url, ...store], f.dir, 'node-a');
  nodes.push(a);
  const b = await BrokerProcess.start(pb, ['--data-dir', path.join(f.dir, 'node-b'), '--cluster', redis.url, ...store], f.dir, 'node-b');
  nodes.push(b);
  return { a, b };
}

describe.skipIf(!redisBin)('two Aedes nodes on Redis', () => {
  it('an update published through node A is fetched by devices on node B; statuses reach A', async () => {
    const { b } = await twoNodes('cluster-ab');
    const watch = await StatusWatch.start(f!); // on A
    const spy = await RedisSpy.start(redis!.url);
    const ids = ['cb-1', 'cb-2'];
    for (const id of ids) spawnDevice(f!, id, [], b.url);
    for (const id of ids) await watch.until(id, (s) => s.state === 'idle', 60_000);
    await publish(f!); // through A
    for (const id of ids) {
      const s = await watch.until(id, (s) => s.state === 'ok', 60_000);
      expect(s.running).toBe(f!.update.targetDigest);
      expect(await currentDigest(f!, id)).toBe(f!.update.targetDigest);
    }
    // B answered its own devices: no chunk request or frame crossed Redis, while the releases and statuses did.
    spy.close();
    expect(spy.chunkTraffic).toEqual([]);
    expect(spy.channels.some((c) => c.endsWith('/release'))).toBe(true);
    expect(spy.channels.some((c) => c.endsWith('/status'))).toBe(true);
  });

  it('a third node with an update server joins (no refusal) and its devices complete; the lease names node A', async () => {
    const { a } = await twoNodes('cluster-lease');
    const pc = await freePort();
    const c = await BrokerProcess.start(pc, ['--data-dir', path.join(f!.dir, 'node-c'), '--cluster', redis!.url, '--store', path.join(f!.dir, 'shared-store')], f!.dir, 'node-c');
    nodes.push(c);
    const watch = await StatusWatch.start(f!);
    spawnDevice(f!, 'cc-1', [], c.url);
    await watch.until('cc-1', (s) => s.state === 'idle', 60_000);
    await publish(f!);
    const s = await watch.until('cc-1', (s) => s.state === 'ok', 60_000);
    expect(s.running).toBe(f!.update.targetDigest);
    expect(await redisGet(redis!.url, 'fleet:fleet:update-server')).toContain(String(a.port));
  });

  it('node B killed mid-transfer: its devices reconnect to node A and complete', async () => {
    const { a, b } = await twoNodes('cluster-failover');
    // B's devices reach it over a slow shared link so the kill lands mid-transfer; A is their fallback.
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: b.port, bytesPerSecond: 24_000, sharedBandwidth: true });
    await proxy.start();
    const watch = await StatusWatch.start(f!);
    const ids = ['cf-1', 'cf-2', 'cf-3'];
    for (const id of ids) spawnDevice(f!, id, ['--reconnect-max', '2'], `${proxy.url},${a.url}`);
    for (const id of ids) await watch.until(id, (s) => s.state === 'idle', 60_000);
    const before = proxy.deliveredDown;
    await publish(f!);
    const total = ids.length * f!.update.payload.byteLength;
    await until(() => proxy!.deliveredDown - before >= total / 3, { what: "a third of the fleet's payload across the link", timeoutMs: 60_000, intervalMs: 20 });
    expect(proxy.deliveredDown - before).toBeLessThan(total);
    await b.kill('SIGKILL');
    expect(ids.filter((id) => watch.latest.get(id)?.state === 'ok').length).toBeLessThan(ids.length);
    for (const id of ids) {
      const s = await watch.until(id, (s) => s.state === 'ok', 90_000);
      expect(s.running).toBe(f!.update.targetDigest);
      expect(await currentDigest(f!, id)).toBe(f!.update.targetDigest);
      // Every device connected again after the kill (to A: B is gone).
      expect(s.wire).not.toBeNull();
      expect(s.wire!.connects).toBeGreaterThanOrEqual(2);
    }
  });
});
