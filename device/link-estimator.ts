/**
 * What the device knows about its link, from its own requests and arrivals:
 * the smallest round trip seen (request sent → first chunk of it back), the
 * delivery rate, and from these the window of chunks to keep outstanding
 * (about twice the bandwidth-delay product plus four chunks, within bounds) and how long a
 * silence must last before outstanding chunks are asked for again.
 *
 * Round trips of chunks that were asked for more than once are not sampled
 * (Karn's rule): their arrival cannot be matched to one request.
 */
export interface LinkEstimatorConfig {
  minWindow: number;
  maxWindow: number;
  initialWindow: number;
  /** The idle timeout never goes below this. */
  minIdleMs: number;
}

const RATE_WINDOW_MS = 10_000;
const MIN_RTT_SAMPLES = 64;

export class LinkEstimator {
  private readonly sentAt = new Map<number, number>();
  private readonly resent = new Set<number>();
  private readonly rtts: number[] = [];
  private srtt = 0;
  private deliveries: Array<{ t: number; bytes: number }> = [];
  private rate = 0; // chunks per second, smoothed
  private lastArrival = 0;
  private shrink = 1;
  /** Consecutive silences without an arrival: each doubles the next idle timeout. */
  private silences = 0;

  constructor(private readonly cfg: LinkEstimatorConfig) {}

  requested(now: number, indices: readonly number[]): void {
    for (const i of indices) {
      if (this.sentAt.has(i)) this.resent.add(i);
      this.sentAt.set(i, now);
    }
  }

  arrived(now: number, index: number, bytes: number): void {
    const sent = this.sentAt.get(index);
    if (sent !== undefined && !this.resent.has(index)) {
      const rtt = now - sent;
      this.rtts.push(rtt);
      if (this.rtts.length > MIN_RTT_SAMPLES) this.rtts.shift();
      this.srtt = this.srtt === 0 ? rtt : 0.875 * this.srtt + 0.125 * rtt;
    }
    this.sentAt.delete(index);
    this.resent.delete(index);
    if (this.lastArrival > 0) {
      const gap = Math.max(1, now - this.lastArrival);
      const instant = 1000 / gap;
      this.rate = this.rate === 0 ? instant : 0.9 * this.rate + 0.1 * instant;
    }
    this.lastArrival = now;
    this.deliveries.push({ t: now, bytes });
    this.trim(now);
    this.shrink = Math.min(1, this.shrink * 1.25);
    this.silences = 0;
  }

  /** Nothing arrived for the idle timeout: be more careful, and wait longer next time. */
  timedOut(): void {
    this.shrink = Math.max(0.125, this.shrink / 2);
    this.silences = Math.min(this.silences + 1, 6);
  }

  get minRttMs(): number {
    return this.rtts.length ? Math.min(...this.rtts) : 0;
  }

  get window(): number {
    const { minWindow, maxWindow, initialWindow } = this.cfg;
    if (this.rtts.length === 0 || this.rate === 0) return Math.max(minWindow, Math.floor(initialWindow * this.shrink));
    const bdp = (this.rate * this.minRttMs) / 1000;
    // Twice the bandwidth-delay product, and four chunks more: requests go out when half the window
    // has drained, so each carries at least two chunks more than one would (fewer requests on the
    // uplink) and the chunks still in flight cover the round trip.
    return Math.max(minWindow, Math.min(maxWindow, Math.floor((2 * bdp + 4) * this.shrink)));
  }

  get idleTimeoutMs(): number {
    return Math.max(this.cfg.minIdleMs, Math.round(3 * this.srtt)) * 2 ** this.silences;
  }

  /** Payload bytes received per second over the last 10 s. */
  bytesPerSecond(now: number): number {
    this.trim(now);
    if (this.deliveries.length === 0) return 0;
    const bytes = this.deliveries.reduce((a, d) => a + d.bytes, 0);
    const span = Math.max(1000, Math.min(RATE_WINDOW_MS, now - this.deliveries[0].t));
    return Math.round((bytes * 1000) / span);
  }

  private trim(now: number): void {
    while (this.deliveries.length && now - this.deliveries[0].t > RATE_WINDOW_MS) this.deliveries.shift();
  }
}
