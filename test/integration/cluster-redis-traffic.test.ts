/**
 * What a device's connection sends through Redis in a cluster (issue #22's
 * Redis bytes per payload byte): two Aedes nodes in this process on one real
 * redis-server, real TCP; a spy subscribed to every Redis channel sees what
 * crosses it. Aedes's `$SYS` notices that no node listens to stay on the node;
 * the ones Aedes needs across nodes (`…/new/clients`: a client id that
 * reconnects on another node closes its old session there) still cross.
 */
import mqtt from 'mqtt';
import { describe, expect, it } from 'vitest';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { MODEL, topics } from '../support/harness.ts';
import { findRedis, monitorRedis, RedisSpy, twoClusterNodes } from '../support/redis.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';

const redisBin = findRedis();
if (!redisBin) console.warn('skipping the cluster Redis-traffic suite: redis-server is not installed');

const env = useBrokerEnv('cluster-redis-traffic');

const twoNodes = (): ReturnType<typeof twoClusterNodes> => twoClusterNodes(env, redisBin!);

const sysNotice = (channel: string): string | undefined => /^\$SYS\/[^/]+\/(.+)$/.exec(channel)?.[1];

describe.skipIf(!redisBin)('what a device connection sends through Redis', () => {
  it('subscribe, unsubscribe and disconnect notices stay on the node; the new-client notice still crosses', async () => {
    const { b, url } = await twoNodes();
    const spy = env.track(await RedisSpy.start(url));
    // The node's own update server subscribed at start: count from here.
    const before = b.clusterCounters!.localSysMessages;
    const dev = env.track(await MqttTransport.connect({ url: b.url, clientId: 'fleet-device-quiet-1' }, 10_000));
    await dev.subscribe([topics.framesFor(MODEL, 'quiet-1'), topics.release('fleet', MODEL)], 1);
    await dev.unsubscribe(topics.release('fleet', MODEL));
    await env.closeNow(dev);
    const crossed = (): string[] => spy.channels.map(sysNotice).filter((n) => n === 'new/subscribes' || n === 'new/unsubscribes' || n === 'disconnect/clients');
    await expectNoEventWithin(1500, () => crossed().length > 0, `a subscribe, unsubscribe or disconnect notice crossing Redis (${crossed().join(', ')})`);
    await until(() => b.clusterCounters!.localSysMessages >= before + 3, { what: 'the three notices on node B', timeoutMs: 10_000, context: () => JSON.stringify([b.clusterCounters, spy.channels]) });
    expect(spy.channels.map(sysNotice)).toContain('new/clients');
    expect(b.clusterCounters!.localSysMessages - before).toBeGreaterThanOrEqual(3);
  });

  it('a client id that connects on node A closes its session on node B (the new-client notice crosses Redis)', async () => {
    const { a, b } = await twoNodes();
    const connect = (u: string): Promise<mqtt.MqttClient> =>
      new Promise((resolve, reject) => {
        const c = mqtt.connect(u, { clientId: 'fleet-device-twice', reconnectPeriod: 0, connectTimeout: 10_000 });
        c.once('connect', () => resolve(c));
        c.once('error', reject);
      });
    // Aedes closes a local client when another node announces the same id (`$SYS/<node>/new/clients`),
    // and does not order the announcements: had node A got `first`'s announcement after `second`
    // connected there (a loaded machine: one clean-clone CI run of eight), it would close `second` for
    // it. A device that reconnects on another node does so after its old connection failed, seconds
    // later; so here `second` connects once node A has heard of `first`.
    const announcedOnA = new Promise<void>((resolve) =>
      a.aedes.subscribe(
        '$SYS/+/new/clients',
        (packet, cb) => {
          if (Buffer.from(packet.payload).toString() === 'fleet-device-twice') resolve();
          cb();
        },
        () => undefined,
      ),
    );
    const first = await connect(b.url);
    env.track({ close: () => new Promise<void>((r) => first.end(true, {}, () => r())) });
    await announcedOnA;
    let firstClosed = false;
    first.on('close', () => (firstClosed = true));
    const second = await connect(a.url);
    env.track({ close: () => new Promise<void>((r) => second.end(true, {}, () => r())) });
    await until(() => firstClosed, { what: 'node B closing the old session of fleet-device-twice', timeoutMs: 10_000 });
    expect(second.connected).toBe(true);
  });

  it('a retained status crosses Redis once (stored and published by one command); live and later subscribers on the other node get it', async () => {
    const { a, b, url } = await twoNodes();
    const watcher = env.track(await MqttTransport.connect({ url: a.url, clientId: 'fleet-operator-watch' }, 10_000));
    const live: string[] = [];
    watcher.onMessage((_topic, payload) => live.push(Buffer.from(payload).toString('utf8')));
    await watcher.subscribe(topics.status('once-1'), 1);
    const mon = env.track(await monitorRedis(url));
    const dev = env.track(await MqttTransport.connect({ url: b.url, clientId: 'fleet-device-once-1' }, 10_000));
    const marks = ['first', 'second', 'third'].map((m) => `{"device":"once-1","mark":"${m}-${Math.random().toString(36).slice(2)}"}`);
    for (const m of marks) await dev.publish(topics.status('once-1'), m, { qos: 1, retain: true });
    await until(() => live.length >= marks.length, { what: 'the three statuses on node A', timeoutMs: 10_000 });
    expect(live).toEqual(marks);
    // Every command that carried a status's payload to Redis: one per status (was two: HSET retained, then PUBLISH).
    await until(() => mon.commands.some((c) => c.some((x) => x.includes(marks[2]!))), { what: 'the monitor seeing the last status', timeoutMs: 10_000 });
    const carrying = marks.map((m) => mon.commands.filter((c) => c.some((x) => x.includes(m))).map((c) => c[0]!.toLowerCase()));
    expect(carrying, JSON.stringify(carrying)).toEqual(marks.map(() => ['evalsha']));
    expect(b.clusterCounters!.redisRetainedOnce).toBeGreaterThanOrEqual(marks.length);
    // The last one is stored: a subscriber arriving later on node A gets it, as before.
    const later = env.track(await MqttTransport.connect({ url: a.url, clientId: 'fleet-operator-later' }, 10_000));
    const got: string[] = [];
    later.onMessage((_topic, payload) => got.push(Buffer.from(payload).toString('utf8')));
    await later.subscribe(topics.status('once-1'), 1);
    await until(() => got.length >= 1, { what: 'the retained status on node A', timeoutMs: 10_000 });
    expect(got).toEqual([marks[2]]);
  });

  it("a device's subscription to its frames does not scan the retained hash; a wildcard status subscription still gets the retained statuses", async () => {
    const { b, url } = await twoNodes();
    const dev = env.track(await MqttTransport.connect({ url: b.url, clientId: 'fleet-device-scan-1' }, 10_000));
    for (let i = 0; i < 30; i++) await dev.publish(topics.status(`scan-${i}`), `{"device":"scan-${i}"}`, { qos: 1, retain: true });
    const mon = env.track(await monitorRedis(url));
    const scans = (): number => mon.commands.filter((c) => c[0]!.toLowerCase() === 'hscan').length;
    await dev.subscribe(topics.framesFor(MODEL, 'scan-1'), 1);
    await expectNoEventWithin(1000, () => scans() > 0, 'an HSCAN of the retained hash for a frames subscription');
    const op = env.track(await MqttTransport.connect({ url: b.url, clientId: 'fleet-operator-scan' }, 10_000));
    const got = new Set<string>();
    op.onMessage((topic) => got.add(topic));
    await op.subscribe(topics.allStatuses(), 1);
    await until(() => got.size >= 30, { what: 'the 30 retained statuses', timeoutMs: 10_000, context: () => String(got.size) });
    expect(scans()).toBeGreaterThan(0);
  });
});
