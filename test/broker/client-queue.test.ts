/**
 * One device's slow socket must not hold the update server's frames to the others.
 *
 * Aedes delivers at most 100 publishes at once, and a delivery to a socket over its 16 KiB
 * high-water mark was done only when that socket drained: 100 frames queued for one client whose
 * TCP window is shut held every later publish, to anyone. Real broker on an ephemeral loopback port,
 * a raw subscriber that stops reading (as a device's connection in retransmission backoff), an
 * MQTT.js subscriber that reads, and a publisher at QoS 1 (as the update server).
 */
import mqtt, { type MqttClient } from 'mqtt';
import { describe, expect, it } from 'vitest';
import { CLIENT_QUEUE_BYTES } from '../../broker/client-queue.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { connectPacket, RawClient, remainingLength } from '../support/raw-mqtt.ts';

const env = useBrokerEnv('client-queue');
const FRAME = new Uint8Array(16 * 1024 + 100).fill(7);

async function connected(url: string, clientId: string): Promise<MqttClient> {
  const c = mqtt.connect(url, { protocolVersion: 4, clientId, reconnectPeriod: 0 });
  env.track({ close: () => c.endAsync(true) });
  await new Promise<void>((resolve, reject) => {
    c.once('connect', () => resolve());
    c.once('error', reject);
  });
  return c;
}

/** Resolves true when `p` settles within `ms`, false otherwise. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
  const ok = await Promise.race([p.then(() => true), late]);
  clearTimeout(timer);
  return ok;
}

describe('a client that stops reading', () => {
  it("does not hold another client's messages while less than CLIENT_QUEUE_BYTES are waiting for it", async () => {
    const broker = await env.broker();
    // The slow one: subscribes to `slow`, then reads nothing more.
    const slow = await RawClient.open(broker.port);
    env.track({ close: () => slow.destroy() });
    slow.socket.write(connectPacket({ clientId: 'slow' }));
    const topic = Buffer.from('slow');
    const sub = Buffer.concat([Buffer.from([0, 1, 0, topic.length]), topic, Buffer.from([0])]);
    // SUBSCRIBE (type 8, flags 2).
    slow.socket.write(Buffer.concat([Buffer.from([0x82]), remainingLength(sub.length), sub]));
    await expect.poll(() => Buffer.concat(slow.received).includes(Buffer.from([0x90, 3, 0, 1])), { timeout: 5000 }).toBe(true);
    slow.socket.pause();

    const fast = await connected(broker.url, 'fast');
    await fast.subscribeAsync('fast', { qos: 0 });
    const arrived = new Promise<void>((r) => fast.on('message', () => r()));
    const pub = await connected(broker.url, 'pub');

    // Frames for the slow one until the broker holds 1.8 MB of them for it (beyond what the kernel takes):
    // ~110 frames, each waiting for that socket to drain before, more than Aedes's 100 publishes in
    // flight at once, so that every later publish, to anyone, queued behind them. Before, the queue
    // stopped growing at ~1.65 MB and the loop ran to its end.
    const conn = () => (broker.aedes as unknown as { clients: Record<string, { conn: { writableLength: number } } | undefined> }).clients.slow?.conn;
    const target = CLIENT_QUEUE_BYTES + 800 * 1024;
    for (let i = 0; i < 500 && (conn()?.writableLength ?? 0) < target; i++) await pub.publishAsync('slow', Buffer.from(FRAME), { qos: 1 });
    await new Promise((r) => setTimeout(r, 200));
    void pub.publishAsync('fast', Buffer.from('hello'), { qos: 1 }).catch(() => undefined);
    expect(await within(arrived, 5000)).toBe(true);
    expect(conn()?.writableLength).toBeGreaterThan(CLIENT_QUEUE_BYTES);
  }, 30_000);
});
