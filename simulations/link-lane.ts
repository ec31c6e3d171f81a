import type net from 'node:net';

/**
 * The data path of the link proxy. A `Lane` carries one direction of one
 * connection; a `Radio` is the bandwidth those lanes compete for (one radio
 * per lane, or one per direction shared by the whole site). Bytes go
 * reader → lane (waiting) → radio (one piece at a time, at `rate`) → lane
 * (in flight for `latency`) → writer, in order.
 *
 * A stall freezes the link: nothing is transmitted or delivered, and every
 * timestamp is pushed back by the stall's length when it ends, so what was
 * on its way arrives later, in order, still at the link's rate.
 */

/** Shared, live settings: lanes and radios read them at each piece. */
export interface LinkState {
  /** Bytes per second per radio; 0 = unlimited. */
  rate: number;
  /** One-way delay, ms. */
  latency: number;
  /** Set while the link is stalled. */
  stalledAt: number | undefined;
}

type Timer = ReturnType<typeof setTimeout>;

/** Pieces small enough that a slow link delivers steadily and shared radios interleave. */
function pieceSize(rate: number): number {
  return rate > 0 ? Math.max(512, Math.min(16_384, Math.round(rate / 20))) : Infinity;
}

export class Radio {
  /** Lanes with pieces waiting, served round robin. */
  private readonly ready: Lane[] = [];
  private current: { lane: Lane; piece: Buffer; doneAt: number } | undefined;
  private freeAt = 0;
  private timer: Timer | undefined;

  constructor(private readonly link: LinkState) {}

  enqueue(lane: Lane): void {
    if (!this.ready.includes(lane)) this.ready.push(lane);
    this.pump(false);
  }

  /** Forget a closed lane (its piece on the air is lost). */
  remove(lane: Lane): void {
    const i = this.ready.indexOf(lane);
    if (i >= 0) this.ready.splice(i, 1);
    if (this.current?.lane === lane) {
      this.current = undefined;
      this.clearTimer();
      this.pump(false);
    }
  }

  carrying(lane: Lane): boolean {
    return this.current?.lane === lane;
  }

  stall(): void {
    this.clearTimer();
  }

  unstall(stalledAt: number, shift: number): void {
    if (this.current) this.current.doneAt = Math.max(this.current.doneAt, stalledAt) + shift;
    if (this.freeAt > stalledAt) this.freeAt += shift;
    this.pump(false);
  }

  close(): void {
    this.clearTimer();
    this.ready.length = 0;
    this.current = undefined;
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** `chained`: the radio has been busy, so the next piece starts when the last one ended (timer lateness is not lost). */
  private pump(chained: boolean): void {
    if (this.link.stalledAt !== undefined) return;
    for (;;) {
      const now = Date.now();
      if (this.current) {
        if (this.current.doneAt > now) {
          if (!this.timer) {
            this.timer = setTimeout(() => {
              this.timer = undefined;
              this.pump(true);
            }, this.current.doneAt - now);
          }
          return;
        }
        const { lane, piece, doneAt } = this.current;
        this.current = undefined;
        lane.transmitted(piece, doneAt);
        chained = true;
      }
      const lane = this.ready.shift();
      if (!lane) return;
      const piece = lane.nextPiece();
      if (!piece) continue;
      if (lane.hasWaiting()) this.ready.push(lane);
      const start = chained ? Math.max(this.freeAt, now - 50) : Math.max(this.freeAt, now);
      const rate = this.link.rate;
      this.freeAt = start + (rate > 0 ? (piece.byteLength / rate) * 1000 : 0);
      this.current = { lane, piece, doneAt: this.freeAt };
    }
  }
}

/** One direction of one connection. Reads at most one socket read ahead of the radio (back-pressure). */
export class Lane {
  private readonly waiting: Buffer[] = [];
  private readonly flight: Array<{ data: Buffer; at: number }> = [];
  private lastAt = 0;
  private timer: Timer | undefined;
  private ended = false;
  private closed = false;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    readonly radio: Radio,
    private readonly link: LinkState,
    count: (n: number) => void,
    private readonly delivered: (n: number) => void = () => undefined,
  ) {
    from.on('data', (data: Buffer) => {
      if (this.closed) return;
      count(data.byteLength);
      const size = pieceSize(link.rate);
      for (let o = 0; o < data.byteLength; o += size) this.waiting.push(data.subarray(o, Math.min(data.byteLength, o + size)));
      // Read no more until the radio has taken all of this.
      from.pause();
      radio.enqueue(this);
    });
    from.on('end', () => {
      this.ended = true;
      this.maybeEnd();
    });
  }

  hasWaiting(): boolean {
    return this.waiting.length > 0;
  }

  /** The radio takes the next piece; once none wait, the reader may read again. */
  nextPiece(): Buffer | undefined {
    const piece = this.waiting.shift();
    if (!this.waiting.length && !this.closed && !this.from.destroyed) this.from.resume();
    return piece;
  }

  /** The radio finished sending `piece` at `doneAt`; it arrives one latency later, never before what went first. */
  transmitted(piece: Buffer, doneAt: number): void {
    if (this.closed) return;
    const at = Math.max(doneAt + this.link.latency, this.lastAt);
    this.lastAt = at;
    this.flight.push({ data: piece, at });
    this.deliver();
  }

  stall(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  unstall(stalledAt: number, shift: number): void {
    for (const f of this.flight) f.at = Math.max(f.at, stalledAt) + shift;
    if (this.lastAt > stalledAt) this.lastAt += shift;
    this.deliver();
  }

  close(): void {
    this.closed = true;
    this.stall();
    this.waiting.length = 0;
    this.flight.length = 0;
    this.radio.remove(this);
  }

  private deliver(): void {
    if (this.closed || this.link.stalledAt !== undefined || this.timer) return;
    const now = Date.now();
    while (this.flight.length && this.flight[0].at <= now) {
      const { data } = this.flight.shift()!;
      if (!this.to.destroyed && !this.to.writableEnded) {
        this.to.write(data);
        this.delivered(data.byteLength);
      }
    }
    if (this.flight.length) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.deliver();
      }, this.flight[0].at - now);
      return;
    }
    this.maybeEnd();
  }

  /** Pass a half-close on once everything before it has been delivered. */
  private maybeEnd(): void {
    if (!this.ended || this.closed || this.waiting.length || this.flight.length || this.radio.carrying(this)) return;
    if (!this.to.destroyed && !this.to.writableEnded) this.to.end();
  }
}
