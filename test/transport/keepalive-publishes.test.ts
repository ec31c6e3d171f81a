/**
 * A connection that is delivering publishes is alive, even when the broker's PINGRESP is late
 * (queued behind frames on a backlogged, lossy downlink). Against a real broker (Aedes on an
 * ephemeral loopback port) through a loopback relay that holds back every PINGRESP: publishes
 * flow for several keepalive periods, and the transport must neither drop nor reconnect the
 * connection (MQTT.js alone declared it dead after 1.5 × keepalive), while it still sends pings
 * for the broker's own keepalive check.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';

const env = useBrokerEnv('keepalive-publishes');

/** Splits a byte stream into whole MQTT packets (fixed header + remaining length). */
function packetSplitter(onPacket: (p: Buffer) => void): (b: Buffer) => void {
  let buf = Buffer.alloc(0);
  return (b) => {
    buf = Buffer.concat([buf, b]);
    for (;;) {
      let len = 0;
      let mul = 1;
      let i = 1;
      for (; i < buf.length && i <= 4; i++) {
        len += (buf[i] & 0x7f) * mul;
        mul *= 128;
        if ((buf[i] & 0x80) === 0) break;
      }
      if (i >= buf.length || buf.length < i + 1 + len) return;
      onPacket(buf.subarray(0, i + 1 + len));
      buf = buf.subarray(i + 1 + len);
    }
  };
}

/** A relay to the broker that forwards everything but PINGRESP (type 13) towards the client, and counts PINGREQs (type 12) going up. */
async function pingrespHolder(brokerPort: number): Promise<{ port: number; pingreqs: () => number; close: () => void }> {
  let pingreqs = 0;
  const sockets: net.Socket[] = [];
  const server = net.createServer((client) => {
    const up = net.createConnection({ host: '127.0.0.1', port: brokerPort });
    sockets.push(client, up);
    client.on(
      'data',
      packetSplitter((p) => {
        if (p[0] >> 4 === 12) pingreqs++;
        up.write(p);
      }),
    );
    up.on(
      'data',
      packetSplitter((p) => {
        if (p[0] >> 4 !== 13) client.write(p);
      }),
    );
    client.on('close', () => up.destroy());
    up.on('close', () => client.destroy());
    client.on('error', () => undefined);
    up.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    pingreqs: () => pingreqs,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

let relay: Awaited<ReturnType<typeof pingrespHolder>> | undefined;
afterEach(() => relay?.close());

describe('transport: publishes arriving keep the connection alive', () => {
  it('stays connected through four keepalive periods of publishes without a PINGRESP, and still pings', async () => {
    const broker = await env.broker();
    relay = await pingrespHolder(broker.port);
    const device = env.track(await MqttTransport.connect({ url: `mqtt://127.0.0.1:${relay.port}`, clientId: 'ka-device', keepaliveSeconds: 1, reconnectMinMs: 100, reconnectMaxMs: 200 }, 10_000));
    const sender = env.track(await MqttTransport.connect({ url: `mqtt://127.0.0.1:${broker.port}`, clientId: 'ka-sender' }, 10_000));
    const drops: string[] = [];
    device.onDisconnect((r) => drops.push(r));
    let got = 0;
    device.onMessage(() => got++);
    await device.subscribe('ka/frames', 0);
    const t0 = Date.now();
    while (Date.now() - t0 < 4000) {
      await sender.publish('ka/frames', 'frame', { qos: 0 });
      await new Promise((r) => setTimeout(r, 150));
    }
    expect(got).toBeGreaterThan(10);
    expect(drops).toEqual([]);
    expect(device.stats().connects).toBe(1);
    expect(device.connected).toBe(true);
    // The broker's keepalive (1.5 s) saw packets from the device: pings went up though none came back.
    expect(relay.pingreqs()).toBeGreaterThanOrEqual(2);
  });
});
