/**
 * The transport's list of broker URLs (transport/mqtt.ts `fallbackUrls`, the
 * device's `--broker URL1,URL2`): a first URL that refuses moves on to the
 * next, and a connection lost to a stopped broker comes back on another.
 */
import os from 'node:os';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../broker/broker.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { freePort } from '../support/harness.ts';
import { until } from '../support/wait.ts';

let dir: string | undefined;
const brokers: RunningBroker[] = [];
const transports: MqttTransport[] = [];
afterEach(async () => {
  for (const t of transports.splice(0)) await t.close();
  for (const b of brokers.splice(0)) await b.close();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function broker(name: string): Promise<RunningBroker> {
  dir ??= await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-failover-'));
  const b = await startBroker({ port: 0, dataDir: path.join(dir, name), persistence: 'memory', updateServer: false, log: silentLogger });
  brokers.push(b);
  return b;
}

describe('a list of broker URLs', () => {
  it('skips a URL where nothing listens and connects to the next', async () => {
    const live = await broker('live');
    const dead = `mqtt://127.0.0.1:${await freePort()}`;
    const seen: string[] = [];
    live.aedes.on('client', (c) => seen.push(c.id));
    const t = MqttTransport.start({ url: dead, fallbackUrls: [live.url], clientId: 'failover-1', reconnectMinMs: 100, reconnectMaxMs: 500 });
    transports.push(t);
    await until(() => t.connected, { what: 'failover-1 connected', timeoutMs: 20_000 });
    expect(seen).toEqual(['failover-1']);
  });

  it('moves to the other node when its broker stops, and subscriptions come back there', async () => {
    const a = await broker('a');
    const b = await broker('b');
    const onB: string[] = [];
    b.aedes.on('client', (c) => onB.push(c.id));
    const t = MqttTransport.start({ url: a.url, fallbackUrls: [b.url], clientId: 'failover-2', reconnectMinMs: 100, reconnectMaxMs: 500 });
    transports.push(t);
    const got: string[] = [];
    t.onMessage((topic) => got.push(topic));
    await until(() => t.connected, { what: 'failover-2 connected to a', timeoutMs: 20_000 });
    await t.subscribe('x/#', 1);
    expect(onB).toEqual([]);
    await a.close();
    brokers.splice(brokers.indexOf(a), 1);
    await until(() => t.connected && onB.includes('failover-2'), { what: 'failover-2 connected to b', timeoutMs: 20_000 });
    // Re-subscribed on b: a message published there arrives.
    const pub = await MqttTransport.connect({ url: b.url, clientId: 'failover-pub' }, 10_000);
    transports.push(pub);
    await until(() => {
      void pub.publish('x/1', 'hello', { qos: 1 });
      return got.includes('x/1');
    }, { what: 'x/1 arriving through the re-subscription on b', timeoutMs: 20_000 });
    expect(t.stats().connects).toBe(2);
  });
});
