/** The waiting helpers the suites rely on: they return on the event and fail saying what they waited for. */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ManualClock } from './clock.ts';
import { expectNoEventWithin, nextEvent, until } from './wait.ts';

describe('until', () => {
  it('returns the first accepted value, as soon as it is there', async () => {
    let n = 0;
    setTimeout(() => (n = 3), 30);
    const t0 = Date.now();
    expect(await until(() => (n > 0 ? { n } : undefined), { what: 'n set' })).toEqual({ n: 3 });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(await until(() => n, { what: 'n', accept: (v) => v === 3 })).toBe(3);
  });

  it('times out naming what it waited for, the last value seen and the context', async () => {
    const err = await until(() => ({ state: 'idle' as string }), { what: 'dev-1 ok', timeoutMs: 100, accept: (s) => s.state === 'ok', context: () => 'log: x' }).catch((e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/^timed out after 100 ms waiting for dev-1 ok; last seen: \{"state":"idle"\}; log: x$/);
  });

  it('passes on an error the probe throws', async () => {
    await expect(
      until(
        () => {
          throw new Error('child exited');
        },
        { what: 'x' },
      ),
    ).rejects.toThrow('child exited');
  });
});

describe('expectNoEventWithin', () => {
  it('resolves after the window when nothing happened', async () => {
    const t0 = Date.now();
    await expectNoEventWithin(100, () => false, 'a message');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(95);
  });

  it('fails as soon as it happens, with what it saw', async () => {
    const got: string[] = [];
    setTimeout(() => got.push('forged'), 20);
    const t0 = Date.now();
    await expect(expectNoEventWithin(10_000, () => got[0], 'forged status')).rejects.toThrow('expected no forged status within 10000 ms, but saw: "forged"');
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});

describe('nextEvent', () => {
  it('resolves with the first matching event and stops listening', async () => {
    const e = new EventEmitter();
    const p = nextEvent<[string]>(e, 'client', { what: 'b connecting', filter: (id) => id === 'b' });
    e.emit('client', 'a');
    e.emit('client', 'b');
    expect(await p).toEqual(['b']);
    expect(e.listenerCount('client')).toBe(0);
  });

  it('times out naming the event', async () => {
    await expect(nextEvent(new EventEmitter(), 'close', { what: 'the close', timeoutMs: 50 })).rejects.toThrow("timed out after 50 ms waiting for the close (event 'close')");
  });
});

describe('ManualClock', () => {
  it('fires timers in order as time is advanced, never on its own', async () => {
    const c = new ManualClock(0);
    const fired: string[] = [];
    c.setTimeout(() => fired.push('b'), 200);
    c.setTimeout(() => fired.push('a'), 100);
    const gone = c.setTimeout(() => fired.push('x'), 150);
    c.clearTimeout(gone);
    await c.advance(99);
    expect(fired).toEqual([]);
    await c.advance(101);
    expect(fired).toEqual(['a', 'b']);
    expect(c.now()).toBe(200);
  });
});
