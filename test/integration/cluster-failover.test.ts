/**
 * The transport's list of broker URLs (transport/mqtt.ts `fallbackUrls`, the
 * device's `--broker URL1,URL2`): a first URL that refuses moves on to the
 * next, and a connection lost to a stopped broker comes back on another.
 */
import { describe, expect, it } from 'vitest';
import type { RunningBroker } from '../../nodes/broker-node.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { freePort } from '../support/harness.ts';
import { until } from '../support/wait.ts';

const env = useBrokerEnv('failover');
const broker = (name: string): Promise<RunningBroker> => env.broker({ updateServer: false }, name);

describe('a list of broker URLs', () => {
  it('skips a URL where nothing listens and connects to the next', async () => {
    const live = await broker('live');
    const dead = `mqtt://127.0.0.1:${await freePort()}`;
    const seen: string[] = [];
    live.aedes.on('client', (c) => seen.push(c.id));
    const t = MqttTransport.start({ url: dead, fallbackUrls: [live.url], clientId: 'failover-1', reconnectMinMs: 100, reconnectMaxMs: 500 });
    env.track(t);
    await until(() => t.connected, { what: 'failover-1 connected', timeoutMs: 20_000 });
    expect(seen).toEqual(['failover-1']);
  });

  it('moves to the other node when its broker stops, and subscriptions come back there', async () => {
    const a = await broker('a');
    const b = await broker('b');
    const onB: string[] = [];
    b.aedes.on('client', (c) => onB.push(c.id));
    const t = MqttTransport.start({ url: a.url, fallbackUrls: [b.url], clientId: 'failover-2', reconnectMinMs: 100, reconnectMaxMs: 500 });
    env.track(t);
    const got: string[] = [];
    t.onMessage((topic) => got.push(topic));
    await until(() => t.connected, { what: 'failover-2 connected to a', timeoutMs: 20_000 });
    await t.subscribe('x/#', 1);
    expect(onB).toEqual([]);
    await env.closeNow(a);
    await until(() => t.connected && onB.includes('failover-2'), { what: 'failover-2 connected to b', timeoutMs: 20_000 });
    // Re-subscribed on b: a message published there arrives.
    const pub = await MqttTransport.connect({ url: b.url, clientId: 'failover-pub' }, 10_000);
    env.track(pub);
    await until(
      () => {
        void pub.publish('x/1', 'hello', { qos: 1 });
        return got.includes('x/1');
      },
      { what: 'x/1 arriving through the re-subscription on b', timeoutMs: 20_000 },
    );
    expect(t.stats().connects).toBe(2);
  });
});
