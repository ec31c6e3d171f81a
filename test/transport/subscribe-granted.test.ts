/**
 * A subscribe that must be granted (transport/subscribe-granted.ts), over real
 * TCP against a broker that hangs up when it is asked to subscribe (a broker
 * dying at that moment): a plain subscribe fails with the connection, this one
 * is sent again after the reconnect and resolves once granted. A refusal still
 * rejects at once; a stop ends the wait.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MqttTransport } from '../../transport/mqtt.ts';
import { subscribeGranted } from '../../transport/subscribe-granted.ts';
import { MuteBroker } from '../support/mute-broker.ts';

const open: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  for (const x of open.splice(0).reverse()) await x.close();
});

async function setUp(opts: Parameters<typeof MuteBroker.start>[0]): Promise<{ broker: MuteBroker; t: MqttTransport }> {
  const broker = await MuteBroker.start(opts);
  open.push(broker);
  const t = await MqttTransport.connect({ url: broker.url, clientId: `granted-${Math.random().toString(36).slice(2)}`, reconnectMinMs: 50, reconnectMaxMs: 200 }, 10_000);
  open.push({ close: () => t.close(0) });
  return { broker, t };
}

describe('subscribeGranted', () => {
  it('a plain subscribe fails when the broker hangs up before its SUBACK', async () => {
    const { t } = await setUp({ hangUpOnSubscribe: 1 });
    await expect(t.subscribe('a/b', 1)).rejects.toThrow(/connection closed/i);
  });

  it('is sent again after the reconnect and resolves once the broker grants it', async () => {
    const { broker, t } = await setUp({ hangUpOnSubscribe: 2 });
    await subscribeGranted(t, ['a/b', 'c/d'], 1, { stopped: () => false, pollMs: 10 });
    // Two hang-ups, each the end of a connection, then granted on a third.
    expect(broker.connections).toBeGreaterThanOrEqual(3);
    expect(broker.subscribed.filter((f) => f === 'a/b').length).toBeGreaterThanOrEqual(3);
    expect(broker.subscribed).toContain('c/d');
  });

  it('a filter the client already holds: a plain subscribe answers without the broker, `resend` asks it', async () => {
    const { broker, t } = await setUp({});
    await t.subscribe('a/b', 0);
    expect(broker.subscribed).toEqual(['a/b']);
    await t.subscribe('a/b', 0);
    expect(broker.subscribed).toEqual(['a/b']); // mqtt.js sent nothing: no SUBACK to wait for
    await t.subscribe('a/b', 0, { resend: true });
    expect(broker.subscribed).toEqual(['a/b', 'a/b']); // resolved on the broker's SUBACK to this one
  });

  it('rejects a refusal at once, as it is', async () => {
    const { broker, t } = await setUp({ refuseSubscriptions: true });
    await expect(subscribeGranted(t, 'a/b', 1, { stopped: () => false, pollMs: 10 })).rejects.toMatchObject({ code: 'subscription-refused' });
    expect(broker.connections).toBe(1);
  });

  it('ends its wait for the connection when its owner stops', async () => {
    const { broker, t } = await setUp({ hangUpOnSubscribe: true });
    let stopped = false;
    const p = subscribeGranted(t, 'a/b', 1, { stopped: () => stopped, pollMs: 10 });
    await broker.until((b) => b.subscribed.length >= 2, 'two subscribes');
    stopped = true;
    await expect(p).rejects.toMatchObject({ code: 'stopped' });
  });
});
