import net from 'node:net';

export interface LinkProxyOptions {
  /** Where the real broker listens. */
  targetHost: string;
  targetPort: number;
  /** Bytes per second in each direction (0 = unlimited). */
  bytesPerSecond?: number;
  /** One-way delay added to every piece of data, ms. */
  latencyMs?: number;
}

/**
 * A TCP proxy on loopback that behaves like a bad link: limited bandwidth,
 * latency, and an operator's hand on the plug (cut every connection, refuse
 * new ones for a while). Used by tests and simulations; touches only
 * 127.0.0.1.
 */
export class LinkProxy {
  private server: net.Server | undefined;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private down = false;
  bytesUp = 0;
  bytesDown = 0;
  connections = 0;
  port = 0;

  constructor(private readonly o: LinkProxyOptions) {}

  async start(port = 0): Promise<number> {
    this.server = net.createServer((client) => this.accept(client));
    await new Promise<void>((resolve) => this.server!.listen(port, '127.0.0.1', () => resolve()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** Drop every open connection (as a link that goes dark does). */
  cut(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  /** Cut, and refuse connections until `restore()`. */
  takeDown(): void {
    this.down = true;
    this.cut();
  }

  restore(): void {
    this.down = false;
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private accept(client: net.Socket): void {
    if (this.down) {
      client.destroy();
      return;
    }
    this.connections++;
    client.setNoDelay(true);
    const upstream = net.connect({ host: this.o.targetHost, port: this.o.targetPort, noDelay: true });
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.pairs.add(pair);
    const close = (): void => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    this.pipe(client, upstream, (n) => (this.bytesUp += n));
    this.pipe(upstream, client, (n) => (this.bytesDown += n));
  }

  /** Forward with a bandwidth budget and latency, preserving order. */
  private pipe(from: net.Socket, to: net.Socket, count: (n: number) => void): void {
    const rate = this.o.bytesPerSecond ?? 0;
    const latency = this.o.latencyMs ?? 0;
    let releaseAt = Date.now();
    from.on('data', (data: Buffer) => {
      count(data.byteLength);
      const now = Date.now();
      releaseAt = Math.max(releaseAt, now) + (rate > 0 ? (data.byteLength / rate) * 1000 : 0);
      const deliverIn = releaseAt + latency - now;
      if (deliverIn <= 0) {
        if (!to.destroyed) to.write(data);
        return;
      }
      setTimeout(() => {
        if (!to.destroyed) to.write(data);
      }, deliverIn);
      // Back-pressure: read no more until this piece has left the "radio".
      if (rate > 0 && releaseAt > now) {
        from.pause();
        setTimeout(() => {
          if (!from.destroyed) from.resume();
        }, releaseAt - now);
      }
    });
  }
}
