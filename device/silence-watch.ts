import type { Clock } from '../platform/clock.ts';
import type { Logger } from '../util/log.ts';

/**
 * A silent socket is not always a dead link, and not always a live one.
 *
 * After a cut, the server's TCP retransmits what it had in flight with an
 * exponentially backed-off timer (0.2 s, 0.4 s, … 3.2 s, and twice that again
 * when a retransmission is lost too): the link may have been back for seconds
 * while our one connection still waits. Then a fresh connection resumes far
 * sooner, from the bitmap. But a link that is merely slow must not be torn
 * down: every reconnect costs round trips and the part of a frame that was on
 * its way.
 *
 * So, while chunks are asked for and not here: when the socket has received
 * no byte at all for a silence bounded by the measured round trip and by the
 * time a chunk takes at the measured rate (at least `minSilenceMs`), open a fresh TCP connection to the broker (a probe: a
 * SYN and its answer). Only if it connects, and the old socket is still
 * silent, reconnect (on the probed connection). A probe that does not connect
 * (the link is still cut) is tried again a moment later, each with a fresh SYN
 * rather than waiting out a SYN's own backoff. A reconnect that brings no
 * chunk doubles the silence the next one needs.
 */
export interface SilenceWatchOptions {
  clock: Clock;
  log: Logger;
  /** Bytes the connection has received so far. */
  bytesIn: () => number;
  /** Whether chunks (or the list) are asked for and not yet here: silence matters only then. */
  waiting: () => boolean;
  /** The smallest round trip measured, ms (0 before any). */
  rttMs: () => number;
  /**
   * How long one chunk takes at this connection's measured delivery rate, ms (0 when unknown).
   * A link shared by many devices, or slowed by loss, leaves each connection silent for longer
   * between bytes; and a reconnect throws away the part of a frame already received (up to a
   * chunk), so the silence must be long beside a chunk's time too.
   */
  chunkMs: () => number;
  probe: (timeoutMs: number) => Promise<boolean>;
  reconnect: (reason: string) => void;
  /**
   * A tiny packet up on the current connection (transport `nudge`): sent after `nudgeMs` of silence
   * and again after each doubling of it. A sender whose last ACK from us was lost waits out its
   * retransmission timer (doubled at each loss) before it sends again; the nudge's segment carries
   * that ACK again, for ~60 bytes up and no reconnect.
   */
  nudge?: () => void;
  /** The silence before the first nudge, ms (the measured round trip may make it longer). */
  nudgeMs?: number;
  /**
   * PINGRESPs received so far (transport `pongs`). An answer to a nudge means the connection works
   * both ways and the broker is only slow to send chunks (busy with many devices): reconnecting
   * then frees nothing and, done by every device of a busy broker at once, buries it (1,000 devices
   * on one loaded Aedes: one reconnect each, 91 s instead of 16). So only a silence with no answer
   * in it reconnects; what is missing is asked again by the idle re-ask.
   */
  answers?: () => number;
  /** The least silence that starts a probe, ms. */
  minSilenceMs: number;
  /**
   * Reconnects this watch may make at most. Each throws away the part of a frame under way and
   * brings the retained messages again (up to a chunk and ~2 KB): on a small payload, or a link
   * shared by many devices where a silence is as likely congestion as a backed-off timer, a few
   * reconnects cost more bytes than they save time. After the last, TCP's own recovery takes over.
   */
  maxReconnects: number;
  /**
   * What a reconnect now would cost in bytes (transport `reconnectCost`), and how many bytes the
   * watch may spend on reconnects in all: one is made only while its cost fits in what is left.
   * The part of a frame under way is known at the moment of deciding: a reconnect between frames
   * costs only the retained messages, one in the middle of a 16 KiB frame up to the frame.
   */
  costBytes?: () => number;
  /** A number, or read at each decision (a budget made of what the connection has measured, e.g. its retained messages). */
  budgetBytes?: number | (() => number);
  /**
   * Before the first chunk, the least silence is this many times `minSilenceMs` (default
   * UNMEASURED_FACTOR, 4: set for devices that start together on one link). A fetcher alone on its
   * link (a gateway's upstream fetch) has no one to queue behind: 1 lets it probe after the least silence.
   */
  unmeasuredFactor?: number;
}

const TICK_MS = 250;
/**
 * Fewer bytes than this since the silence began is still silence: a connection whose peer is deep in
 * retransmission backoff delivers one segment (1448 B) now and then, and a trickle like that kept
 * resetting the watch while a device went 30 s and more without a chunk (ten devices at 20 % loss).
 * Any link worth the name moves more than this in the least silence (2 s: 8 kbit/s).
 */
const PROGRESS_BYTES = 2048;
/**
 * Before the first chunk the watch knows neither the round trip nor the rate, and a silence then is
 * most often the start of a shared link (ten devices asking at once): the least silence is this
 * many times longer until a chunk has come.
 */
export const UNMEASURED_FACTOR = 4;
const MAX_STRIKES = 3;
const PAID_BACK = 8;
/**
 * No chunk for this long while chunks are asked for is logged once per gap (debug), with what kept the
 * watch from probing: the tail of a ten-device run was one connection trickling a chunk every 7-24 s
 * that the watch never probed (docs/links.md, ninth pass).
 */
const LONG_WAIT_MS = 10_000;

/** What kept the watch from probing in a long wait for a chunk (the `held` of its debug line). */
export type HeldBy = 'bytes-trickle' | 'answered' | 'max-reconnects' | 'budget' | 'probing' | 'silence-too-short';

export class SilenceWatch {
  private seen: number;
  private since: number;
  private probing = false;
  private timer: unknown;
  private stopped = false;
  /** Reconnects not yet paid back: each doubles the silence the next one needs. */
  private strikes = 0;
  /** Chunks since the last reconnect: a reconnect is paid back once this many have come (a link that delivers again). */
  private sinceReconnect = 0;
  reconnects = 0;
  probes = 0;
  /** Bytes the reconnects cost (as known when each was made). */
  spentBytes = 0;
  nudges = 0;
  /** Silence (ms since `since`) at which the next nudge goes. */
  private nextNudgeMs = 0;
  /** A chunk has come (the round trip and rate are measured). */
  private measured = false;
  /** The last chunk time measured: a rate that fell to nothing (no chunk for a while) does not make a chunk quick. */
  private chunkMsSeen = 0;
  /** The answers count last seen, and when it last changed. */
  private answersSeen: number;
  private answeredAt = Number.NEGATIVE_INFINITY;
  private lastNudgeAt = Number.NEGATIVE_INFINITY;
  private firstUnansweredAt = Number.NEGATIVE_INFINITY;
  /** The last chunk (or the start), and the gap already reported (`reportLongWait`). */
  private lastChunkAt: number;
  private reportedGap = Number.NEGATIVE_INFINITY;

  constructor(private readonly o: SilenceWatchOptions) {
    this.seen = o.bytesIn();
    this.since = o.clock.now();
    this.lastChunkAt = this.since;
    this.answersSeen = o.answers?.() ?? 0;
    this.nextNudgeMs = this.firstNudgeMs();
    this.schedule();
  }

  private firstNudgeMs(): number {
    return Math.max(this.o.nudgeMs ?? 0, 2 * this.o.rttMs());
  }

  /** How long the socket must be silent before a probe, ms. */
  get silenceNeededMs(): number {
    const chunkMs = this.o.chunkMs();
    if (chunkMs > 0) this.chunkMsSeen = chunkMs;
    const least = this.measured ? this.o.minSilenceMs : (this.o.unmeasuredFactor ?? UNMEASURED_FACTOR) * this.o.minSilenceMs;
    return Math.max(least, 4 * this.o.rttMs(), 2 * this.chunkMsSeen) * 2 ** this.strikes;
  }

  /**
   * A chunk arrived. Once PAID_BACK chunks have come since the last reconnect, the link works
   * again and reconnects start from the least silence. Not at the first chunk: on a link shared
   * by many devices under loss a chunk comes now and then between long silences, and resetting
   * there let each device reconnect again and again (each throwing away part of a frame).
   */
  delivered(): void {
    this.measured = true;
    this.lastChunkAt = this.o.clock.now();
    if (++this.sinceReconnect >= PAID_BACK) this.strikes = 0;
  }

  /**
   * A new connection, whoever made it (a reset by the peer, a keepalive, the transport's own
   * reconnect): its silence starts now. The old connection's silence is not this one's: counted on,
   * it tore down connections 0.7-2.6 s old as "silent for 11-12 s" (ten devices at 20 % loss, whose
   * connections were reset after an outage), each costing a connect, a subscribe and a request again.
   */
  connected(): void {
    this.restartSilence(this.o.clock.now(), this.o.bytesIn());
  }

  /** The silence starts again at `now` (bytes came, nothing is asked for, or a new connection). */
  private restartSilence(now: number, bytes: number): void {
    this.seen = bytes;
    this.since = now;
    this.nextNudgeMs = this.firstNudgeMs();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) this.o.clock.clearTimeout(this.timer);
  }

  private schedule(): void {
    if (!this.stopped) this.timer = this.o.clock.setTimeout(() => this.tick(), TICK_MS);
  }

  private tick(): void {
    const now = this.o.clock.now();
    const bytes = this.o.bytesIn();
    const answers = this.o.answers?.() ?? 0;
    if (answers !== this.answersSeen) {
      this.answersSeen = answers;
      this.answeredAt = now;
    }
    if (bytes - this.seen >= PROGRESS_BYTES || !this.o.waiting()) {
      this.restartSilence(now, bytes);
    } else {
      const silent = now - this.since;
      if (this.o.nudge && this.o.nudgeMs !== undefined && silent >= this.nextNudgeMs) {
        this.nextNudgeMs *= 2;
        this.sendNudge(now);
      }
      // Silent, and no answer to a nudge either for as long: the connection, not the broker, is stuck.
      const unanswered = now - this.lastLife();
      if (!this.probing && this.reconnects < this.o.maxReconnects && this.affordable() && unanswered >= this.silenceNeededMs && this.pingedUnanswered(now)) this.check(unanswered);
    }
    this.reportLongWait(now);
    this.schedule();
  }

  /** Once per gap between chunks that grows long while chunks are asked for: what held the watch (debug). */
  private reportLongWait(now: number): void {
    const gapMs = now - this.lastChunkAt;
    if (this.reportedGap === this.lastChunkAt || !this.o.waiting() || gapMs < LONG_WAIT_MS) return;
    this.reportedGap = this.lastChunkAt;
    const needed = this.silenceNeededMs;
    this.o.log.debug('no chunk for a long while', { gapMs, silentMs: now - this.lastLife(), neededMs: Math.round(needed), held: this.heldBy(now, needed), reconnects: this.reconnects, spentBytes: this.spentBytes });
  }

  /** Why no probe goes now, with `needed` the silence a probe needs (the first that holds). */
  private heldBy(now: number, needed: number): HeldBy {
    if (this.probing) return 'probing';
    if (this.reconnects >= this.o.maxReconnects) return 'max-reconnects';
    if (!this.affordable()) return 'budget';
    if (this.since > this.lastChunkAt && now - this.since < needed && this.since >= this.answeredAt) return 'bytes-trickle';
    if (this.answeredAt > this.lastChunkAt && now - this.answeredAt < needed) return 'answered';
    return 'silence-too-short';
  }

  private sendNudge(now: number): void {
    this.nudges++;
    // The first nudge after the last sign of life is the one whose answer is waited for.
    if (this.lastNudgeAt <= this.lastLife()) this.firstUnansweredAt = now;
    this.lastNudgeAt = now;
    this.o.nudge!();
  }

  /** The last bytes (or the silence's start) or answer. */
  private lastLife(): number {
    return Math.max(this.since, this.answeredAt);
  }

  /**
   * With answers counted: a nudge has gone since the last sign of life and has had no answer for a
   * wait as long as the least silence (or 4 round trips). When none has gone, one goes now.
   */
  private pingedUnanswered(now: number): boolean {
    if (!this.o.answers || !this.o.nudge) return true;
    if (this.lastNudgeAt <= this.lastLife()) {
      this.sendNudge(now);
      return false;
    }
    return now - this.firstUnansweredAt >= Math.max(this.o.minSilenceMs, 4 * this.o.rttMs());
  }

  /** Whether a reconnect now fits in the byte budget (always, without one). */
  private affordable(): boolean {
    const { costBytes, budgetBytes } = this.o;
    if (!costBytes || budgetBytes === undefined) return true;
    return this.spentBytes + costBytes() <= (typeof budgetBytes === 'function' ? budgetBytes() : budgetBytes);
  }

  private check(silentMs: number): void {
    this.probing = true;
    this.probes++;
    const before = this.seen;
    const answersBefore = this.answersSeen;
    const sentAt = this.o.clock.now();
    void this.o
      .probe(Math.max(1000, 2 * this.o.rttMs()))
      .then((up) => {
        this.probing = false;
        const moved = this.o.bytesIn() - before >= PROGRESS_BYTES || (this.o.answers?.() ?? 0) !== answersBefore;
        this.o.log.debug('probe', { up, handshakeMs: this.o.clock.now() - sentAt, silentMs, moved });
        if (this.stopped || !up || moved || !this.o.waiting() || this.reconnects >= this.o.maxReconnects || !this.affordable()) return;
        this.spentBytes += this.o.costBytes?.() ?? 0;
        this.strikes = Math.min(MAX_STRIKES, this.strikes + 1);
        this.sinceReconnect = 0;
        this.reconnects++;
        this.since = this.o.clock.now();
        this.o.log.info('the connection is silent while a fresh one connects: reconnecting', { silentMs });
        this.o.reconnect(`silent for ${silentMs} ms while the link was up`);
      })
      .catch(() => {
        this.probing = false;
      });
  }
}
