import net from 'node:net';
import { mulberry32 } from '../util/random.ts';
import { Lane, Radio, type LinkState } from './link-lane.ts';

export interface LinkProxyOptions {
  /** Where the real broker listens. */
  targetHost: string;
  targetPort: number;
  /** Bytes per second in each direction (0 = unlimited): per connection, or for all of them with `sharedBandwidth`. */
  bytesPerSecond?: number;
  /** One-way delay added to every piece of data, ms. */
  latencyMs?: number;
  /** All connections share one budget per direction (a site behind one uplink), served round robin. */
  sharedBandwidth?: boolean;
  /** Cut every connection at random intervals drawn uniformly from [min, max] ms, from the moment `start()` is called. */
  cutEveryMs?: [number, number];
  /** Seed of the PRNG behind the random cuts (mulberry32); default 1. */
  seed?: number;
}

export type ScheduleAction = 'cut' | 'down' | 'up' | 'stall' | 'unstall' | { rateBytesPerSecond: number } | { latencyMs: number };

export interface ScheduleStep {
  /** Milliseconds after `runSchedule()` was called. */
  atMs: number;
  action: ScheduleAction;
}

export interface ConnectionRecord {
  openedAt: number;
  closedAt?: number;
  /** Bytes read from the client (up) and from the target (down) on this connection. */
  up: number;
  down: number;
}

export interface CutRecord {
  at: number;
  /** Open connections it closed (0: the link was already quiet). */
  dropped: number;
  cause: 'manual' | 'random' | 'schedule' | 'down';
}

interface Conn {
  client: net.Socket;
  upstream: net.Socket;
  lanes: [Lane, Lane];
  /** Radios of this connection alone (none when the bandwidth is shared). */
  radios: Radio[];
  record: ConnectionRecord;
}

interface RunningSchedule {
  timer: ReturnType<typeof setTimeout> | undefined;
  finish(completed: boolean): void;
}

function checkRange(r: [number, number]): void {
  if (!(Number.isFinite(r[0]) && Number.isFinite(r[1]) && r[0] > 0 && r[1] >= r[0])) throw new RangeError(`cut interval must be [min, max] with 0 < min <= max, got [${r.join(', ')}]`);
}

function checkNonNegative(what: string, n: number): void {
  if (!(Number.isFinite(n) && n >= 0)) throw new RangeError(`${what} must be a finite number >= 0, got ${n}`);
}

function checkAction(a: ScheduleAction): void {
  if (a === 'cut' || a === 'down' || a === 'up' || a === 'stall' || a === 'unstall') return;
  if (typeof a === 'object' && a !== null) {
    if ('rateBytesPerSecond' in a) return checkNonNegative('rateBytesPerSecond', a.rateBytesPerSecond);
    if ('latencyMs' in a) return checkNonNegative('latencyMs', a.latencyMs);
  }
  throw new TypeError(`unknown schedule action ${JSON.stringify(a)}`);
}

/**
 * A TCP proxy on loopback that behaves like a bad link: limited bandwidth,
 * latency, stalls (a radio that fades: connections stay open, bytes wait),
 * cuts (by hand, at random from a seeded PRNG, or on a script), and an
 * operator's hand on the plug (refuse new connections for a while). Used by
 * tests and simulations; touches only 127.0.0.1.
 */
export class LinkProxy {
  private server: net.Server | undefined;
  private readonly conns = new Set<Conn>();
  private readonly link: LinkState;
  /** [up, down] when the bandwidth is shared. */
  private readonly shared: [Radio, Radio] | undefined;
  private readonly schedules = new Set<RunningSchedule>();
  private readonly rand: () => number;
  private cutRange: [number, number] | undefined;
  private cutTimer: ReturnType<typeof setTimeout> | undefined;
  private down = false;
  private stopped = false;
  /** Bytes read from clients (up) and from the target (down), all connections. */
  /** Bytes that entered the proxy (including what a cut then lost). */
  bytesUp = 0;
  bytesDown = 0;
  /** Bytes handed to the receiving socket: what the far end actually received. */
  deliveredUp = 0;
  deliveredDown = 0;
  /** Connections accepted (refused ones are not counted). */
  connections = 0;
  /** Cuts that closed at least one connection; `cutLog` also has those that found none. */
  cuts = 0;
  readonly cutLog: CutRecord[] = [];
  readonly connectionLog: ConnectionRecord[] = [];
  port = 0;

  constructor(private readonly o: LinkProxyOptions) {
    checkNonNegative('bytesPerSecond', o.bytesPerSecond ?? 0);
    checkNonNegative('latencyMs', o.latencyMs ?? 0);
    if (o.cutEveryMs) checkRange(o.cutEveryMs);
    this.link = { rate: o.bytesPerSecond ?? 0, latency: o.latencyMs ?? 0, stalledAt: undefined };
    this.shared = o.sharedBandwidth ? [new Radio(this.link), new Radio(this.link)] : undefined;
    this.rand = mulberry32(o.seed ?? 1);
    this.cutRange = o.cutEveryMs;
  }

  async start(port = 0): Promise<number> {
    this.stopped = false;
    const server = (this.server = net.createServer({ allowHalfOpen: true }, (client) => this.accept(client)));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.port = (this.server.address() as net.AddressInfo).port;
    this.armRandomCut();
    return this.port;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  get bytesPerSecond(): number {
    return this.link.rate;
  }

  get latencyMs(): number {
    return this.link.latency;
  }

  get isStalled(): boolean {
    return this.link.stalledAt !== undefined;
  }

  get isDown(): boolean {
    return this.down;
  }

  /** Open connections now. */
  get openConnections(): number {
    return this.conns.size;
  }

  /** Drop every open connection (as a link that goes dark does). */
  cut(): void {
    this.cutAll('manual');
  }

  /** Cut, and refuse connections until `restore()`. */
  takeDown(): void {
    this.down = true;
    this.cutAll('down');
  }

  restore(): void {
    this.down = false;
  }

  /** Bytes stop in both directions; connections stay open and what arrives waits (one socket read per direction and connection). */
  stall(): void {
    if (this.link.stalledAt !== undefined) return;
    this.link.stalledAt = Date.now();
    for (const r of this.radios()) r.stall();
    for (const l of this.lanes()) l.stall();
  }

  /** Everything held moves again, in order, at the link's rate. */
  unstall(): void {
    const stalledAt = this.link.stalledAt;
    if (stalledAt === undefined) return;
    const shift = Date.now() - stalledAt;
    this.link.stalledAt = undefined;
    // Lanes first: a radio that finishes a piece hands it to an already shifted lane.
    for (const l of this.lanes()) l.unstall(stalledAt, shift);
    for (const r of this.radios()) r.unstall(stalledAt, shift);
  }

  setRate(bytesPerSecond: number): void {
    checkNonNegative('bytesPerSecond', bytesPerSecond);
    this.link.rate = bytesPerSecond;
  }

  setLatency(ms: number): void {
    checkNonNegative('latencyMs', ms);
    this.link.latency = ms;
  }

  /** Start, change (`[min, max]` ms) or stop (`undefined`) the random cuts; the seeded sequence continues. */
  randomCuts(range: [number, number] | undefined): void {
    if (range) checkRange(range);
    this.cutRange = range;
    this.armRandomCut();
  }

  /**
   * Run `steps`, each `atMs` after this call, in order (stable for equal
   * times). Resolves `true` after the last step, or `false` if `stop()`
   * cancelled the steps still pending.
   */
  runSchedule(steps: ScheduleStep[]): Promise<boolean> {
    for (const s of steps) {
      checkNonNegative('atMs', s.atMs);
      checkAction(s.action);
    }
    if (this.stopped) return Promise.resolve(false);
    const t0 = Date.now();
    const todo = [...steps].sort((a, b) => a.atMs - b.atMs);
    return new Promise<boolean>((resolve) => {
      let next = 0;
      const run: RunningSchedule = {
        timer: undefined,
        finish: (completed) => {
          if (run.timer) clearTimeout(run.timer);
          this.schedules.delete(run);
          resolve(completed);
        },
      };
      const tick = (): void => {
        run.timer = undefined;
        while (next < todo.length && Date.now() >= t0 + todo[next].atMs) this.apply(todo[next++].action);
        if (next >= todo.length) return run.finish(true);
        run.timer = setTimeout(tick, Math.max(1, t0 + todo[next].atMs - Date.now()));
      };
      this.schedules.add(run);
      run.timer = setTimeout(tick, todo.length ? todo[0].atMs : 0);
    });
  }

  /** Cancels random cuts and pending schedule steps, closes every connection and the listener. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.cutRange = undefined;
    this.armRandomCut();
    for (const s of [...this.schedules]) s.finish(false);
    for (const c of [...this.conns]) this.close(c);
    for (const r of this.shared ?? []) r.close();
    await new Promise<void>((resolve) => (this.server?.listening ? this.server.close(() => resolve()) : resolve()));
  }

  private apply(a: ScheduleAction): void {
    if (a === 'cut') this.cutAll('schedule');
    else if (a === 'down') this.takeDown();
    else if (a === 'up') this.restore();
    else if (a === 'stall') this.stall();
    else if (a === 'unstall') this.unstall();
    else if ('rateBytesPerSecond' in a) this.setRate(a.rateBytesPerSecond);
    else this.setLatency(a.latencyMs);
  }

  private cutAll(cause: CutRecord['cause']): void {
    const dropped = this.conns.size;
    for (const c of [...this.conns]) this.close(c);
    this.cutLog.push({ at: Date.now(), dropped, cause });
    if (dropped > 0) this.cuts++;
  }

  private armRandomCut(): void {
    if (this.cutTimer) clearTimeout(this.cutTimer);
    this.cutTimer = undefined;
    const range = this.cutRange;
    if (!range || this.stopped || !this.server) return;
    const wait = range[0] + this.rand() * (range[1] - range[0]);
    this.cutTimer = setTimeout(() => {
      this.cutTimer = undefined;
      this.cutAll('random');
      this.armRandomCut();
    }, wait);
  }

  private *radios(): Iterable<Radio> {
    if (this.shared) yield* this.shared;
    for (const c of this.conns) yield* c.radios;
  }

  private *lanes(): Iterable<Lane> {
    for (const c of this.conns) yield* c.lanes;
  }

  private accept(client: net.Socket): void {
    if (this.down || this.stopped) {
      client.destroy();
      return;
    }
    this.connections++;
    client.setNoDelay(true);
    const upstream = net.connect({ host: this.o.targetHost, port: this.o.targetPort, noDelay: true, allowHalfOpen: true });
    const record: ConnectionRecord = { openedAt: Date.now(), up: 0, down: 0 };
    this.connectionLog.push(record);
    const radios = this.shared ? [] : [new Radio(this.link), new Radio(this.link)];
    const [upRadio, downRadio] = this.shared ?? radios;
    const lanes: [Lane, Lane] = [
      new Lane(
        client,
        upstream,
        upRadio,
        this.link,
        (n) => {
          this.bytesUp += n;
          record.up += n;
        },
        (n) => (this.deliveredUp += n),
      ),
      new Lane(
        upstream,
        client,
        downRadio,
        this.link,
        (n) => {
          this.bytesDown += n;
          record.down += n;
        },
        (n) => (this.deliveredDown += n),
      ),
    ];
    const conn: Conn = { client, upstream, lanes, radios, record };
    this.conns.add(conn);
    const close = (): void => this.close(conn);
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  }

  private close(conn: Conn): void {
    if (!this.conns.delete(conn)) return;
    conn.record.closedAt = Date.now();
    conn.client.destroy();
    conn.upstream.destroy();
    for (const l of conn.lanes) l.close();
    for (const r of conn.radios) r.close();
  }
}
