import type { Clock } from '../platform/clock.ts';

/** Longest wait between two tries of a failed download. */
const MAX_RETRY_MS = 30 * 60_000;

/**
 * The agent's two timers, on its clock: a retry after a failed download
 * (the first after `retryMs`, doubling with every failure in a row up to
 * 30 min; `succeeded()` starts again from the first), and a watchdog that
 * runs `tick` every `everyMs` while a download is on.
 */
export class AgentTimers {
  private retryTimer: unknown;
  private failures = 0;
  private watchdog: unknown;

  constructor(
    private readonly clock: Clock,
    private readonly retryMs: number,
  ) {}

  /** Calls `fn` after the next backoff delay; returns that delay. */
  retryLater(fn: () => void): number {
    const delay = Math.min(MAX_RETRY_MS, this.retryMs * 2 ** this.failures++);
    if (this.retryTimer) this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = this.clock.setTimeout(fn, delay);
    return delay;
  }

  /** An update went through: the next failure waits the shortest time again. */
  succeeded(): void {
    this.failures = 0;
  }

  /** Runs `tick` every `everyMs` until it returns false or the watchdog is stopped (replaces any running one). */
  watch(everyMs: number, tick: () => boolean): void {
    this.stopWatch();
    const run = (): void => {
      if (tick()) this.watchdog = this.clock.setTimeout(run, everyMs);
    };
    this.watchdog = this.clock.setTimeout(run, everyMs);
  }

  stopWatch(): void {
    if (this.watchdog) this.clock.clearTimeout(this.watchdog);
    this.watchdog = undefined;
  }

  clear(): void {
    this.stopWatch();
    if (this.retryTimer) this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }
}
