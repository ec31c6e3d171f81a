import net from 'node:net';

/**
 * A raw TCP "broker" that accepts MQTT 3.1.1 logins (CONNACK), grants every
 * subscription (SUBACK) and answers pings, but never acknowledges a publish
 * (no PUBACK) nor an unsubscribe: every QoS 1 publish waits for an
 * acknowledgement that never comes. Records the topics published to it.
 */
export class MuteBroker {
  readonly published: string[] = [];
  /** Client ids of the CONNECTs received. */
  readonly clients: string[] = [];
  /** Topic filters subscribed to. */
  readonly subscribed: string[] = [];
  /** TCP connections accepted (with `refuse`: closed at once, a broker that cannot be reached). */
  connections = 0;
  /** DISCONNECT packets received (a clean goodbye: the broker would then drop the last will). */
  disconnects = 0;
  private readonly sockets = new Set<net.Socket>();
  private waiters: Array<() => void> = [];

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    private readonly refuse: boolean,
    private hangUps: number,
    private readonly refuseSubscriptions: boolean,
  ) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /**
   * `refuse`: every TCP connection is closed at once, before any MQTT; `hangUpOnSubscribe`: a connection
   * is closed on its first SUBSCRIBE (a broker dying then), always (true) or for the first n SUBSCRIBEs;
   * `refuseSubscriptions`: every subscription is answered with 0x80 (failure).
   */
  static async start(opts: { port?: number; refuse?: boolean; hangUpOnSubscribe?: boolean | number; refuseSubscriptions?: boolean } = {}): Promise<MuteBroker> {
    const port = opts.port ?? 0;
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    const h = opts.hangUpOnSubscribe;
    const b = new MuteBroker(server, (server.address() as net.AddressInfo).port, opts.refuse === true, h === true ? Infinity : typeof h === 'number' ? h : 0, opts.refuseSubscriptions === true);
    server.on('connection', (s) => b.serve(s));
    return b;
  }

  /** Resolves once `ready` holds (e.g. a publish has arrived and gone unacknowledged). */
  async until(ready: (b: MuteBroker) => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (ready(this)) return;
      if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms (connections ${this.connections}, clients ${this.clients.join(', ')}, published ${this.published.join(', ')})`);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, 100);
        this.waiters.push(() => {
          clearTimeout(timer);
          r();
        });
      });
    }
  }

  /** Connections still open. */
  get open(): number {
    return this.sockets.size;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private serve(s: net.Socket): void {
    this.connections++;
    this.wake();
    if (this.refuse) return void s.destroy();
    this.sockets.add(s);
    s.on('close', () => {
      this.sockets.delete(s);
      this.wake();
    });
    s.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length > 4 * 1024 * 1024) return s.destroy(); // bound what a test client can make us hold
      for (;;) {
        const p = nextPacket(buf);
        if (!p || s.destroyed) return; // a connection hung up on reads nothing more
        buf = buf.subarray(p.end);
        this.handle(s, p.type, p.body);
      }
    });
  }

  private handle(s: net.Socket, type: number, body: Buffer): void {
    if (type === 1) {
      // CONNECT (3.1.1: 10-byte variable header, then the client id) -> CONNACK accepted
      const n = body.length >= 12 ? body.readUInt16BE(10) : 0;
      this.clients.push(body.subarray(12, 12 + n).toString('utf8'));
      s.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
    } else if (type === 12)
      s.write(Buffer.from([0xd0, 0x00])); // PINGREQ -> PINGRESP
    else if (type === 8) {
      // SUBSCRIBE -> SUBACK granting each requested QoS
      const granted: number[] = [];
      for (let i = 2; i + 2 <= body.length;) {
        const n = body.readUInt16BE(i);
        this.subscribed.push(body.subarray(i + 2, i + 2 + n).toString('utf8'));
        if (this.hangUps > 0) {
          this.hangUps--;
          s.destroy();
          this.wake();
          return;
        }
        granted.push(this.refuseSubscriptions ? 0x80 : (body[i + 2 + n] ?? 0));
        i += 3 + n;
      }
      s.write(Buffer.concat([Buffer.from([0x90, 2 + granted.length]), body.subarray(0, 2), Buffer.from(granted)]));
    } else if (type === 3) {
      const n = body.readUInt16BE(0);
      this.published.push(body.subarray(2, 2 + n).toString('utf8'));
    } else if (type === 14) s.end(); // DISCONNECT
    // PUBLISH is never acknowledged, nor UNSUBSCRIBE.
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}

function nextPacket(buf: Buffer): { type: number; body: Buffer; end: number } | undefined {
  if (buf.length < 2) return undefined;
  let len = 0;
  let mul = 1;
  let i = 1;
  for (;;) {
    if (i >= buf.length || i > 4) return undefined;
    const b = buf[i++];
    len += (b & 0x7f) * mul;
    mul *= 128;
    if ((b & 0x80) === 0) break;
  }
  if (buf.length < i + len) return undefined;
  return { type: buf[0] >> 4, body: buf.subarray(i, i + len), end: i + len };
}
