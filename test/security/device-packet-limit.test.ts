/**
 * Issue 14, hole 2 (device side): a hostile broker declaring a 200 MB packet.
 * The device's transport closes the connection at the packet's fixed header,
 * before mqtt.js buffers it; the limit comes from the device's caps.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { packetLimitOf } from '../../device/agent-config.ts';
import { DEFAULT_MAX_INCOMING_PACKET, MqttTransport } from '../../transport/mqtt.ts';
import { fixedHeader } from '../support/raw-mqtt.ts';

const CONNACK = Buffer.from([0x20, 0x02, 0x00, 0x00]);

/** A "broker" that accepts the CONNECT, then sends a header declaring `declared` bytes and streams filler. */
class HostileBroker {
  readonly server: net.Server;
  written = 0;
  closedEarly: Promise<boolean>;
  private resolveClosed!: (early: boolean) => void;

  constructor(readonly declared: number) {
    this.closedEarly = new Promise((r) => (this.resolveClosed = r));
    this.server = net.createServer((s) => {
      s.on('error', () => undefined);
      s.once('data', () => void this.attack(s));
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    return (this.server.address() as net.AddressInfo).port;
  }

  private async attack(s: net.Socket): Promise<void> {
    let closed = false;
    s.once('close', () => (closed = true));
    s.write(CONNACK);
    s.write(fixedHeader(3, this.declared));
    const piece = Buffer.alloc(64 * 1024, 0x61);
    while (!closed && this.written < this.declared) {
      const ok = s.write(piece);
      this.written += piece.length;
      if (!ok)
        await new Promise((r) => {
          s.once('drain', r);
          s.once('close', r);
        });
    }
    this.resolveClosed(closed || this.written < this.declared);
    s.destroy();
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

describe('a device does not buffer a packet over its limit', () => {
  it('the default caps (1 MiB chunks, 65,536 chunks) give a limit of about 2 MiB, not the protocol maximum', () => {
    expect(packetLimitOf({})).toBe(2 * 1024 * 1024 + 64 * 1024);
    expect(packetLimitOf({ maxChunkBytes: 4 * 1024 * 1024, maxChunks: 16 })).toBe(4 * 1024 * 1024 + 64 * 1024);
    expect(DEFAULT_MAX_INCOMING_PACKET).toBeLessThan(64 * 1024 * 1024);
  });

  for (const [label, limit] of [
    ['the device caps', packetLimitOf({})],
    ['the transport default', undefined],
  ] as const) {
    it(`a 200 MB PUBLISH from the broker closes the connection at its header (${label})`, async () => {
      const declared = 200 * 1024 * 1024;
      const b = new HostileBroker(declared);
      const port = await b.listen();
      cleanup.push(() => b.close());
      const t = MqttTransport.start({ url: `mqtt://127.0.0.1:${port}`, clientId: 'fleet-device-victim', reconnectMinMs: 60_000, reconnectMaxMs: 60_000, maxIncomingPacket: limit });
      cleanup.push(() => t.close());
      const early = await Promise.race([b.closedEarly, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 30_000))]);
      expect(early).toBe(true);
      // It stopped reading long before the declared 200 MB (kernel buffers hold a few MB at most).
      expect(b.written).toBeLessThan(64 * 1024 * 1024);
      expect(t.oversizedPackets).toBe(1);
    }, 60_000);
  }
});
