import { describe, expect, it } from 'vitest';
import { AgentTimers } from '../../device/agent-timers.ts';
import { ManualClock } from '../support/clock.ts';

describe('agent timers', () => {
  it('retries back off 30 s, 60 s, 120 s … up to 30 min, and start again after a success', async () => {
    const clock = new ManualClock();
    const t = new AgentTimers(clock, 30_000);
    const delays = Array.from({ length: 9 }, () => t.retryLater(() => undefined));
    expect(delays).toEqual([30_000, 60_000, 120_000, 240_000, 480_000, 960_000, 1_800_000, 1_800_000, 1_800_000]);
    t.succeeded();
    expect(t.retryLater(() => undefined)).toBe(30_000);
    t.clear();
  });

  it('only the latest retry fires; clear() cancels it', async () => {
    const clock = new ManualClock();
    const t = new AgentTimers(clock, 1000);
    const fired: string[] = [];
    t.retryLater(() => fired.push('first'));
    t.retryLater(() => fired.push('second'));
    await clock.advance(5000);
    expect(fired).toEqual(['second']);
    t.retryLater(() => fired.push('third'));
    t.clear();
    await clock.advance(60_000);
    expect(fired).toEqual(['second']);
  });

  it('the watchdog ticks every period until its tick says stop, or it is stopped or replaced', async () => {
    const clock = new ManualClock();
    const t = new AgentTimers(clock, 1000);
    let a = 0;
    t.watch(1000, () => ++a < 3);
    await clock.advance(10_000);
    expect(a).toBe(3);
    let b = 0;
    let c = 0;
    t.watch(1000, () => (++b, true));
    await clock.advance(2500);
    t.watch(1000, () => (++c, true));
    await clock.advance(2500);
    expect([b, c]).toEqual([2, 2]);
    t.stopWatch();
    await clock.advance(5000);
    expect(c).toBe(2);
  });
});
