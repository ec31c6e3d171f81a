/**
 * Node-local chunk delivery in a cluster (broker/cluster-emitter.ts): two or
 * three Aedes nodes in this process on one real redis-server, real TCP, one
 * content store shared by the nodes. A spy subscribed to every Redis channel
 * counts what crosses Redis.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import type { BrokerOptions, RunningBroker } from '../../nodes/broker-node.ts';
import { updateIdOf } from '../../protocol/chunks.ts';
import { decodeFrame, encodeRequest, type Frame } from '../../protocol/frames.ts';
import { ContentStore } from '../../server/content-store.ts';
import { UpdateServer } from '../../server/update-server.ts';
import { silentLogger } from '../../util/log.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { CHUNK, createFixture, MODEL, publish, topics, type Fixture } from '../support/harness.ts';
import { findRedis, RedisSpy, startRedis, type RedisServer } from '../support/redis.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';

const redisBin = findRedis();
if (!redisBin) console.warn('skipping the node-local cluster suite: redis-server is not installed');

const env = useBrokerEnv('cluster-local');
let redis: RedisServer | undefined;

/** Redis first, so that it stops after the nodes (the env closes last first). */
async function startCluster(): Promise<RedisServer> {
  redis = await startRedis(redisBin!);
  const r = redis;
  env.track({ close: () => r.stop() });
  return r;
}

async function fixture(tag: string, url: string): Promise<Fixture> {
  const f = await createFixture(tag, { externalUrl: url, layers: [[256, 256]], rank: 8 });
  env.track(f);
  return f;
}

async function node(name: string, o: Partial<BrokerOptions> = {}): Promise<RunningBroker> {
  const dir = await env.dir();
  return env.broker({ cluster: redis!.url, store: path.join(dir, 'shared-store'), ...o }, name);
}

/** A client standing in for device `id` on `url`: what it receives on its frames topic. */
async function rawDevice(url: string, id: string, cred?: { username: string; password: string }): Promise<{ t: MqttTransport; frames: Frame[] }> {
  const t = env.track(await MqttTransport.connect({ url, clientId: `fleet-device-${id}`, ...cred }, 10_000));
  const frames: Frame[] = [];
  t.onMessage((topic, payload) => {
    if (topics.parse(topic)?.kind === 'frames') frames.push(decodeFrame(payload));
  });
  await t.subscribe(topics.framesFor(MODEL, id), 1);
  return { t, frames };
}

const WANT = [0, 1, 2, 5];
const ask = (t: MqttTransport, updateId: string, id: string): Promise<void> => t.publish(topics.request(MODEL, updateId, id), encodeRequest({ list: true, want: WANT }), { qos: 1 });
const summary = (frames: Frame[]): string[] => frames.map((x) => (x.kind === 'chunk' ? `chunk ${x.index}` : x.kind)).sort();
const EXPECTED = ['chunk 0', 'chunk 1', 'chunk 2', 'chunk 5', 'list'];

describe.skipIf(!redisBin)('a cluster whose nodes answer their own devices', () => {
  it('a request on node B is answered once, by B, from the shared store; no chunk request or frame crosses Redis', async () => {
    await startCluster();
    const a = await node('node-a');
    const b = await node('node-b');
    expect([a.holdsLease(), b.holdsLease()]).toEqual([true, false]);
    const f = await fixture('cluster-local', b.url);
    // Published through B: the upload crosses Redis to A (the lease holder), which writes it to the shared store.
    const pub = await publish(f);
    expect(a.updateServer!.stats.uploadsStored).toBeGreaterThanOrEqual(1);
    expect(b.updateServer!.stats.uploadChunks).toBe(0);
    expect(b.updateServer!.stats.uploadsStored).toBe(0);

    const spy = env.track(await RedisSpy.start(redis!.url));
    const dev = await rawDevice(b.url, 'local-1');
    await ask(dev.t, pub.updateId, 'local-1');
    await until(() => dev.frames.length >= EXPECTED.length, {
      what: 'the list and four chunks on node B',
      timeoutMs: 20_000,
      context: () => JSON.stringify([a.updateServer!.stats, b.updateServer!.stats, b.clusterCounters, a.clusterCounters, dev.frames.length]),
    });
    await expectNoEventWithin(1000, () => dev.frames.length > EXPECTED.length, 'a second answer');
    expect(summary(dev.frames)).toEqual(EXPECTED);
    expect(b.updateServer!.stats.requests).toBe(1);
    expect(a.updateServer!.stats.requests).toBe(0);
    expect(spy.chunkTraffic).toEqual([]);
    expect(b.clusterCounters!.redisChunkMessages).toBe(0);
    expect(b.clusterCounters!.localMessages).toBeGreaterThanOrEqual(EXPECTED.length + 1);
  });

  it('a device that moves from node B to node A mid-transfer is answered by A, once per request', async () => {
    await startCluster();
    const a = await node('node-a');
    const b = await node('node-b');
    const f = await fixture('cluster-move', a.url);
    const pub = await publish(f);
    const spy = env.track(await RedisSpy.start(redis!.url));
    const first = await rawDevice(b.url, 'mover');
    await ask(first.t, pub.updateId, 'mover');
    await until(() => first.frames.length >= EXPECTED.length, { what: 'the first answer on B', timeoutMs: 20_000 });
    await env.closeNow(first.t);
    const second = await rawDevice(a.url, 'mover');
    await second.t.publish(topics.request(MODEL, pub.updateId, 'mover'), encodeRequest({ list: false, want: [3, 4] }), { qos: 1 });
    await until(() => second.frames.length >= 2, { what: 'the rest on A', timeoutMs: 20_000 });
    await expectNoEventWithin(1000, () => second.frames.length > 2, 'a second answer on A');
    expect(summary(second.frames)).toEqual(['chunk 3', 'chunk 4']);
    expect([a.updateServer!.stats.requests, b.updateServer!.stats.requests]).toEqual([1, 1]);
    expect(spy.chunkTraffic).toEqual([]);
  });

  it('a node without an update server: its devices are answered once, by the lease holder, through Redis', async () => {
    await startCluster();
    const a = await node('node-a');
    const b = await node('node-b');
    const c = await node('node-c', { updateServer: false });
    const f = await fixture('cluster-mixed', a.url);
    const pub = await publish(f);
    const dev = await rawDevice(c.url, 'remote-1');
    await ask(dev.t, pub.updateId, 'remote-1');
    await until(() => dev.frames.length >= EXPECTED.length, { what: 'the answer through Redis', timeoutMs: 20_000 });
    await expectNoEventWithin(1000, () => dev.frames.length > EXPECTED.length, 'a second answer');
    expect(summary(dev.frames)).toEqual(EXPECTED);
    expect([a.updateServer!.stats.requests, b.updateServer!.stats.requests]).toEqual([1, 0]);
  });

  it('`fleet serve` beside a cluster of nodes without update servers: answered once, through Redis, as before', async () => {
    await startCluster();
    const a = await node('node-a', { updateServer: false });
    const b = await node('node-b', { updateServer: false });
    const transport = env.track(await MqttTransport.connect({ url: a.url, clientId: 'fleet-update-server-beside' }, 10_000));
    const server = new UpdateServer({ transport, store: new ContentStore(path.join(await env.dir(), 'serve-store')), topics, log: silentLogger, settleMs: 200 });
    await server.start();
    env.track({ close: () => server.stop() });
    const f = await fixture('cluster-serve', b.url);
    const pub = await publish(f);
    const spy = env.track(await RedisSpy.start(redis!.url));
    const dev = await rawDevice(b.url, 'beside-1');
    await ask(dev.t, pub.updateId, 'beside-1');
    await until(() => dev.frames.length >= EXPECTED.length, { what: 'the answer of fleet serve', timeoutMs: 20_000 });
    await expectNoEventWithin(1000, () => dev.frames.length > EXPECTED.length, 'a second answer');
    expect(summary(dev.frames)).toEqual(EXPECTED);
    expect(server.stats.requests).toBe(1);
    // The request and its five frames crossed Redis (the device is on B, the server on A).
    expect(spy.chunkTraffic.length).toBe(1 + EXPECTED.length);
  });

  it('when the lease holder stops, another serving node takes the lease and then accepts uploads', async () => {
    await startCluster();
    const a = await node('node-a');
    const b = await node('node-b');
    expect([a.holdsLease(), b.holdsLease()]).toEqual([true, false]);
    await env.closeNow(a);
    // B tries again at every renewal (a third of the 15 s lease); A gave the lease up on its clean stop.
    await until(() => b.holdsLease(), { what: 'node B holding the lease', timeoutMs: 20_000 });
    const f = await fixture('cluster-takeover', b.url);
    const pub = await publish(f);
    expect(b.updateServer!.stats.uploadsStored).toBeGreaterThanOrEqual(1);
    const dev = await rawDevice(b.url, 'after-1');
    await ask(dev.t, pub.updateId, 'after-1');
    await until(() => dev.frames.length >= EXPECTED.length, { what: 'the answer after the takeover', timeoutMs: 20_000 });
    expect(summary(dev.frames)).toEqual(EXPECTED);
  });

  it('with --auth, a device on a node cannot receive another device’s frames', async () => {
    await startCluster();
    const dir = await env.dir();
    const users = path.join(dir, 'users.json');
    const device = async (name: string): Promise<Parameters<typeof writeUsersFile>[1]['users'][number]> => ({ name, role: 'device', group: 'line-1', model: MODEL, ...(await hashPassword(`${name}-pw`)) });
    await writeUsersFile(users, { users: [await device('dev-a'), await device('dev-b')] });
    // The content is in the shared store before the nodes start (a publisher would need its own login here).
    const payload = new Uint8Array(8 * CHUNK).map((_, i) => (i * 7) & 255);
    const updateId = updateIdOf(payload);
    const store = new ContentStore(path.join(dir, 'shared-store'));
    await store.init();
    for (let i = 0; i < 8; i++) await store.receiveUpload(MODEL, updateId, i, 8, payload.subarray(i * CHUNK, (i + 1) * CHUNK));
    await store.close();
    const a = await node('node-a', { auth: users });
    const b = await node('node-b', { auth: users });
    const devA = await rawDevice(b.url, 'dev-a', { username: 'dev-a', password: 'dev-a-pw' });
    const devB = await rawDevice(b.url, 'dev-b', { username: 'dev-b', password: 'dev-b-pw' });
    await expect(devB.t.subscribe(topics.framesFor(MODEL, 'dev-a'), 1)).rejects.toMatchObject({ code: 'subscription-refused' });
    await expect(devB.t.subscribe(`${topics.prefix}/#`, 1)).rejects.toMatchObject({ code: 'subscription-refused' });
    await ask(devA.t, updateId, 'dev-a');
    await until(() => devA.frames.length >= EXPECTED.length, { what: "dev-a's frames", timeoutMs: 20_000, context: () => JSON.stringify([a.updateServer!.stats, b.updateServer!.stats, b.clusterCounters]) });
    await expectNoEventWithin(1000, () => devB.frames.length > 0, "dev-a's frames reaching dev-b");
    expect(summary(devA.frames)).toEqual(EXPECTED);
  });
});
