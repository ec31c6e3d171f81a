import { parseStatus, type DeviceState } from '../protocol/status.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import { DiskQueue, type QueuedMessage } from './queue.ts';

export interface StatusRelayOptions {
  dir: string;
  upstream: Transport;
  log: Logger;
  /** Most messages sent upstream and not yet acknowledged. */
  inFlight: number;
  /**
   * A message queued while the link is up waits this long before it goes (0: at once), so that a
   * site device's burst of passing states (over the LAN a download, its check and apply take a
   * second or two) goes up as its last status only (see `superseded`).
   */
  lingerMs?: number;
}

/** States a device passes through on its way to an outcome; a newer status of the same device makes one of them moot. */
const PASSING: ReadonlySet<DeviceState> = new Set(['downloading', 'verifying', 'applying', 'testing']);

/**
 * Which of `queued` need not go up: a retained device status in a passing state (downloading,
 * verifying, applying, testing) with a newer message on the same topic queued behind it. The
 * retained topic keeps only the newest anyway; outcomes (ok, rolled_back, rejected, failed),
 * idle statuses and presence always go up, in order.
 */
export function superseded(queued: readonly QueuedMessage[], first = queued.length): boolean[] {
  // Only the first `first` are judged (the batch about to go); the whole queue says what is newer.
  const last = new Map<string, number>();
  queued.forEach((m, i) => last.set(m.topic, i));
  return queued.slice(0, first).map((m, i) => {
    if (!m.retain || last.get(m.topic)! <= i) return false;
    const s = parseStatus(m.payload);
    return s !== null && PASSING.has(s.state);
  });
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
  private lingering: NodeJS.Timeout | undefined;
  /** Statuses not sent because a newer one of the same device was queued behind them (`superseded`). */
  merged = 0;

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

  /** Queue one message (durably) and send it after the linger (with what came meanwhile). */
  async relay(m: QueuedMessage): Promise<void> {
    await this.q.push(m);
    const linger = this.o.lingerMs ?? 0;
    if (linger <= 0) return this.pump();
    this.lingering ??= setTimeout(() => {
      this.lingering = undefined;
      this.pump();
    }, linger);
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
    const moot = superseded(this.q.peek(this.q.length), batch.length);
    const send = batch.filter((_, i) => !moot[i]);
    this.merged += batch.length - send.length;
    this.sending = send.length;
    void Promise.all(send.map((m) => this.o.upstream.publish(m.topic, m.payload, { qos: 1, retain: m.retain })))
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
    if (this.lingering) clearTimeout(this.lingering);
    await this.q.close();
  }
}
