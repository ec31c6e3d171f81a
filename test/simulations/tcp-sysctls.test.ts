import { describe, expect, it } from 'vitest';
import { giveUpMs, retries2ForRtoMax } from '../../simulations/tcp-sysctls.ts';

describe('the give-up time of a connection with a capped retransmission backoff', () => {
  it('is the ~924.6 s of tcp(7) with the defaults (tcp_retries2 15, 120 s cap)', () => {
    expect(giveUpMs(15, 120_000)).toBe(924_600);
  });

  it('is ~14.4 s with the defaults retries and a 1 s cap (the netns-link root test saw a connection time out after 15.0 s)', () => {
    expect(giveUpMs(15, 1000)).toBe(14_400);
  });

  it('is the doubling sum while the backoff is below the cap', () => {
    expect(giveUpMs(2, 120_000)).toBe(200 + 400 + 800);
  });

  it('retries2ForRtoMax keeps the default give-up time, within the kernel bound of 255', () => {
    expect(retries2ForRtoMax(120_000)).toBe(15);
    expect(giveUpMs(retries2ForRtoMax(10_000), 10_000)).toBeGreaterThanOrEqual(924_600);
    expect(giveUpMs(retries2ForRtoMax(10_000) - 1, 10_000)).toBeLessThan(924_600);
    expect(retries2ForRtoMax(1000)).toBe(255);
  });
});
