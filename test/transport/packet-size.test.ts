import mqttPacket from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { mqttPacketBytes, type SentPacket } from '../../transport/packet-size.ts';

// Each packet's size is checked against MQTT.js's own encoder (mqtt-packet, protocol 4).
const cases: Array<[string, Record<string, unknown>]> = [
  ['publish qos 0', { cmd: 'publish', topic: 'fleet/models/m/updates/0123/get/dev-1', payload: Buffer.alloc(40), qos: 0, retain: false, dup: false }],
  ['publish qos 1, 700 B', { cmd: 'publish', topic: 'fleet/devices/dev-1/status', payload: Buffer.alloc(700), qos: 1, messageId: 7, retain: true, dup: false }],
  ['publish 20 000 B', { cmd: 'publish', topic: 't', payload: 'x'.repeat(20_000), qos: 0, retain: false, dup: false }],
  [
    'connect with will and login',
    {
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: true,
      keepalive: 30,
      clientId: 'fleet-device-sim-1',
      will: { topic: 'fleet/devices/sim-1/presence', payload: Buffer.from('offline'), qos: 1, retain: true },
      username: 'u',
      password: Buffer.from('pw'),
    },
  ],
  ['connect bare', { cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30, clientId: 'c' }],
  [
    'subscribe two',
    {
      cmd: 'subscribe',
      messageId: 3,
      subscriptions: [
        { topic: 'fleet/a/+/b', qos: 0 },
        { topic: 'fleet/trust', qos: 1 },
      ],
    },
  ],
  ['unsubscribe', { cmd: 'unsubscribe', messageId: 4, unsubscriptions: ['fleet/a/+/b'] }],
  ['puback', { cmd: 'puback', messageId: 9 }],
  ['pingreq', { cmd: 'pingreq' }],
  ['disconnect', { cmd: 'disconnect' }],
];

describe('mqttPacketBytes', () => {
  it.each(cases)('%s: the size mqtt-packet writes', (_name, p) => {
    expect(mqttPacketBytes(p as unknown as SentPacket)).toBe(mqttPacket.generate(p as unknown as mqttPacket.Packet, { protocolVersion: 4 }).byteLength);
  });
});
