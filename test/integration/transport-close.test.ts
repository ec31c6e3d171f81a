import { afterEach, describe, expect, it } from 'vitest';
import { MqttTransport } from '../../transport/mqtt.ts';
import { MuteBroker } from '../support/mute-broker.ts';

/** transport/mqtt.ts close() is bounded (issue 24): a PUBACK that never comes, or no broker at all, cannot hold it. */
const brokers: MuteBroker[] = [];
afterEach(async () => {
  for (const b of brokers.splice(0)) await b.close();
});

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

describe('MqttTransport.close', () => {
  it('gives up on an unacknowledged QoS 1 publish after its grace, fails the publish and drops the socket without DISCONNECT', async () => {
    const b = await MuteBroker.start();
    brokers.push(b);
    const t = await MqttTransport.connect({ url: b.url, clientId: 'close-test' }, 10_000);
    const pub = t.publish('x/y', 'z', { qos: 1 });
    const failed = pub.then(
      () => 'acked',
      (e: Error) => e.message,
    );
    await b.until((m) => m.published.includes('x/y'), 'the publish');
    const t0 = Date.now();
    await within(t.close(300), 5000, 'close');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(await within(failed, 1000, 'the publish to settle')).toBe('Message removed');
    await b.until((m) => m.open === 0, 'the socket closed');
    expect(b.disconnects).toBe(0);
  });

  it('returns at once while the broker cannot be reached, failing what was queued', async () => {
    const b = await MuteBroker.start({ refuse: true });
    brokers.push(b);
    const t = MqttTransport.start({ url: b.url, clientId: 'close-test-2', reconnectMinMs: 100 });
    await b.until((m) => m.connections > 0, 'a connection attempt');
    const failed = t.publish('x/y', 'z', { qos: 1 }).then(
      () => 'acked',
      (e: Error) => e.message,
    );
    const t0 = Date.now();
    await within(t.close(), 1000, 'close');
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(await within(failed, 1000, 'the queued publish to settle')).not.toBe('acked');
  });
});
