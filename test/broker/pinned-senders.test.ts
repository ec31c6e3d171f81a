/**
 * `fleet broker --unpin-senders`: the signature of a connection the host's BBR pins (a pacing gain of
 * exactly 1, the same estimate, bytes queued, for the hold time) and the close, once per client per
 * cooldown; then over real TCP: a real broker closes a real client's connection when ss (here fed
 * the client's own port) shows it pinned, and the client's reconnect is left alone.
 */
import { promises as fs } from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { PinnedSenders, unpinDecision } from '../../broker/pinned-senders.ts';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { hostCongestionControl, parseSs, type SsConnection } from '../../platform/tcp-senders.ts';
import { createLogger } from '../../util/log.ts';
import { SS } from '../support/ss-sample.ts';
import { until } from '../support/wait.ts';

const c = (peer: string, sendQ: number, bbrBwBps: number | null, pacingGain: number | null): SsConnection => ({ localPort: 1883, peer, peerAddress: peer, peerPort: 1, sendQ, bbrBwBps, pacingGain });
const nobody = (): undefined => undefined;

describe('which connections the host pins (PinnedSenders)', () => {
  it('closes a connection at a gain of 1, one estimate and bytes queued for the hold time, once', () => {
    const s = new PinnedSenders({ holdMs: 15_000, cooldownMs: 600_000, minDrainMs: 5000 });
    const pinned = c('a', 70_000, 11_736, 1);
    for (let t = 0; t < 15_000; t += 1000) expect(s.observe(t, [pinned, c('b', 50_000, 400_000, 1.25)], nobody)).toEqual([]);
    expect(s.observe(15_000, [pinned], nobody)).toEqual([{ connection: pinned, who: 'a', heldMs: 15_000 }]);
    // Closed: the same peer still listed (the socket not gone yet) is not closed again within the cooldown.
    for (let t = 16_000; t <= 40_000; t += 1000) expect(s.observe(t, [pinned], nobody)).toEqual([]);
  });

  it('a break in the signature starts the hold again: another estimate, another gain, nothing queued, gone', () => {
    const s = new PinnedSenders({ holdMs: 3000, cooldownMs: 600_000, minDrainMs: 5000 });
    const breaks = [c('a', 70_000, 12_000, 1), c('a', 70_000, 11_736, 1.25), c('a', 0, 11_736, 1), undefined];
    for (const b of breaks) {
      for (let t = 0; t < 3000; t += 1000) expect(s.observe(t, [c('a', 70_000, 11_736, 1)], nobody)).toEqual([]);
      expect(s.observe(2999, b ? [b] : [], nobody)).toEqual([]);
      // The hold runs from the first sample after the break: 3 s more before a close.
      expect(s.observe(3000, [c('a', 70_000, 11_736, 1)], nobody)).toEqual([]);
      expect(s.observe(5999, [c('a', 70_000, 11_736, 1)], nobody)).toEqual([]);
      const closed = s.observe(6000, [c('a', 70_000, 11_736, 1)], () => `client-${breaks.indexOf(b)}`);
      expect(closed.map((u) => u.who)).toEqual([`client-${breaks.indexOf(b)}`]);
    }
  });

  it('a client is closed at most once per cooldown, whatever connection it comes back on', () => {
    const s = new PinnedSenders({ holdMs: 1000, cooldownMs: 60_000, minDrainMs: 5000 });
    const dev = (): string => 'fleet-device-d1';
    s.observe(0, [c('a', 10_000, 8000, 1)], dev);
    expect(s.observe(1000, [c('a', 10_000, 8000, 1)], dev)).toHaveLength(1);
    // Back on a new connection, pinned again: left alone until the cooldown has passed.
    s.observe(2000, [c('b', 10_000, 9000, 1)], dev);
    expect(s.observe(3000, [c('b', 10_000, 9000, 1)], dev)).toEqual([]);
    expect(s.observe(60_999, [c('b', 10_000, 9000, 1)], dev)).toEqual([]);
    expect(s.observe(61_000, [c('b', 10_000, 9000, 1)], dev)).toHaveLength(1);
  });

  it('only when the bytes queued would take the drain time at the pinned rate: not a stale estimate of hundreds of Mbit/s', () => {
    const s = new PinnedSenders({ holdMs: 1000, cooldownMs: 60_000, minDrainMs: 5000 });
    // 112 KB at a stale 305 Mbit/s (3 ms), 56 KB at 127 kbit/s (3.5 s): left alone. 30 KB at 48 kbit/s (5 s): closed.
    const stale = c('a', 112_370, 304_842_000, 1);
    const quick = c('b', 56_385, 127_000, 1);
    const slow = c('d', 30_000, 48_000, 1);
    for (let t = 0; t <= 5000; t += 1000) {
      const closed = s.observe(t, [stale, quick, slow], nobody).map((u) => u.who);
      expect(closed).toEqual(t === 1000 ? ['d'] : []);
    }
    // The queue grows past the drain time: then it is closed.
    expect(s.observe(6000, [c('b', 80_000, 127_000, 1)], nobody).map((u) => u.who)).toEqual(['b']);
  });

  it('connections not under BBR are never closed (cubic: no estimate, no gain)', () => {
    const s = new PinnedSenders({ holdMs: 1000, cooldownMs: 60_000, minDrainMs: 5000 });
    const conns = parseSs(SS).filter((x) => x.bbrBwBps === null);
    expect(conns).toHaveLength(1);
    for (let t = 0; t <= 10_000; t += 1000) expect(s.observe(t, conns, nobody)).toEqual([]);
  });
});

let dir: string | undefined;
let broker: RunningBroker | undefined;
let client: mqtt.MqttClient | undefined;
afterEach(async () => {
  await client?.endAsync(true);
  client = undefined;
  await broker?.close();
  broker = undefined;
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('--unpin-senders auto|on|off: whether the watch runs (unpinDecision)', () => {
  it('auto: on under bbr with ss; off under any other congestion control, or without ss, saying why', () => {
    expect(unpinDecision('auto', { congestion: 'bbr', ss: true }).on).toBe(true);
    expect(unpinDecision('auto', { congestion: 'cubic', ss: true })).toEqual({ on: false, why: "this host's TCP congestion control is cubic, not bbr: nothing to unpin" });
    expect(unpinDecision('auto', { congestion: undefined, ss: true }).on).toBe(false);
    const noSs = unpinDecision('auto', { congestion: 'bbr', ss: false });
    expect(noSs.on).toBe(false);
    expect(noSs.why).toMatch(/apt-get install iproute2/);
  });

  it('on and off are what they say, whatever the host', () => {
    for (const congestion of ['bbr', 'cubic', undefined]) {
      for (const ss of [true, false]) {
        expect(unpinDecision('on', { congestion, ss }).on).toBe(true);
        expect(unpinDecision('off', { congestion, ss }).on).toBe(false);
      }
    }
  });
});

describe('fleet broker --unpin-senders (real broker, real TCP)', () => {
  it('closes the connection ss shows pinned; the client reconnects on a fresh one, which is left alone', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'unpin-'));
    const lines: string[] = [];
    const pinned: { port?: number } = {};
    // ss as it would print the broker's side of the client's connection, pinned at 11.7 kbit/s with 70 KB queued.
    const read = async (): Promise<string> =>
      pinned.port === undefined
        ? ''
        : `Recv-Q Send-Q Local Address:Port  Peer Address:Port Process\n0      70000      127.0.0.1:${broker!.port}    127.0.0.1:${pinned.port}\n\t bbr wscale:7,7 rto:204 bbr:(bw:11736bps,mrtt:0.065,pacing_gain:1,cwnd_gain:2) send 1bps\n`;
    broker = await startBroker({
      port: 0,
      dataDir: dir,
      persistence: 'memory',
      updateServer: false,
      unpinSenders: { read, everyMs: 100, holdMs: 500 },
      log: createLogger('broker', 'info', (l) => lines.push(l)),
    });
    client = await mqtt.connectAsync(broker.url, { clientId: 'fleet-device-d1', protocolVersion: 4, reconnectPeriod: 200 });
    const first = (client.stream as net.Socket).localPort;
    let closes = 0;
    let connects = 0;
    client.on('close', () => closes++);
    client.on('connect', () => connects++);
    pinned.port = first;
    await until(() => connects === 1, { timeoutMs: 10_000, what: 'the client to be closed and to reconnect' });
    expect(closes).toBeGreaterThanOrEqual(1);
    const second = (client.stream as net.Socket).localPort;
    expect(second).not.toBe(first);
    const line = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => String(l.msg).startsWith('resetting a connection'));
    expect(line).toMatchObject({ client: 'fleet-device-d1', kbit: 12, queuedBytes: 70000 });
    // The fresh connection is not pinned (ss still names the old port): it stays up.
    await new Promise((r) => setTimeout(r, 1500));
    expect(connects).toBe(1);
    expect(client.connected).toBe(true);
  });

  it("auto (fleet broker's default): the watch runs when this host's congestion control is bbr; without ss the broker starts with it off", async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'unpin-'));
    const start = () => startBroker({ port: 0, dataDir: dir!, persistence: 'memory', updateServer: false, unpinSenders: 'auto', log: createLogger('broker', 'silent') });
    const b = await start();
    try {
      expect(b.unpinning).toBe(hostCongestionControl() === 'bbr');
    } finally {
      await b.close();
    }
    const searchPath = process.env.PATH;
    process.env.PATH = path.join(dir, 'no-such-bin');
    try {
      const noSs = await start();
      expect(noSs.unpinning).toBe(false);
      await noSs.close();
    } finally {
      process.env.PATH = searchPath;
    }
  });

  it('without ss on the host, the option is refused at start, naming what to install', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'unpin-'));
    const searchPath = process.env.PATH;
    process.env.PATH = path.join(dir, 'no-such-bin');
    try {
      await expect(startBroker({ port: 0, dataDir: dir, persistence: 'memory', updateServer: false, unpinSenders: true, log: createLogger('broker', 'silent') })).rejects.toThrow(
        /--unpin-senders needs Linux and the ss command \(iproute2/,
      );
    } finally {
      process.env.PATH = searchPath;
    }
  });
});
