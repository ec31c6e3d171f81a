/**
 * Hand-made MQTT 3.1.1 bytes for hostile-client tests: packets no well-behaved
 * client library would send (a CONNECT declaring 268 MB, a zero-byte client id
 * without a clean session).
 */
import net from 'node:net';
import { encodeRemainingLength as remainingLength, fixedHeader } from '../../transport/packet-limit.ts';

export { remainingLength, fixedHeader };

const str = (s: string): Buffer => {
  const b = Buffer.from(s);
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
};

/** A complete CONNECT packet. */
export function connectPacket(o: { clientId: string; clean?: boolean; username?: string; password?: string; keepalive?: number }): Buffer {
  const flags = (o.clean === false ? 0 : 0x02) | (o.username !== undefined ? 0x80 : 0) | (o.password !== undefined ? 0x40 : 0);
  const body = Buffer.concat([str('MQTT'), Buffer.from([4, flags, 0, o.keepalive ?? 60]), str(o.clientId), ...(o.username !== undefined ? [str(o.username)] : []), ...(o.password !== undefined ? [str(o.password)] : [])]);
  return Buffer.concat([Buffer.from([0x10]), remainingLength(body.length), body]);
}

/** A connected raw socket that records what it receives and when it closes. */
export class RawClient {
  readonly received: Buffer[] = [];
  readonly closed: Promise<void>;
  isClosed = false;
  written = 0;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d) => this.received.push(d));
    socket.on('error', () => undefined);
    this.closed = new Promise((r) =>
      socket.once('close', () => {
        this.isClosed = true;
        r();
      }),
    );
  }

  static async open(port: number): Promise<RawClient> {
    const s = net.createConnection({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    return new RawClient(s);
  }

  /** The CONNACK return code, once one has arrived. */
  connackCode(): number | undefined {
    const all = Buffer.concat(this.received);
    return all.length >= 4 && all[0] === 0x20 ? all[3] : undefined;
  }

  /** Writes `total` bytes of filler in 64 KiB pieces until done or the socket closes. */
  async stream(total: number): Promise<void> {
    const piece = Buffer.alloc(64 * 1024, 0x61);
    while (this.written < total && !this.isClosed) {
      const n = Math.min(piece.length, total - this.written);
      const ok = this.socket.write(piece.subarray(0, n));
      this.written += n;
      if (!ok) await Promise.race([new Promise((r) => this.socket.once('drain', r)), this.closed]);
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}
