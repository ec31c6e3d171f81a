import net from 'node:net';

/** How long a probed connection waits for the next connect before it is closed. */
const SPARE_KEEP_MS = 5000;

/**
 * The TCP connections an MQTT transport opens to its broker: each handshake is timed (the quickest so
 * far is `handshakeMs`), and a probe's connection (opened while the current one is silent, to see
 * whether the link is up) is kept as the spare for the next connect (`takeSpare`), closed when unused.
 */
export class TcpConnections {
  /** A connection a successful probe opened, for the next reconnect (dropped if unused). */
  private spare: net.Socket | undefined;
  /** The quickest TCP handshake to the broker so far, ms (connections and probes). */
  private quickestHandshakeMs = Infinity;

  /** A TCP connection whose handshake time is noted (`handshakeMs`). */
  open(host: string, port: number): net.Socket {
    const t0 = performance.now();
    const s = net.createConnection({ host, port, noDelay: true });
    s.once('connect', () => {
      this.quickestHandshakeMs = Math.min(this.quickestHandshakeMs, performance.now() - t0);
    });
    return s;
  }

  handshakeMs(): number {
    return Number.isFinite(this.quickestHandshakeMs) ? this.quickestHandshakeMs : 0;
  }

  /**
   * Whether a fresh connection to host:port is made within `timeoutMs`; when it is, it is kept as the
   * spare. `closing`: the transport closed meanwhile (then the connection is dropped, and the answer is false).
   */
  probe(host: string, port: number, timeoutMs: number, closing: () => boolean): Promise<boolean> {
    return new Promise((resolve) => {
      const s = this.open(host, port);
      const done = (up: boolean): void => {
        clearTimeout(timer);
        if (!up || closing()) {
          s.destroy();
          resolve(false);
          return;
        }
        this.spare?.destroy();
        this.spare = s;
        // Unused for a while: the broker would drop a connection that never logs in anyway.
        const drop = setTimeout(() => this.takeSpare()?.destroy(), SPARE_KEEP_MS);
        s.once('close', () => {
          clearTimeout(drop);
          if (this.spare === s) this.spare = undefined;
        });
        resolve(true);
      };
      const timer = setTimeout(() => done(false), Math.max(1, timeoutMs));
      s.once('connect', () => done(true));
      s.once('error', () => done(false));
    });
  }

  /** The spare connection, if one is open; it is no longer kept. */
  takeSpare(): net.Socket | undefined {
    const s = this.spare;
    this.spare = undefined;
    return s && !s.destroyed ? s : undefined;
  }
}
