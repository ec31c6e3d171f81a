/**
 * A device's will in a cluster (its presence `offline`, which a surviving
 * node publishes for the devices of a node that died): stored with one Redis
 * round trip and removed with one (broker/cluster-wills.ts), where
 * aedes-persistence-redis sent three to remove at CONNECT a will no node
 * stores, three to store it and three to remove it. Two Aedes nodes in this
 * process on one real redis-server, real TCP; MONITOR sees every command.
 */
import type { Readable } from 'node:stream';
import mqtt from 'mqtt';
import { describe, expect, it } from 'vitest';
import type { RunningBroker } from '../../nodes/broker-node.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { topics } from '../support/harness.ts';
import { findRedis, monitorRedis, twoClusterNodes } from '../support/redis.ts';
import { observeFor, until } from '../support/wait.ts';

const redisBin = findRedis();
if (!redisBin) console.warn('skipping the cluster wills suite: redis-server is not installed');

const env = useBrokerEnv('cluster-wills');

const twoNodes = (): ReturnType<typeof twoClusterNodes> => twoClusterNodes(env, redisBin!);

interface StoredWill {
  topic: string;
  payload: Buffer;
  clientId: string;
  brokerId: string;
}

/** The wills a node would publish if their nodes were dead (what Aedes reads on a surviving node). */
async function willsSeenBy(node: RunningBroker): Promise<StoredWill[]> {
  const p = (node.aedes as unknown as { persistence: unknown }).persistence as { streamWill(brokers: Record<string, number>): Readable };
  const out: StoredWill[] = [];
  for await (const w of p.streamWill({})) out.push(w as StoredWill);
  return out;
}

/** A device connection with its presence will, as `fleet device` opens it. */
function connectWithWill(url: string, device: string): Promise<mqtt.MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, {
      clientId: `fleet-device-${device}`,
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      will: { topic: topics.presence(device), payload: Buffer.from('offline'), qos: 1, retain: true },
    });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

/** The commands that named a will (the list `will` or a key `will:…`), by name (EVAL and EVALSHA: `script`). */
const willCommands = (commands: string[][]): string[] =>
  commands
    .filter((c) => c.slice(1).some((x) => x === 'will' || x.startsWith('will:')))
    .map((c) => c[0]!.toLowerCase())
    .map((c) => (c === 'eval' || c === 'evalsha' ? 'script' : c));

describe.skipIf(!redisBin)("a device's will in a cluster", () => {
  it('is stored with one Redis command, read by the other node, and removed with one at a clean disconnect', async () => {
    const { a, b, url } = await twoNodes();
    const mon = env.track(await monitorRedis(url));
    const dev = await connectWithWill(b.url, 'will-1');
    env.track({ close: () => new Promise<void>((r) => dev.end(true, {}, () => r())) });
    const ours = `will:${b.aedes.id}:`;
    await until(() => mon.commands.some((c) => c.some((x) => x.startsWith(ours))), { what: "node B's will on the monitor", timeoutMs: 10_000 });
    await observeFor(300, 'commands sent in the same turn');
    // CONNECT: no removal of a will that cannot exist, one script to store it (was LREM, GET, DEL, LREM, RPUSH, SET).
    const atConnect = willCommands(mon.commands);
    expect(atConnect, JSON.stringify(atConnect)).toEqual(['script']);
    const stored = await willsSeenBy(a);
    expect(stored).toMatchObject([{ topic: topics.presence('will-1'), clientId: 'fleet-device-will-1', brokerId: b.aedes.id }]);
    expect(Buffer.from(stored[0]!.payload).toString()).toBe('offline');

    const seen = mon.commands.length;
    await new Promise<void>((r) => dev.end(false, {}, () => r()));
    await until(() => willCommands(mon.commands.slice(seen)).length > 0, { what: 'the removal on the monitor', timeoutMs: 10_000 });
    await observeFor(300, 'commands sent in the same turn');
    // DISCONNECT: one script (was LREM, GET, DEL).
    const atDisconnect = willCommands(mon.commands.slice(seen));
    expect(atDisconnect, JSON.stringify(atDisconnect)).toEqual(['script']);
    expect(await willsSeenBy(a)).toEqual([]);
  });

  it('a connection lost without DISCONNECT: its node publishes the will to the other node, and removes it from Redis', async () => {
    const { a, b } = await twoNodes();
    const op = env.track(await MqttTransport.connect({ url: a.url, clientId: 'fleet-operator-wills' }, 10_000));
    const got: string[] = [];
    op.onMessage((topic, payload) => topic === topics.presence('will-2') && got.push(Buffer.from(payload).toString()));
    await op.subscribe(topics.presence('will-2'), 1);
    const dev = await connectWithWill(b.url, 'will-2');
    await until(async () => (await willsSeenBy(a)).length === 1, { what: 'the stored will', timeoutMs: 10_000 });
    dev.stream.destroy();
    await new Promise<void>((r) => dev.end(true, {}, () => r()));
    await until(() => got.some((p) => p.startsWith('offline')), { what: "the will on node A's subscriber", timeoutMs: 15_000, context: () => JSON.stringify(got) });
    await until(async () => (await willsSeenBy(a)).length === 0, { what: 'the published will removed from Redis', timeoutMs: 10_000 });
  });
});
