import os from 'node:os';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { GracefulStop, type GracefulStopOptions } from '../../util/graceful-stop.ts';
import { createLogger } from '../../util/log.ts';

/** util/graceful-stop.ts in-process: SIGUSR2 stands in for SIGINT/SIGTERM (emitted, not sent), exit is recorded. */
const SIG = 'SIGUSR2' as const;
const stops: GracefulStop[] = [];
afterEach(() => {
  for (const s of stops.splice(0)) s.dispose();
});

function harness(o: Partial<GracefulStopOptions> = {}): { stop: GracefulStop; lines: Array<Record<string, unknown>>; exited: Promise<number> } {
  const lines: Array<Record<string, unknown>> = [];
  let exit: (code: number) => void = () => undefined;
  const exited = new Promise<number>((r) => (exit = r));
  const stop = new GracefulStop({ timeoutMs: 300, log: createLogger('t', 'debug', (l) => lines.push(JSON.parse(l) as Record<string, unknown>)), signals: [SIG], exit, ...o });
  stops.push(stop);
  return { stop, lines, exited };
}

const never = (): Promise<void> => new Promise(() => undefined);
const ends = (lines: Array<Record<string, unknown>>): Array<Record<string, unknown>> => lines.filter((l) => /^stop(ped| abandoned)/.test(String(l.msg)));

describe('GracefulStop', () => {
  it('runs the steps last-added first and exits with the signal exit code when all are done', async () => {
    const { stop, lines, exited } = harness({ signalExitCode: 7 });
    const order: string[] = [];
    stop.add({ name: 'a', run: () => void order.push('a') }).add({ name: 'b', run: async () => void order.push('b') });
    process.emit(SIG);
    expect(await exited).toBe(7);
    expect(order).toEqual(['b', 'a']);
    expect(ends(lines)).toEqual([expect.objectContaining({ msg: 'stopped', reason: `signal ${SIG}` })]);
  });

  it('abandons a required step at the bound, skips the rest, exits 1 and names both in one line', async () => {
    const { stop, lines, exited } = harness();
    stop.add({ name: 'later', optional: true, run: () => undefined }).add({ name: 'stuck', run: never });
    const t0 = Date.now();
    process.emit(SIG);
    expect(await exited).toBe(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(ends(lines)).toEqual([expect.objectContaining({ level: 'error', msg: 'stop abandoned: required work left undone', undone: ['stuck (timeout)', 'later (skipped, optional)'] })]);
  });

  it('skips the steps after one that ran out the bound, even when its timer fired before the clock read the deadline', async () => {
    const { stop, lines, exited } = harness();
    let ran = false;
    // From when the stuck step starts, after the stop has read its deadline, the clock lags the timers by 5 ms.
    let lag = 0;
    const stuck = (): Promise<void> => {
      lag = 5;
      return new Promise<void>(() => undefined);
    };
    stop.add({ name: 'later', optional: true, run: () => void (ran = true) }).add({ name: 'stuck', run: stuck });
    const realNow = Date.now.bind(Date);
    const spy = vi.spyOn(Date, 'now').mockImplementation(() => realNow() - lag);
    try {
      process.emit(SIG);
      expect(await exited).toBe(1);
    } finally {
      spy.mockRestore();
    }
    expect(ran).toBe(false);
    expect(ends(lines)).toEqual([expect.objectContaining({ level: 'error', undone: ['stuck (timeout)', 'later (skipped, optional)'] })]);
  });

  it('gives an optional step its own cap, runs the next steps and exits 0', async () => {
    const { stop, lines, exited } = harness({ timeoutMs: 5000 });
    let closed = false;
    stop.add({ name: 'close', run: () => void (closed = true) }).add({ name: 'presence', optional: true, timeoutMs: 50, run: never });
    const t0 = Date.now();
    process.emit(SIG);
    expect(await exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(closed).toBe(true);
    expect(ends(lines)).toEqual([expect.objectContaining({ level: 'warn', undone: ['presence (timeout, optional)'] })]);
  });

  it('names a step that failed', async () => {
    const { stop, lines, exited } = harness();
    stop.add({ name: 'store', run: () => Promise.reject(new Error('disk gone')) });
    process.emit(SIG);
    expect(await exited).toBe(1);
    expect(ends(lines)[0].undone).toEqual(['store (failed: Error: disk gone)']);
  });

  it('exits at once on a second signal, naming what was still to do', async () => {
    const { stop, lines, exited } = harness({ timeoutMs: 60_000 });
    stop.add({ name: 'close', run: () => undefined }).add({ name: 'stuck', run: never });
    process.emit(SIG);
    await new Promise((r) => setTimeout(r, 20));
    const t0 = Date.now();
    process.emit(SIG);
    expect(await exited).toBe(128 + os.constants.signals[SIG]);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(lines.find((l) => l.msg === 'second signal: exiting at once')?.undone).toEqual(['stuck', 'close']);
  });

  it('stop(reason, code) keeps a non-zero code of the command and shares one run', async () => {
    const { stop, exited } = harness();
    let runs = 0;
    stop.add({ name: 'x', run: () => void runs++ });
    await stop.run('first');
    void stop.stop('done', 2);
    expect(await exited).toBe(2);
    expect(runs).toBe(1);
  });
});
