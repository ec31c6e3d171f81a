import { describe, expect, it } from 'vitest';
import { startSteps, startStepsOnto, type Step } from '../../platform/steps.ts';

interface Ctx {
  events: string[];
}

function step(name: string, o: { failStart?: boolean; failStop?: boolean; when?: boolean } = {}): Step<Ctx> {
  return {
    name,
    when: o.when === undefined ? undefined : () => o.when!,
    start(ctx) {
      if (o.failStart) throw new Error(`${name} cannot start`);
      ctx.events.push(`start ${name}`);
    },
    async stop(ctx) {
      ctx.events.push(`stop ${name}`);
      if (o.failStop) throw new Error(`${name} cannot stop`);
    },
  };
}

describe('startSteps', () => {
  it('starts in order and stops in reverse, once however often stop is called', async () => {
    const ctx: Ctx = { events: [] };
    const s = await startSteps([step('a'), step('b'), step('skipped', { when: false }), step('c')], ctx);
    expect(s.names).toEqual(['a', 'b', 'c']);
    await Promise.all([s.stop(), s.stop()]);
    await s.stop();
    expect(ctx.events).toEqual(['start a', 'start b', 'start c', 'stop c', 'stop b', 'stop a']);
  });

  it('a failing step undoes the ones before it, in reverse, and its error is thrown on', async () => {
    const ctx: Ctx = { events: [] };
    await expect(startSteps([step('a'), step('b'), step('c', { failStart: true }), step('d')], ctx)).rejects.toThrow('c cannot start');
    expect(ctx.events).toEqual(['start a', 'start b', 'stop b', 'stop a']);
  });

  it('a step that fails to stop does not keep the others running; its error is reported and thrown after', async () => {
    const ctx: Ctx = { events: [] };
    const warned: unknown[] = [];
    const s = await startSteps([step('a'), step('b', { failStop: true }), step('c')], ctx, { warn: (m, f) => warned.push({ m, ...f }) });
    await expect(s.stop()).rejects.toThrow('b cannot stop');
    expect(ctx.events.slice(3)).toEqual(['stop c', 'stop b', 'stop a']);
    expect(warned).toEqual([{ m: 'a step failed to stop', step: 'b', error: 'b cannot stop' }]);
  });
});

describe('startSteps undo', () => {
  it('reports the failed start, not an undo step that failed to stop', async () => {
    const ctx: Ctx = { events: [] };
    const warned: unknown[] = [];
    await expect(startSteps([step('a', { failStop: true }), step('b', { failStart: true })], ctx, { warn: (m, f) => warned.push(f) })).rejects.toThrow('b cannot start');
    expect(ctx.events).toEqual(['start a', 'stop a']);
    expect(warned).toHaveLength(1);
  });
});

describe('startStepsOnto', () => {
  it('hands each stop to the stack as soon as its step has started, with its stop options', async () => {
    const ctx: Ctx = { events: [] };
    const stack: { name: string; optional?: boolean; timeoutMs?: number; run: () => unknown }[] = [];
    const last: Step<Ctx> = {
      name: 'last',
      start: (c) => {
        // The stops of the steps before are on the stack while this one starts.
        c.events.push(`stack holds ${stack.map((s) => s.name).join(',')}`);
        throw new Error('last cannot start');
      },
    };
    const quiet: Step<Ctx> = { ...step('quiet'), optional: true, stopTimeoutMs: 1000 };
    await expect(startStepsOnto([step('a'), quiet, step('never', { when: false }), last], ctx, { add: (s) => stack.push(s) })).rejects.toThrow('last cannot start');
    expect(ctx.events).toEqual(['start a', 'start quiet', 'stack holds a,quiet']);
    expect(stack.map(({ name, optional, timeoutMs }) => ({ name, optional, timeoutMs }))).toEqual([
      { name: 'a', optional: undefined, timeoutMs: undefined },
      { name: 'quiet', optional: true, timeoutMs: 1000 },
    ]);
    for (const s of stack.reverse()) await s.run();
    expect(ctx.events.slice(3)).toEqual(['stop quiet', 'stop a']);
  });
});
