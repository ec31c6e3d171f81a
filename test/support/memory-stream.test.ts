import { once, type EventEmitter } from 'node:events';
import { Aedes } from 'aedes';
import { describe, expect, it } from 'vitest';
import { memoryClient, memoryPair } from './memory-stream.ts';

describe('in-memory connection (test/support/memory-stream.ts)', () => {
  it('carries bytes both ways', async () => {
    const [a, b] = memoryPair();
    const atB = once(b, 'data');
    a.write(Buffer.from('to b'));
    expect(String((await atB)[0])).toBe('to b');
    const atA = once(a, 'data');
    b.write(Buffer.from('to a'));
    expect(String((await atA)[0])).toBe('to a');
    a.destroy();
  });

  it('ending one end ends and closes the other, as a socket peer sees it', async () => {
    const [a, b] = memoryPair();
    a.resume();
    b.resume();
    const closed = Promise.all([once(b, 'end'), once(b, 'close'), once(a, 'close')]);
    a.end();
    await closed;
    expect(b.destroyed).toBe(true);
  });

  it('destroying one end (a client cut off) closes the other; writes to it go nowhere', async () => {
    const [a, b] = memoryPair();
    a.resume();
    const closed = once(a, 'close');
    b.destroy();
    await closed;
    expect(a.destroyed).toBe(true);
    const [c, d] = memoryPair();
    d.destroy();
    expect(() => c.write(Buffer.from('late'))).not.toThrow();
  });

  it('an MQTT.js client over it talks to Aedes: subscribe, publish, receive, and a broker-side close shows', async () => {
    const aedes = await Aedes.createBroker();
    try {
      const client = memoryClient(aedes, { clientId: 'mem-1', reconnectPeriod: 0, protocolVersion: 4 });
      const c = client as unknown as EventEmitter;
      await once(c, 'connect');
      await client.subscribeAsync('t/1', { qos: 1 });
      const got = once(c, 'message');
      await client.publishAsync('t/1', 'hello', { qos: 1 });
      const [topic, payload] = (await got) as [string, Buffer];
      expect([topic, String(payload)]).toEqual(['t/1', 'hello']);
      const closed = once(c, 'close');
      for (const held of Object.values((aedes as unknown as { clients: Record<string, { close(): void }> }).clients)) held.close();
      await closed;
      client.end(true);
    } finally {
      await new Promise<void>((r) => aedes.close(() => r()));
    }
  });
});
