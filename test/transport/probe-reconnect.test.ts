/**
 * The transport's probe and quick reconnect, against a real broker (Aedes on an
 * ephemeral loopback port): a probe to a listening broker connects, one to a
 * closed port does not; reconnect() drops the connection and connects again at
 * once (not after the reconnect backoff), on the probed connection.
 */
import { describe, expect, it } from 'vitest';
import { MqttTransport } from '../../transport/mqtt.ts';
import { freePort } from '../support/harness.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { until } from '../support/wait.ts';

const env = useBrokerEnv('probe-reconnect');

describe('transport: probe and quick reconnect', () => {
  it('probes the broker, then reconnects at once on the probed connection', async () => {
    const broker = await env.broker();
    // A long first reconnect delay: a reconnect within it is the quick one.
    const t = env.track(await MqttTransport.connect({ url: `mqtt://127.0.0.1:${broker.port}`, clientId: 'probe-1', reconnectMinMs: 20_000, reconnectMaxMs: 60_000 }, 10_000));
    const reasons: string[] = [];
    t.onDisconnect((r) => reasons.push(r));
    // The connection's TCP handshake was timed (loopback: well under a second).
    const first = t.handshakeMs();
    expect(first).toBeGreaterThan(0);
    expect(first).toBeLessThan(1000);
    expect(await t.probe(2000)).toBe(true);
    expect(t.handshakeMs()).toBeLessThanOrEqual(first);
    const t0 = Date.now();
    t.reconnect('test');
    await until(() => t.stats().connects === 2 && t.connected, { what: 'the second connect', timeoutMs: 10_000, intervalMs: 5 });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(t.quickReconnects).toBe(1);
    expect(reasons.join()).toMatch(/silent while the link was up/);
    // It still carries messages.
    await t.subscribe('probe/x');
    const got = new Promise<string>((r) => t.onMessage((_topic, p) => r(Buffer.from(p).toString())));
    await t.publish('probe/x', 'after');
    expect(await got).toBe('after');
  });

  it('a probe to a port nobody listens on does not connect', async () => {
    const broker = await env.broker();
    const t = env.track(await MqttTransport.connect({ url: `mqtt://127.0.0.1:${broker.port}`, clientId: 'probe-2' }, 10_000));
    (t as unknown as { servers: Array<{ port: number }> }).servers[0].port = await freePort();
    expect(await t.probe(1000)).toBe(false);
  });

  it('reconnectCost: the retained messages this connection brought (and any packet part under way)', async () => {
    const broker = await env.broker();
    const url = `mqtt://127.0.0.1:${broker.port}`;
    const pub = env.track(await MqttTransport.connect({ url, clientId: 'cost-pub' }, 10_000));
    await pub.publish('probe/retained', 'r'.repeat(500), { qos: 1, retain: true });
    const t = env.track(await MqttTransport.connect({ url, clientId: 'cost-1', reconnectMinMs: 20_000 }, 10_000));
    expect(t.reconnectCost()).toBe(0);
    await t.subscribe('probe/retained');
    await until(() => t.reconnectCost() > 0, { what: 'the retained message', timeoutMs: 10_000, intervalMs: 5 });
    const cost = t.reconnectCost();
    expect(cost).toBeGreaterThanOrEqual(500);
    expect(cost).toBeLessThan(600);
    t.reconnect('test');
    await until(() => t.stats().connects === 2 && t.connected, { what: 'the second connect', timeoutMs: 10_000, intervalMs: 5 });
    // The subscription is restored: the retained message comes again, counted afresh.
    await until(() => t.reconnectCost() === cost, { what: 'the retained message again', timeoutMs: 10_000, intervalMs: 5 });
  });
});
