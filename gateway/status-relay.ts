import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import { DiskQueue, type QueuedMessage } from './queue.ts';

export interface StatusRelayOptions {
  dir: string;
  upstream: Transport;
  log: Logger;
  /** Most messages sent upstream and not yet acknowledged. */
  inFlight: number;
}

/**
 * Device statuses and presence go upstream unchanged (same topic, payload
 * and retain flag), in the order the site broker received them, through an
 * on-disk queue: while upstream is down they wait on disk, and when the link
 * returns they are delivered in order, none lost (at least once: a crash
 * may repeat the few that were in flight; retained topics make that harmless).
 */
export class StatusRelay {
  private readonly q: DiskQueue;
  private sending = 0;
  private closed = false;
  private pumping = false;
  private waiters: Array<() => void> = [];
  private readonly max: number;

  constructor(private readonly o: StatusRelayOptions) {
    this.q = new DiskQueue(o.dir);
    this.max = o.inFlight;
  }

  async start(): Promise<void> {
    await this.q.open();
    this.o.upstream.onConnect(() => this.pump());
    if (this.q.length) this.o.log.info('statuses queued from before the restart', { queued: this.q.length });
    this.pump();
  }

  /** Messages waiting on disk (not yet acknowledged upstream). */
  get queued(): number {
    return this.q.length;
  }

  get relayed(): number {
    return this.q.delivered;
  }

  /** Queue one message (durably) and try to send. */
  async relay(m: QueuedMessage): Promise<void> {
    await this.q.push(m);
    this.pump();
  }

  /** Resolves when the queue is empty (tests, shutdown). */
  async drained(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.q.length > 0) {
      if (Date.now() > deadline) return false;
      await new Promise<void>((r) => {
        const t = setTimeout(r, 200);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return true;
  }

  /**
   * Send the next window of queued messages. The window is sent in order and
   * the cursor moves only when every message of it is acknowledged, so order
   * holds across reconnects (mqtt.js re-sends unacknowledged QoS 1 publishes
   * in order after a reconnect).
   */
  private pump(): void {
    if (this.pumping || this.closed || !this.o.upstream.connected || this.q.length === 0) return;
    this.pumping = true;
    const batch = this.q.peek(this.max);
    this.sending = batch.length;
    void Promise.all(batch.map((m) => this.o.upstream.publish(m.topic, m.payload, { qos: 1, retain: m.retain })))
      .then(() => this.q.ack(batch.length))
      .then(
        () => {
          this.pumping = false;
          this.sending = 0;
          for (const w of this.waiters.splice(0)) w();
          this.pump();
        },
        (e: unknown) => {
          // Not sent (the client was closed): they stay queued for the next connect.
          this.pumping = false;
          this.sending = 0;
          this.o.log.debug('relay batch not acknowledged; kept on disk', { error: String(e), batch: batch.length });
          if (!this.closed) setTimeout(() => this.pump(), 1000).unref();
        },
      );
  }

  get inFlight(): number {
    return this.sending;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.q.close();
  }
}
