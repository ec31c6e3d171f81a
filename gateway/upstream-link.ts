import type { MqttTransport } from '../transport/mqtt.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import type { Logger } from '../util/log.ts';
import { urlWithoutLogin } from '../util/url-login.ts';
import { charge, decide, formatWindow, monthKey, used, type BudgetLedger, type DownloadWindow, type PolicyDecision } from './policy.ts';
import type { UpstreamFetcher } from './upstream-fetcher.ts';

/**
 * How long the upstream fetch is kept through a lost link (at most half its stall time, so the
 * Download's own stall timer does not end it meanwhile): cuts of seconds and the silence watch's
 * reconnects go on with it; after a longer outage it starts again from the bitmap.
 */
const LINK_LOST_HOLD_MS = 30_000;

export interface UpstreamLinkOptions {
  upstream: Pick<MqttTransport, 'connected' | 'stats'>;
  /** The upstream fetch the decision resumes and pauses. */
  fetcher: Pick<UpstreamFetcher, 'resume' | 'pause' | 'linkLost'>;
  /** This month's (and earlier months') upstream bytes, as kept in `ledgerFile`. */
  ledger: BudgetLedger;
  /** `DIR/budget.json`. */
  ledgerFile: string;
  /** The upstream URL, for the log (without its credentials). */
  url: string;
  now: () => number;
  window?: DownloadWindow;
  budgetBytes?: number;
  /** After a pause for the window or the budget, chunks already asked for are still taken for this long. */
  drainMs: number;
  /** The upstream fetch's stall time (a lost link keeps the fetch for at most half of it). */
  stallMs: number;
  log: Logger;
  /** The decision changed: the gateway's status says so at once. */
  onDecision: () => void;
}

/**
 * The gateway's upstream link as the download policy sees it: whether it is up (and since when),
 * what it carried this month (charged to the budget ledger from the socket's counters), and the
 * decision whether upstream downloads may run now (window, budget, link), which resumes or pauses
 * the upstream fetch.
 */
export class UpstreamLink {
  private ledger: BudgetLedger;
  private ledgerDirty = false;
  private lastWire = 0;
  private current: PolicyDecision = { go: false, reason: 'upstream-down', until: null, message: 'starting' };
  private linkSince: number | null = null;
  /**
   * Between the connection's `connect` and `disconnect` events. The client says connected from the
   * CONNACK on, before it has sent again what was unacknowledged and restored the subscriptions (a
   * round trip each on a slow link), and still says so while a quick reconnect drops the old socket:
   * a status published then went on the dying socket and again after the reconnect (~790 B each),
   * and a fetch resumed then asked before its frames were subscribed again.
   */
  private linkUp = false;
  private closed = false;

  constructor(private readonly o: UpstreamLinkOptions) {
    this.ledger = o.ledger;
  }

  /** Between the connection's `connect` and `disconnect` events (see linkUp). */
  get up(): boolean {
    return this.linkUp;
  }
  /** When the link last changed state (ms since the epoch), null before it has. */
  get since(): number | null {
    return this.linkSince;
  }
  get decision(): PolicyDecision {
    return this.current;
  }

  /** Before the first event: a connection connected already (no `connect` event to come for it) is taken as up. */
  adoptConnection(): void {
    this.linkUp = this.o.upstream.connected;
  }

  /** The connection's `connect` event. */
  connected(): void {
    this.linkUp = true;
    this.linkSince = this.o.now();
    this.o.log.info('upstream connected', { url: urlWithoutLogin(this.o.url) });
  }

  /** The connection's `disconnect` event: downloads wait (after close(), only the link's state is kept). */
  disconnected(reason: string): void {
    this.linkUp = false;
    if (this.closed) return;
    this.linkSince = this.o.now();
    this.o.log.info('upstream down', { reason });
    this.evaluate();
  }

  /** Counts the socket's bytes from zero again (the policy tick's start). */
  resetWire(): void {
    this.lastWire = 0;
  }

  /** Charge what the upstream socket carried since the last look to this month's budget. */
  account(): void {
    const w = this.o.upstream.stats();
    const total = w.bytesIn + w.bytesOut;
    if (total > this.lastWire) {
      this.ledger = charge(this.ledger, this.o.now(), total - this.lastWire);
      this.lastWire = total;
      this.ledgerDirty = true;
    }
    if (this.o.budgetBytes !== undefined && this.current.go && used(this.ledger, this.o.now()) >= this.o.budgetBytes) this.evaluate();
  }

  /** Decide whether upstream downloads may run, and pause or resume them. */
  evaluate(): void {
    if (this.closed) return;
    const d = decide({
      now: this.o.now(),
      window: this.o.window,
      budgetBytes: this.o.budgetBytes,
      usedBytes: used(this.ledger, this.o.now()),
      upstreamConnected: this.linkUp && this.o.upstream.connected,
    });
    const changed = d.go !== this.current.go || (!d.go && !this.current.go && d.reason !== this.current.reason);
    this.current = d;
    if (!changed) return;
    if (d.go) {
      this.o.log.info('upstream downloads may run');
      this.o.fetcher.resume();
    } else {
      this.o.log.info('upstream downloads wait', { reason: d.reason, message: d.message });
      // Chunks already asked for are paid for: take them (a few seconds). A link that went keeps the
      // fetch (and what it measured of the link) for a while, to go on with it when the link is back.
      void (d.reason === 'upstream-down' ? this.o.fetcher.linkLost(Math.min(LINK_LOST_HOLD_MS, this.o.stallMs / 2)) : this.o.fetcher.pause(this.o.drainMs));
    }
    this.o.onDecision();
  }

  /** The status's `budget`. */
  budget(): { month: string; usedBytes: number; limitBytes: number | null } {
    return { month: monthKey(this.o.now()), usedBytes: used(this.ledger, this.o.now()), limitBytes: this.o.budgetBytes ?? null };
  }

  /** The status's `window`. */
  windowText(): string | null {
    return this.o.window ? formatWindow(this.o.window) : null;
  }

  /** Writes the ledger to its file if it changed since it was last written. */
  async saveLedger(): Promise<void> {
    if (!this.ledgerDirty) return;
    this.ledgerDirty = false;
    await writeFileAtomic(this.o.ledgerFile, JSON.stringify(this.ledger));
  }

  /** Decide no more (the gateway is stopping). */
  close(): void {
    this.closed = true;
  }
}
