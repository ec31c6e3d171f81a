import { describe, expect, it } from 'vitest';
import { LinkEstimator } from '../../device/link-estimator.ts';

const cfg = { minWindow: 2, maxWindow: 64, initialWindow: 8, minIdleMs: 3000 };

/** Simulate a link: chunks arrive `perChunkMs` apart; the first of each request also waits `latencyMs`. */
function drive(perChunkMs: number, latencyMs: number, chunks = 100): LinkEstimator {
  const e = new LinkEstimator(cfg);
  let t = 0;
  let next = 0;
  let first = 0;
  for (let i = 0; i < chunks; i++) {
    if (i === next) {
      const w = e.window;
      e.requested(
        t,
        Array.from({ length: w }, (_, k) => i + k),
      );
      first = i;
      next = i + w;
    }
    t += perChunkMs + (i === first ? latencyMs : 0);
    e.arrived(t, i, 16384);
  }
  return e;
}

describe('LinkEstimator', () => {
  it('starts at the initial window, within bounds', () => {
    const e = new LinkEstimator(cfg);
    expect(e.window).toBe(8);
    expect(e.idleTimeoutMs).toBe(3000);
  });

  it('keeps more chunks outstanding on a fast link than on a slow one', () => {
    const fast = drive(1, 20);
    const slow = drive(4000, 300, 20);
    expect(fast.window).toBeGreaterThan(slow.window);
    expect(slow.window).toBeGreaterThanOrEqual(2);
    expect(fast.window).toBeLessThanOrEqual(64);
  });

  it('on a slow link with a short round trip, a request (at half the window) still carries at least 2 chunks, and the window covers the round trip', () => {
    // 512 kbit/s: a 16 KiB chunk every 256 ms; the round trip is under one chunk's time.
    const e = drive(256, 50);
    expect(Math.floor(e.window / 2)).toBeGreaterThanOrEqual(2);
    expect(e.window).toBeGreaterThanOrEqual(5);
  });

  it('halves the window after a silence and regrows it as chunks arrive', () => {
    const e = drive(1, 20);
    const before = e.window;
    e.timedOut();
    const halved = e.window;
    expect(halved).toBeLessThan(before);
    // Chunks flow again at the same round trip (21 ms) and rate (1 per ms).
    for (let i = 1000; i < 1010; i++) {
      e.requested(100_000 + i, [i]);
      e.arrived(100_021 + i, i, 100);
    }
    expect(e.window).toBeGreaterThan(halved);
  });

  it('waits longer before re-asking on a link with long round trips', () => {
    const slow = drive(4000, 300, 20);
    expect(slow.idleTimeoutMs).toBeGreaterThan(3000);
    const fast = drive(1, 5);
    expect(fast.idleTimeoutMs).toBe(3000);
  });

  it('does not take round-trip samples from chunks asked for twice (Karn)', () => {
    const e = new LinkEstimator(cfg);
    e.requested(0, [0]);
    e.requested(5000, [0]);
    e.arrived(5010, 0, 10);
    expect(e.minRttMs).toBe(0);
    e.requested(6000, [1]);
    e.arrived(6040, 1, 10);
    expect(e.minRttMs).toBe(40);
  });

  it('reports bytes per second over the last 10 s', () => {
    const e = new LinkEstimator(cfg);
    for (let i = 0; i < 10; i++) {
      e.requested(i * 1000, [i]);
      e.arrived(i * 1000 + 500, i, 2000);
    }
    expect(e.bytesPerSecond(9500)).toBe(Math.round((2000 * 10) / 9));
    expect(e.bytesPerSecond(30_000)).toBe(0);
  });
});
