/**
 * A silent socket is not always a dead link: the watch probes with a fresh
 * connection after a silence bounded by the round trip, and reconnects only
 * when the probe connects and the old socket is still silent. A slow link
 * whose bytes keep coming is never torn down; a cut link is never reconnected
 * into. Manual clock; the probe's answer is the test's.
 */
import { describe, expect, it } from 'vitest';
import { SilenceWatch } from '../../device/silence-watch.ts';
import { createLogger, silentLogger, type Logger } from '../../util/log.ts';
import { ManualClock } from '../support/clock.ts';

/** `unmeasured`: no chunk has come yet (the other cases are mid-download: one has). */
/** `answering`: answers are counted, and each nudge is answered (a PINGRESP) 300 ms later, or never. */
function rig(o: { linkUp: boolean; rttMs?: number; chunkMs?: number; maxReconnects?: number; nudgeMs?: number; unmeasured?: boolean; budgetBytes?: number; answering?: boolean; log?: Logger }) {
  const clock = new ManualClock();
  /** handshakeMs: how long the probe's handshake takes (a queue ahead of it on a busy link). */
  const s = { bytes: 0, cost: 0, waiting: true, linkUp: o.linkUp, handshakeMs: 0, probes: [] as number[], reconnects: [] as string[], nudges: [] as number[], pongs: 0, answering: o.answering === true };
  const w = new SilenceWatch({
    clock,
    log: o.log ?? silentLogger,
    bytesIn: () => s.bytes,
    waiting: () => s.waiting,
    rttMs: () => o.rttMs ?? 0,
    chunkMs: () => o.chunkMs ?? 0,
    probe: (ms) => {
      s.probes.push(ms);
      if (s.handshakeMs === 0) return Promise.resolve(s.linkUp);
      return new Promise((r) => clock.setTimeout(() => r(s.linkUp), s.handshakeMs));
    },
    reconnect: (why) => s.reconnects.push(why),
    nudge:
      o.nudgeMs === undefined
        ? undefined
        : () => {
            s.nudges.push(clock.now());
            if (s.answering) clock.setTimeout(() => s.pongs++, 300);
          },
    nudgeMs: o.nudgeMs,
    answers: o.answering === undefined ? undefined : () => s.pongs,
    minSilenceMs: 2000,
    maxReconnects: o.maxReconnects ?? 100,
    costBytes: o.budgetBytes === undefined ? undefined : () => s.cost,
    budgetBytes: o.budgetBytes,
  });
  if (!o.unmeasured) w.delivered();
  return { clock, s, w };
}

describe('silence watch: a broker that answers is busy, not gone', () => {
  it('nudges answered (a PINGRESP each) while no chunk comes: no reconnect, however long', async () => {
    const { clock, s, w } = rig({ linkUp: true, nudgeMs: 1000, answering: true });
    await clock.advance(60_000);
    expect(s.nudges.length).toBeGreaterThan(3);
    expect(s.reconnects).toEqual([]);
    w.stop();
  });

  it('nudges unanswered: the same reconnect, once a nudge has waited the least silence for its answer', async () => {
    const { clock, s, w } = rig({ linkUp: true, nudgeMs: 1000, answering: false });
    await clock.advance(2900);
    expect(s.reconnects).toEqual([]);
    await clock.advance(400);
    expect(s.reconnects.length).toBe(1);
    w.stop();
  });

  it('answers that stop: reconnects after the least silence with no answer in it', async () => {
    const { clock, s, w } = rig({ linkUp: true, nudgeMs: 1000, answering: true });
    await clock.advance(10_000);
    expect(s.reconnects).toEqual([]);
    s.answering = false;
    await clock.advance(10_000);
    expect(s.reconnects.length).toBeGreaterThanOrEqual(1);
    w.stop();
  });
});

describe('silence watch: reconnect when the connection is silent while the link is up', () => {
  it('a silent socket on a working link: one probe, then one reconnect after the least silence', async () => {
    const { clock, s, w } = rig({ linkUp: true });
    await clock.advance(1900);
    expect(s.probes).toEqual([]);
    await clock.advance(400);
    expect(s.probes.length).toBe(1);
    expect(s.reconnects.length).toBe(1);
    expect(s.reconnects[0]).toMatch(/silent for 2\d{3} ms/);
    w.stop();
  });

  it('a slow link whose bytes keep coming (a segment every 0.5 s: 23 kbit/s) is never probed nor torn down', async () => {
    const { clock, s, w } = rig({ linkUp: true });
    for (let k = 0; k < 120; k++) {
      await clock.advance(500);
      s.bytes += 1448;
    }
    expect(s.probes).toEqual([]);
    expect(s.reconnects).toEqual([]);
    w.stop();
  });

  it('a cut link: probes again and again, no reconnect until a probe connects', async () => {
    const { clock, s, w } = rig({ linkUp: false });
    await clock.advance(8000);
    expect(s.probes.length).toBeGreaterThan(5);
    expect(s.reconnects).toEqual([]);
    s.linkUp = true;
    await clock.advance(300);
    expect(s.reconnects.length).toBe(1);
    w.stop();
  });

  it('a connection made by someone else (a reset, then the transport reconnected) is silent only from its connect', async () => {
    const { clock, s, w } = rig({ linkUp: false });
    // The old connection: silent 10 s, the link cut (probes fail), then reset by the peer.
    await clock.advance(10_000);
    expect(s.reconnects).toEqual([]);
    s.linkUp = true;
    w.connected();
    // A fresh connection is not torn down for the old one's silence: it gets the least silence of its own.
    await clock.advance(1500);
    expect(s.reconnects).toEqual([]);
    await clock.advance(1000);
    expect(s.reconnects.length).toBe(1);
    w.stop();
  });

  it('nothing asked for: silence is not suspicious', async () => {
    const { clock, s, w } = rig({ linkUp: true });
    s.waiting = false;
    await clock.advance(30_000);
    expect(s.probes).toEqual([]);
    w.stop();
  });

  it('the least silence grows with the round trip, and doubles after a reconnect that brought no chunk', async () => {
    const { clock, s, w } = rig({ linkUp: true, rttMs: 1000 });
    expect(w.silenceNeededMs).toBe(4000);
    await clock.advance(3900);
    expect(s.reconnects).toEqual([]);
    await clock.advance(400);
    expect(s.reconnects.length).toBe(1);
    expect(w.silenceNeededMs).toBe(8000);
    await clock.advance(7500);
    expect(s.reconnects.length).toBe(1);
    await clock.advance(500);
    expect(s.reconnects.length).toBe(2);
    // One chunk now and then does not pay a reconnect back; a run of them does.
    w.delivered();
    expect(w.silenceNeededMs).toBe(16_000);
    for (let k = 0; k < 7; k++) w.delivered();
    expect(w.silenceNeededMs).toBe(4000);
    w.stop();
  });

  it('a connection that gets a chunk only every 4 s (a link shared by ten devices under loss) waits twice that before a probe', async () => {
    const { clock, s, w } = rig({ linkUp: true, chunkMs: 4000 });
    expect(w.silenceNeededMs).toBe(8000);
    await clock.advance(7900);
    expect(s.probes).toEqual([]);
    await clock.advance(400);
    expect(s.reconnects.length).toBe(1);
    w.stop();
  });

  it('a rate that falls to nothing (no chunk in the rate window) keeps the last chunk time, not the least silence', async () => {
    const o = { linkUp: true, chunkMs: 4000 };
    const { clock, s, w } = rig(o);
    expect(w.silenceNeededMs).toBe(8000);
    o.chunkMs = 0;
    expect(w.silenceNeededMs).toBe(8000);
    await clock.advance(7900);
    expect(s.probes).toEqual([]);
    w.stop();
  });

  it('stops at its reconnect cap: after that, a silence is left to TCP (no probe, no reconnect)', async () => {
    const { clock, s, w } = rig({ linkUp: true, maxReconnects: 2 });
    await clock.advance(2300);
    expect(s.reconnects.length).toBe(1);
    for (let k = 0; k < 8; k++) w.delivered();
    await clock.advance(2300);
    expect(s.reconnects.length).toBe(2);
    for (let k = 0; k < 8; k++) w.delivered();
    const probes = s.probes.length;
    await clock.advance(60_000);
    expect(s.reconnects.length).toBe(2);
    expect(s.probes.length).toBe(probes);
    w.stop();
  });

  it('before the first chunk (round trip and rate unknown: ten devices starting at once share the link) the least silence is four times longer', async () => {
    const { clock, s, w } = rig({ linkUp: true, unmeasured: true });
    expect(w.silenceNeededMs).toBe(8000);
    await clock.advance(7900);
    expect(s.probes).toEqual([]);
    await clock.advance(300);
    expect(s.reconnects.length).toBe(1);
    w.stop();
  });

  it('a trickle (one segment every 1.5 s: a peer deep in backoff) is silence: probed and reconnected', async () => {
    const { clock, s, w } = rig({ linkUp: true });
    for (let k = 0; k < 4; k++) {
      await clock.advance(1500);
      s.bytes += 1448;
    }
    expect(s.reconnects.length).toBe(1);
    w.stop();
  });

  it('bytes that arrive while the probe is out cancel the reconnect', async () => {
    const { clock, s, w } = rig({ linkUp: true });
    let answer: (up: boolean) => void = () => undefined;
    (w as unknown as { o: { probe: () => Promise<boolean> } }).o.probe = () => new Promise((r) => (answer = r));
    await clock.advance(2300);
    s.bytes += 2 * 1448;
    answer(true);
    await clock.advance(10);
    expect(s.reconnects).toEqual([]);
    w.stop();
  });

  it('nudges after the least silence and again at each doubling of it, from the start after bytes arrive', async () => {
    const { clock, s, w } = rig({ linkUp: false, nudgeMs: 500 });
    const t0 = clock.now();
    await clock.advance(400);
    expect(s.nudges).toEqual([]);
    await clock.advance(3800);
    // 500, 1000, 2000 and 4000 ms of silence (the watch looks every 250 ms).
    expect(s.nudges.map((t) => t - t0)).toEqual([500, 1000, 2000, 4000]);
    s.bytes += 2 * 1448;
    // The next look (at 4250 ms) sees them: the silence starts again there.
    await clock.advance(50);
    const t1 = clock.now();
    await clock.advance(1000);
    expect(s.nudges.slice(4).map((t) => t - t1)).toEqual([500, 1000]);
    w.stop();
  });

  it('no nudge while bytes keep coming, nor when nothing is asked for; the first waits for twice the round trip', async () => {
    const slow = rig({ linkUp: true, nudgeMs: 500 });
    for (let k = 0; k < 20; k++) {
      await slow.clock.advance(250);
      slow.s.bytes += 2 * 1448;
    }
    expect(slow.s.nudges).toEqual([]);
    slow.s.waiting = false;
    await slow.clock.advance(10_000);
    expect(slow.s.nudges).toEqual([]);
    slow.w.stop();
    const far = rig({ linkUp: false, nudgeMs: 500, rttMs: 600 });
    await far.clock.advance(1000);
    expect(far.s.nudges).toEqual([]);
    await far.clock.advance(250);
    expect(far.s.nudges.length).toBe(1);
    far.w.stop();
  });

  it('reconnects only while the cost fits the byte budget: not with 12 KB of a frame under way, yes between frames, then no more once spent', async () => {
    const { clock, s, w } = rig({ linkUp: true, budgetBytes: 3000 });
    // Silent in the middle of a frame: a reconnect would throw 12 KB away.
    s.cost = 12_000;
    await clock.advance(10_000);
    expect(s.probes).toEqual([]);
    expect(s.reconnects).toEqual([]);
    // Between frames (only the retained messages come again): it goes.
    s.cost = 1100;
    await clock.advance(300);
    expect(s.reconnects.length).toBe(1);
    expect(w.spentBytes).toBe(1100);
    for (let k = 0; k < 8; k++) w.delivered();
    await clock.advance(2300);
    expect(s.reconnects.length).toBe(2);
    for (let k = 0; k < 8; k++) w.delivered();
    // 2200 spent of 3000: another 1100 does not fit.
    await clock.advance(30_000);
    expect(s.reconnects.length).toBe(2);
    w.stop();
  });
});

describe('silence watch: a long wait for a chunk says what held it (debug)', () => {
  const logged = () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = createLogger('watch', 'debug', (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
    return { log, waits: () => lines.filter((l) => l.msg === 'no chunk for a long while') };
  };

  it('a trickle of segments and no chunk: one line per gap, held by the trickle, and no probe', async () => {
    const { log, waits } = logged();
    const { clock, s, w } = rig({ linkUp: true, log });
    for (let t = 0; t < 30_000; t += 1500) {
      s.bytes += 2500;
      await clock.advance(1500);
    }
    expect(s.probes).toEqual([]);
    expect(waits().length).toBe(1);
    expect(waits()[0]).toMatchObject({ held: 'bytes-trickle' });
    expect(waits()[0].gapMs).toBeGreaterThanOrEqual(10_000);
    // A chunk starts a new gap, reported again once long.
    w.delivered();
    for (let t = 0; t < 12_000; t += 1500) {
      s.bytes += 2500;
      await clock.advance(1500);
    }
    expect(waits().length).toBe(2);
    w.stop();
  });

  it('a silence past the byte budget: held by the budget', async () => {
    const { log, waits } = logged();
    const { clock, s, w } = rig({ linkUp: true, log, budgetBytes: 500 });
    s.cost = 1000;
    await clock.advance(12_000);
    expect(s.reconnects).toEqual([]);
    expect(waits()).toMatchObject([{ held: 'budget' }]);
    w.stop();
  });

  it('nothing asked for: no line, however long', async () => {
    const { log, waits } = logged();
    const { clock, s, w } = rig({ linkUp: true, log });
    s.waiting = false;
    await clock.advance(30_000);
    expect(waits()).toEqual([]);
    w.stop();
  });
});
