import net from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LinkProxy, type LinkProxyOptions } from '../../simulations/link-proxy.ts';
import { mulberry32 } from '../../util/random.ts';
import { expectNoEventWithin, observeFor, until } from '../support/wait.ts';

/** A client socket that keeps what it receives and when it closed. */
class Client {
  readonly chunks: Buffer[] = [];
  received = 0;
  closedAt: number | undefined;
  private waiters: Array<() => void> = [];

  constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.received += d.byteLength;
      this.wake();
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      this.closedAt = Date.now();
      this.wake();
    });
  }

  get data(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** Resolves once `pred` holds; rejects after `timeoutMs`. */
  async until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what} (received ${this.received}, closed ${this.closedAt !== undefined})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}

let echo: net.Server;
let echoPort: number;
const echoSockets = new Set<net.Socket>();
let proxy: LinkProxy | undefined;
const clients: Client[] = [];

beforeEach(async () => {
  echo = net.createServer((s) => {
    echoSockets.add(s);
    s.on('error', () => {});
    s.on('close', () => echoSockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
  echoPort = (echo.address() as net.AddressInfo).port;
});

afterEach(async () => {
  await proxy?.stop();
  proxy = undefined;
  for (const c of clients.splice(0)) c.sock.destroy();
  for (const s of echoSockets) s.destroy();
  await new Promise<void>((r) => echo.close(() => r()));
});

async function startProxy(o: Partial<LinkProxyOptions> = {}): Promise<LinkProxy> {
  proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: echoPort, ...o });
  await proxy.start();
  return proxy;
}

async function dial(port: number): Promise<Client> {
  const sock = net.connect({ host: '127.0.0.1', port, noDelay: true });
  const c = new Client(sock);
  clients.push(c);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', () => resolve());
    sock.once('error', reject);
  });
  return c;
}

/** Bytes 0..n-1 of a pattern that shows any reordering or loss. */
function pattern(n: number, salt = 0): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + (i >> 8) * 7 + salt) & 0xff;
  return b;
}

async function roundTrip(c: Client, timeoutMs = 2000): Promise<number> {
  const before = c.received;
  const t0 = Date.now();
  c.sock.write('ping');
  await c.until(() => c.received >= before + 4, timeoutMs, 'echo');
  return Date.now() - t0;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What a loaded machine may add to a scheduled step's time (the steps are at least 150 ms apart and windows 1 s wide). */
const SLACK_MS = 800;

describe('LinkProxy', () => {
  it('caps bandwidth: 100 KB at 200 KB/s takes at least 0.45 s', async () => {
    const p = await startProxy({ bytesPerSecond: 200_000 });
    const c = await dial(p.port);
    const payload = pattern(100_000);
    const t0 = Date.now();
    c.sock.write(payload);
    await c.until(() => c.received >= payload.byteLength, 5000, 'the echo');
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(450);
    expect(took).toBeLessThan(3000);
    expect(c.data.equals(payload)).toBe(true);
  }, 10_000);

  it('shares one budget between connections with sharedBandwidth, round robin', async () => {
    const p = await startProxy({ bytesPerSecond: 200_000, sharedBandwidth: true });
    const [a, b] = [await dial(p.port), await dial(p.port)];
    const t0 = Date.now();
    a.sock.write(pattern(50_000, 1));
    b.sock.write(pattern(50_000, 2));
    const done: number[] = [];
    await Promise.all(
      [a, b].map(async (c) => {
        await c.until(() => c.received >= 50_000, 5000, 'the echo');
        done.push(Date.now() - t0);
      }),
    );
    // 100 KB through one 200 KB/s radio, interleaved: neither finishes early.
    expect(Math.max(...done)).toBeGreaterThanOrEqual(450);
    expect(Math.min(...done)).toBeGreaterThanOrEqual(350);
    expect(a.data.equals(pattern(50_000, 1))).toBe(true);
    expect(b.data.equals(pattern(50_000, 2))).toBe(true);
  }, 10_000);

  it('adds latency in each direction', async () => {
    const p = await startProxy({ latencyMs: 80 });
    const c = await dial(p.port);
    const rtt = await roundTrip(c);
    // Out and back: the one-way delay twice (a little slack for timer rounding).
    expect(rtt).toBeGreaterThanOrEqual(2 * 80 - 5);
    expect(rtt).toBeLessThan(2 * 80 + 500);
    p.setLatency(0);
    expect(await roundTrip(c)).toBeLessThan(80);
  }, 10_000);

  it('stall holds bytes without closing, then delivers all of them in order at the link rate', async () => {
    const p = await startProxy({ bytesPerSecond: 500_000 });
    const c = await dial(p.port);
    await roundTrip(c);
    const before = c.received;
    p.stall();
    expect(p.isStalled).toBe(true);
    const payload = pattern(300_000, 5);
    for (let o = 0; o < payload.byteLength; o += 10_000) c.sock.write(payload.subarray(o, o + 10_000));
    await expectNoEventWithin(400, () => c.received !== before || c.closedAt !== undefined, 'a byte delivered (or the socket closed) while stalled');
    expect(c.received).toBe(before);
    expect(c.closedAt).toBeUndefined();
    expect(p.openConnections).toBe(1);
    // Back-pressure: the proxy read about one socket read, the rest waits in the sender.
    expect(p.bytesUp - 4).toBeLessThanOrEqual(128 * 1024);
    const unstalledAt = Date.now();
    p.unstall();
    await c.until(() => c.received >= before + payload.byteLength, 5000, 'everything after unstall');
    // 300 KB at 500 KB/s: the held bytes do not arrive in one burst.
    expect(Date.now() - unstalledAt).toBeGreaterThanOrEqual(500);
    expect(c.data.subarray(before).equals(payload)).toBe(true);
    expect(c.closedAt).toBeUndefined();
    expect(p.connections).toBe(1);
  }, 10_000);

  it('a stall freezes what is in flight too (latency, both directions)', async () => {
    const p = await startProxy({ latencyMs: 150 });
    const c = await dial(p.port);
    const t0 = Date.now();
    c.sock.write('abc');
    await sleep(50);
    p.stall();
    await sleep(300);
    p.unstall();
    await c.until(() => c.received >= 3, 3000, 'the echo');
    // 2 × 150 ms of latency plus 300 ms frozen.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(600 - 10);
    expect(c.data.toString()).toBe('abc');
  }, 10_000);

  it('cut closes the client socket', async () => {
    const p = await startProxy();
    const c = await dial(p.port);
    await roundTrip(c);
    p.cut();
    await c.until(() => c.closedAt !== undefined, 2000, 'the close');
    expect(p.cuts).toBe(1);
    expect(p.cutLog).toEqual([expect.objectContaining({ dropped: 1, cause: 'manual' })]);
    expect(p.connectionLog[0].closedAt).toBeDefined();
    p.cut();
    expect(p.cuts).toBe(1);
    expect(p.cutLog.length).toBe(2);
  }, 10_000);

  it('takeDown refuses new connections until restore', async () => {
    const p = await startProxy();
    const first = await dial(p.port);
    await roundTrip(first);
    p.takeDown();
    await first.until(() => first.closedAt !== undefined, 2000, 'the cut');
    for (let i = 0; i < 3; i++) {
      const c = await dial(p.port).catch(() => undefined);
      if (!c) continue; // refused outright is fine too
      c.sock.write('ping');
      await c.until(() => c.closedAt !== undefined, 2000, 'the refusal');
      expect(c.received).toBe(0);
    }
    expect(p.connections).toBe(1);
    p.restore();
    const again = await dial(p.port);
    await roundTrip(again);
    expect(p.connections).toBe(2);
  }, 10_000);

  // Steps a second apart: each state lasts long enough to be seen on a loaded machine (a 200 ms window
  // was missed at load 19); the upper bounds allow the same.
  it('runs a schedule at about the right times', async () => {
    const p = await startProxy();
    const a = await dial(p.port);
    await roundTrip(a);
    const t0 = Date.now();
    const done = p.runSchedule([
      { atMs: 3300, action: 'unstall' },
      { atMs: 150, action: 'cut' },
      { atMs: 300, action: 'down' },
      { atMs: 1300, action: 'up' },
      { atMs: 2300, action: 'stall' },
      { atMs: 3500, action: { rateBytesPerSecond: 12_345 } },
      { atMs: 3500, action: { latencyMs: 7 } },
    ]);
    await a.until(() => a.closedAt !== undefined, 2000, 'the scheduled cut');
    expect(a.closedAt! - t0).toBeGreaterThanOrEqual(150 - 5);
    expect(a.closedAt! - t0).toBeLessThan(150 + SLACK_MS);

    await until(() => p.isDown, { what: 'the scheduled down (at 300 ms)', timeoutMs: 2000, intervalMs: 5 });
    const refused = await dial(p.port).catch(() => undefined);
    if (refused) await refused.until(() => refused.closedAt !== undefined, 1000, 'the refusal');
    expect(p.isDown).toBe(true);

    await until(() => !p.isDown, { what: 'the scheduled up (at 1300 ms)', timeoutMs: 3000, intervalMs: 5 });
    const b = await dial(p.port);
    await roundTrip(b);

    await until(() => p.isStalled, { what: 'the scheduled stall (at 2300 ms)', timeoutMs: 3000, intervalMs: 5 });
    b.sock.write('late');
    const before = b.received;
    await b.until(() => b.received >= before + 4, 3000, 'the echo after unstall');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(3300 - 5);
    expect(Date.now() - t0).toBeLessThan(3300 + SLACK_MS);

    expect(await done).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(3500 - 5);
    expect(p.bytesPerSecond).toBe(12_345);
    expect(p.latencyMs).toBe(7);
    expect(p.cutLog.map((c) => c.cause)).toEqual(['schedule', 'down']);
    expect(p.cutLog[0].at - t0).toBeGreaterThanOrEqual(150 - 5);
    expect(p.cutLog[1].at - t0).toBeGreaterThanOrEqual(300 - 5);
    expect(p.cutLog[1].at - t0).toBeLessThan(300 + SLACK_MS);
  }, 20_000);

  it('stop() cancels pending schedule steps', async () => {
    const p = await startProxy();
    const done = p.runSchedule([{ atMs: 5000, action: 'down' }]);
    await p.stop();
    expect(await done).toBe(false);
    expect(p.isDown).toBe(false);
    expect(() => p.runSchedule([{ atMs: 1, action: 'jump' as never }])).toThrow(TypeError);
  }, 10_000);

  it('random cuts come from the seeded PRNG, at intervals within the range', async () => {
    const range: [number, number] = [60, 140];
    const p = await startProxy({ cutEveryMs: range, seed: 42 });
    const t0 = Date.now();
    const c = await dial(p.port);
    await c.until(() => c.closedAt !== undefined, 1000, 'a random cut');
    await observeFor(1000 - (Date.now() - t0), 'the random cuts of the first second');
    p.randomCuts(undefined);
    const at = [t0, ...p.cutLog.map((x) => x.at)];
    const gaps = at.slice(1).map((x, i) => x - at[i]);
    expect(gaps.length).toBeGreaterThanOrEqual(6);
    expect(p.cutLog.every((x) => x.cause === 'random')).toBe(true);
    expect(p.cuts).toBeGreaterThanOrEqual(1);
    const rand = mulberry32(42);
    // A timer never fires early but may fire late on a loaded machine: each gap is at least the
    // PRNG's interval (a few ms of rounding aside) and late by a bounded amount only.
    const LATE_MS = 250;
    for (const g of gaps) {
      const expected = range[0] + rand() * (range[1] - range[0]);
      expect(g).toBeGreaterThanOrEqual(range[0] - 3);
      expect(g).toBeGreaterThanOrEqual(expected - 5);
      expect(g - expected).toBeLessThan(LATE_MS);
    }
    const n = p.cutLog.length;
    await expectNoEventWithin(250, () => p.cutLog.length !== n, 'a random cut after randomCuts(undefined)');
  }, 10_000);

  it('counts bytes in aggregate and per connection; passes a half-close on', async () => {
    const p = await startProxy({ bytesPerSecond: 1_000_000, latencyMs: 5 });
    const sizes = [70_000, 12_345];
    for (const [i, n] of sizes.entries()) {
      const c = await dial(p.port);
      const payload = pattern(n, i);
      c.sock.write(payload);
      await c.until(() => c.received >= n, 5000, 'the echo');
      expect(c.data.equals(payload)).toBe(true);
      c.sock.end();
      await c.until(() => c.closedAt !== undefined, 2000, 'the close after our FIN');
    }
    const total = sizes.reduce((a, b) => a + b, 0);
    expect(p.bytesUp).toBe(total);
    expect(p.bytesDown).toBe(total);
    expect(p.connectionLog.map((r) => [r.up, r.down])).toEqual(sizes.map((n) => [n, n]));
    await until(() => p.connectionLog.every((r) => r.closedAt !== undefined), { what: 'every connection logged as closed', timeoutMs: 2000, intervalMs: 5 });
    expect(p.connectionLog.every((r) => r.closedAt !== undefined && r.closedAt >= r.openedAt)).toBe(true);
    expect(p.openConnections).toBe(0);
  }, 10_000);
});
