import type { DownloadOptions } from './download.ts';

/**
 * Bytes the socket must have received since the last look for chunks to count as still coming: more
 * than the acknowledgements and pings a connection gets anyway (a PUBACK is 4 bytes, and one comes for
 * each status), which otherwise kept a download whose answers were lost waiting until it stalled.
 */
const STILL_COMING_BYTES = 256;

/** What the timers tell the Download, and read of it when armed. */
export interface TimedDownload {
  /** How long a silence is before it counts as idle (read at each arming: it grows with the round trip). */
  idleMs: () => number;
  /** Nothing arrived for `idleMs`, and neither bytes nor a PINGRESP since: ask again. */
  idle: (idleMs: number) => void;
  /** No new chunk for `stallMs`. */
  stalled: () => void;
}

/**
 * The two timers of one Download: the idle re-ask (nothing arrived for a while, so what is outstanding
 * is asked again, unless the socket still receives bytes or has not answered a ping since) and the
 * stall (no new chunk for `stallMs`: the download fails). Never a per-chunk timer.
 */
export class DownloadTimers {
  private idleTimer: unknown;
  private stallTimer: unknown;
  private stopped = false;

  constructor(
    private readonly o: Pick<DownloadOptions, 'clock' | 'transport' | 'wireBytesIn' | 'stallMs'>,
    private readonly d: TimedDownload,
  ) {}

  /** (Re)starts the idle timer: something arrived, or a request went out. */
  armIdle(): void {
    if (this.stopped) return;
    const { clock, transport: t } = this.o;
    if (this.idleTimer) clock.clearTimeout(this.idleTimer);
    const idle = this.d.idleMs();
    let seen = this.o.wireBytesIn?.() ?? 0;
    let pongs = t.pongs?.();
    const check = (): void => {
      // Bytes still arriving on the socket: chunks are on their way, slowly. Asking
      // again now would only send duplicates down an already full link.
      const now = this.o.wireBytesIn?.() ?? 0;
      if (now - seen >= STILL_COMING_BYTES) {
        seen = now;
        this.idleTimer = clock.setTimeout(check, idle);
        return;
      }
      // No PINGRESP since (the silence watch's nudges ask for them): what was asked for may still be
      // queued ahead of it on this connection, TCP backing off, not lost; asking again then only
      // sent each such chunk twice. Ping, and look again. A connection that never answers is
      // closed by its keepalive, and the reconnect asks again.
      if (t.nudge && t.pongs && t.pongs() === pongs) {
        t.nudge();
        this.idleTimer = clock.setTimeout(check, idle);
        return;
      }
      pongs = t.pongs?.();
      this.d.idle(idle);
    };
    this.idleTimer = clock.setTimeout(check, idle);
  }

  /** (Re)starts the stall timer: a new chunk came (or the download starts). */
  armStall(): void {
    if (this.stopped) return;
    if (this.stallTimer) this.o.clock.clearTimeout(this.stallTimer);
    this.stallTimer = this.o.clock.setTimeout(() => this.d.stalled(), this.o.stallMs);
  }

  /** Both timers off, for good. */
  stop(): void {
    this.stopped = true;
    if (this.idleTimer) this.o.clock.clearTimeout(this.idleTimer);
    if (this.stallTimer) this.o.clock.clearTimeout(this.stallTimer);
  }
}
