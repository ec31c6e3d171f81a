import { afterEach, describe, expect, it } from 'vitest';
import { Topics } from '../../protocol/topics.ts';
import { RolloutController } from '../../rollout/controller.ts';
import { parsePlan, type RolloutPlan } from '../../rollout/plan.ts';
import { parseRolloutStatus, rolloutControlTopic, type RolloutEvent, type RolloutStatus } from '../../rollout/status.ts';
import { silentLogger } from '../../util/log.ts';
import { flush, ManualClock } from '../support/clock.ts';
import { BASE, deviceStatus, fakeReleases, KEY, MemoryBroker, MemoryTransport, TARGET } from './fakes.ts';

const topics = new Topics();
const wave = (group: string, o: Record<string, unknown> = {}): Record<string, unknown> => ({
  group,
  successThreshold: 1,
  failureThreshold: { count: 1 },
  soakSeconds: 5,
  timeoutSeconds: 60,
  offline: 'block',
  ...o,
});
const makePlan = (waves: Array<Record<string, unknown>>, id = 'r1'): RolloutPlan => parsePlan({ id, model: 'm', updates: ['u.cbor'], waves });

interface Rig {
  broker: MemoryBroker;
  clock: ManualClock;
  rel: ReturnType<typeof fakeReleases>;
  events: RolloutEvent[];
  ctl: RolloutController;
  start(): Promise<RolloutController>;
}

const running: RolloutController[] = [];
afterEach(async () => {
  for (const c of running.splice(0)) await c.stop();
});

function rig(plan: RolloutPlan, broker = new MemoryBroker(), clock = new ManualClock()): Rig {
  const rel = fakeReleases(broker, topics);
  const events: RolloutEvent[] = [];
  const make = (): RolloutController => {
    const c = new RolloutController(
      { plan, payloads: { payloads: [], fullModel: undefined, target: TARGET }, keys: [KEY], settleMs: 0, tickMs: 1000 },
      {
        transport: new MemoryTransport(broker),
        topics,
        clock,
        publish: rel.publish,
        rollback: rel.rollback,
        log: silentLogger,
        onEvent: (e) => void events.push(e),
      },
    );
    running.push(c);
    return c;
  };
  const r: Rig = {
    broker,
    clock,
    rel,
    events,
    ctl: make(),
    async start() {
      await r.ctl.start();
      await flush();
      return r.ctl;
    },
  };
  return r;
}

const retainedStatus = (b: MemoryBroker, id = 'r1'): RolloutStatus => parseRolloutStatus(b.retained.get(topics.rolloutStatus(id))!)!;
const dev = (r: Rig, id: string, group: string, state: Parameters<typeof deviceStatus>[4], o: Parameters<typeof deviceStatus>[5] = {}): void => deviceStatus(topics, r.broker, id, group, state, o);
const okOn = (r: Rig, id: string, group: string): void => dev(r, id, group, 'ok', { running: TARGET, target: TARGET, seq: r.rel.current.get(group)!.seq });
const seqOf = (r: Rig, group: string): number => r.rel.current.get(group)!.seq;

describe('rollout controller (in-memory broker, manual clock)', () => {
  it('two waves: threshold, soak, promote, complete; the status is retained at each step and every 10 s', async () => {
    const r = rig(makePlan([wave('canary'), wave('line', { successThreshold: 0.5 })]));
    for (const [d, g] of [
      ['c1', 'canary'],
      ['c2', 'canary'],
      ['l1', 'line'],
      ['l2', 'line'],
    ])
      dev(r, d, g, 'idle');
    await r.start();
    expect(r.ctl.status().state).toBe('waiting');
    expect(r.rel.calls).toEqual([{ kind: 'publish', group: 'canary' }]);
    expect(r.ctl.status().waves[0].devices).toEqual(['c1', 'c2']);
    okOn(r, 'c1', 'canary');
    await flush();
    expect(r.ctl.status().waves[0].counts).toMatchObject({ total: 2, ok: 1, pending: 1 });
    okOn(r, 'c2', 'canary');
    await flush();
    expect(r.ctl.status().state).toBe('soaking');
    await r.clock.advance(4000);
    expect(r.ctl.status().state).toBe('soaking');
    await r.clock.advance(1000);
    expect(r.ctl.status().wave).toBe(1);
    expect(r.ctl.status().state).toBe('waiting');
    expect(r.rel.calls.map((c) => c.group)).toEqual(['canary', 'line']);
    okOn(r, 'l1', 'line');
    await flush();
    await r.clock.advance(5000);
    const end = await r.ctl.done();
    expect(end.state).toBe('completed');
    expect(retainedStatus(r.broker).state).toBe('completed');
    expect(r.events.map((e) => e.type)).toEqual(['started', 'publishing', 'published', 'threshold-reached', 'promoted', 'publishing', 'published', 'threshold-reached', 'completed']);
  });

  it('publishes the status at least every 10 s while nothing changes', async () => {
    const r = rig(makePlan([wave('canary')]));
    dev(r, 'c1', 'canary', 'idle');
    await r.start();
    const n = (): number => r.broker.log.filter((m) => m.topic === topics.rolloutStatus('r1')).length;
    const before = n();
    await r.clock.advance(30_000);
    expect(n() - before).toBeGreaterThanOrEqual(3);
  });

  it('a failed publish goes back to pending, says why, and is tried again later', async () => {
    const r = rig(makePlan([wave('canary')]));
    dev(r, 'c1', 'canary', 'idle');
    r.rel.failNext.push({ kind: 'publish', error: new Error('no update server answered') });
    await r.start();
    expect(r.ctl.status().state).toBe('pending');
    expect(r.ctl.status().reason).toMatch(/publishing failed: no update server answered; trying again in 5 s/);
    await r.clock.advance(5000);
    expect(r.ctl.status().state).toBe('waiting');
    expect(r.rel.calls).toHaveLength(2);
  });

  it('failures cross the threshold: halt, roll back every group reached (a failed rollback is retried), hook events', async () => {
    const r = rig(makePlan([wave('canary', { successThreshold: 0.5, soakSeconds: 0 }), wave('line', { failureThreshold: { count: 2 } })]));
    for (const [d, g] of [
      ['c1', 'canary'],
      ['c2', 'canary'],
      ['l1', 'line'],
      ['l2', 'line'],
    ])
      dev(r, d, g, 'idle');
    await r.start();
    okOn(r, 'c1', 'canary');
    await flush();
    await r.clock.advance(1000);
    expect(r.ctl.status().wave).toBe(1);
    dev(r, 'l1', 'line', 'rolled_back', { target: TARGET, seq: seqOf(r, 'line'), reason: 'health-check-failed' });
    await flush();
    expect(r.ctl.status().state).toBe('waiting');
    expect(r.events.at(-1)).toMatchObject({ type: 'device-rolled-back', device: 'l1', group: 'line' });
    r.rel.failNext.push({ kind: 'rollback', error: new Error('broker gone') });
    dev(r, 'l2', 'line', 'rolled_back', { target: TARGET, seq: seqOf(r, 'line'), reason: 'health-check-failed' });
    await flush();
    expect(r.ctl.status().state).toBe('rolling_back');
    expect(r.ctl.status().reason).toMatch(/line: rollback failed: broker gone; trying again/);
    await r.clock.advance(5000);
    const end = await r.ctl.done();
    expect(end.state).toBe('halted');
    expect(end.reason).toMatch(/wave 2 \(line\): 2 of 2 failed.*l1 rolled_back \(health-check-failed\).*rolled back: canary, line/);
    expect(r.rel.calls.filter((c) => c.kind === 'rollback').map((c) => c.group)).toEqual(['line', 'canary', 'line']);
    expect(r.rel.current.get('canary')).toMatchObject({ rollback: true, target: BASE });
    expect(r.events.filter((e) => e.type === 'halted')).toHaveLength(1);
  });

  it('a refusal seen after the release counts as a failure even though the status keeps the old target', async () => {
    const r = rig(makePlan([wave('canary')]));
    dev(r, 'c1', 'canary', 'idle');
    await r.start();
    dev(r, 'c1', 'canary', 'rejected', { reason: 'wrong-base' });
    await flush();
    const end = await r.ctl.done();
    expect(end.state).toBe('halted');
    expect(end.waves[0].failures).toEqual([{ device: 'c1', state: 'rejected', reason: 'wrong-base' }]);
    expect(r.events.map((e) => e.type)).toContain('device-failed');
  });

  it('timeout: a device still downloading fails; a silent one blocks a block wave and says which', async () => {
    const r = rig(makePlan([wave('canary', { failureThreshold: { count: 2 } })]));
    for (const d of ['c1', 'c2', 'c3']) dev(r, d, 'canary', 'idle');
    await r.start();
    okOn(r, 'c1', 'canary');
    dev(r, 'c2', 'canary', 'downloading', { target: TARGET, seq: seqOf(r, 'canary') });
    await r.clock.advance(61_000);
    const s = r.ctl.status();
    expect(s.state).toBe('waiting');
    expect(s.waves[0].counts).toMatchObject({ ok: 1, failed: 1, offline: 1 });
    expect(s.waves[0].blocking).toEqual(['c3']);
    expect(s.reason).toMatch(/cannot complete: offline device\(s\) c3 block it/);
    // The blocking device comes back and acks; the downloading one too: the wave completes.
    okOn(r, 'c3', 'canary');
    okOn(r, 'c2', 'canary');
    await flush();
    await r.clock.advance(5000);
    expect((await r.ctl.done()).state).toBe('completed');
  });

  it('timeout with nothing blocking and the threshold not met: halted and rolled back', async () => {
    const r = rig(makePlan([wave('canary', { failureThreshold: { count: 5 }, offline: 'skip' })]));
    for (const d of ['c1', 'c2']) dev(r, d, 'canary', 'idle');
    await r.start();
    dev(r, 'c1', 'canary', 'downloading', { target: TARGET, seq: seqOf(r, 'canary') });
    await r.clock.advance(61_000);
    const end = await r.ctl.done();
    expect(end.state).toBe('halted');
    expect(end.reason).toMatch(/timed out after 60 s: 0 of 1 ok/);
  });

  it('pause, resume (no second publish), abort, through retained control messages', async () => {
    const r = rig(makePlan([wave('canary')]));
    dev(r, 'c1', 'canary', 'idle');
    await r.start();
    const control = (command: string, id: string): void => r.broker.publish(rolloutControlTopic(topics, 'r1'), new TextEncoder().encode(JSON.stringify({ v: 1, id, command, time: '' })), true);
    control('pause', 'p1');
    await flush();
    expect(r.ctl.status()).toMatchObject({ state: 'paused', pausedFrom: 'waiting', lastCommand: 'p1' });
    okOn(r, 'c1', 'canary');
    await r.clock.advance(10_000);
    expect(r.ctl.status().state).toBe('paused');
    control('resume', 'p2');
    await flush();
    expect(r.ctl.status().state).toBe('soaking');
    expect(r.rel.calls).toHaveLength(1);
    control('abort', 'p3');
    await flush();
    expect((await r.ctl.done()).state).toBe('aborted');
    expect(retainedStatus(r.broker).lastCommand).toBe('p3');
  });

  it('a retained command older than the rollout is a leftover and ignored; one sent while no controller ran is applied', async () => {
    const r = rig(makePlan([wave('canary')]));
    dev(r, 'c1', 'canary', 'idle');
    const topic = rolloutControlTopic(topics, 'r1');
    const send = (id: string, time: number): void => r.broker.publish(topic, new TextEncoder().encode(JSON.stringify({ v: 1, id, command: 'abort', time: new Date(time).toISOString() })), true);
    send('old', r.clock.t - 3600_000);
    await r.start();
    expect(r.ctl.status()).toMatchObject({ state: 'waiting', lastCommand: null });
    await r.ctl.stop();
    send('new', r.clock.t + 1000);
    const b = rig(makePlan([wave('canary')]), r.broker, r.clock);
    await b.start();
    expect(await b.ctl.done()).toMatchObject({ state: 'aborted', lastCommand: 'new' });
  });

  it('a group with no devices pauses the rollout and says why', async () => {
    const r = rig(makePlan([wave('canary')]));
    await r.start();
    expect(r.ctl.status()).toMatchObject({ state: 'paused', pausedFrom: 'pending' });
    expect(r.ctl.status().reason).toMatch(/no device reports group canary and model m/);
    expect(r.rel.calls).toHaveLength(0);
  });

  it('waits for the wave window before publishing', async () => {
    const clock = new ManualClock();
    const d = new Date(clock.t);
    const at = (min: number): string => `${String(Math.floor(min / 60) % 24).padStart(2, '0')}:${String(min % 60).padStart(2, '0')}`;
    const local = d.getHours() * 60 + d.getMinutes();
    const r = rig(makePlan([wave('canary', { window: `${at(local + 60)}-${at(local + 120)}` })]), new MemoryBroker(), clock);
    dev(r, 'c1', 'canary', 'idle');
    await r.start();
    expect(r.ctl.status().state).toBe('pending');
    expect(r.ctl.status().reason).toMatch(/waits for its window/);
    await r.clock.advance(59 * 60_000);
    expect(r.rel.calls).toHaveLength(0);
    await r.clock.advance(61_000);
    expect(r.ctl.status().state).toBe('waiting');
  });

  it('restart: a new controller rebuilds from the retained topics and does not publish a wave again', async () => {
    const plan = makePlan([wave('canary'), wave('line')]);
    const a = rig(plan);
    for (const [d, g] of [
      ['c1', 'canary'],
      ['l1', 'line'],
    ])
      dev(a, d, g, 'idle');
    await a.start();
    okOn(a, 'c1', 'canary');
    await flush();
    await a.clock.advance(2000);
    expect(a.ctl.status().state).toBe('soaking');
    await a.ctl.stop();
    const b = rig(plan, a.broker, a.clock);
    await b.start();
    expect(b.ctl.status()).toMatchObject({ state: 'soaking', wave: 0 });
    expect(b.ctl.status().lastEvent?.type).toBe('resumed-controller');
    await b.clock.advance(3000);
    expect(b.ctl.status()).toMatchObject({ state: 'waiting', wave: 1 });
    expect([...a.rel.calls, ...b.rel.calls].map((c) => c.group)).toEqual(['canary', 'line']);
    // A plan changed under the same id is refused.
    const c = rig(makePlan([wave('canary', { soakSeconds: 9 }), wave('line')]), a.broker, a.clock);
    await expect(c.start()).rejects.toThrow(/rollout r1 already exists with another plan/);
  });

  it('restart mid-publish: the release already on the broker is adopted, not published again', async () => {
    const plan = makePlan([wave('canary')]);
    const a = rig(plan);
    dev(a, 'c1', 'canary', 'idle');
    let release!: () => void;
    const gate = new Promise<void>((res) => (release = res));
    const inner = a.rel.publish;
    a.rel.publish = async (o) => {
      const r = await inner(o);
      await gate;
      return r;
    };
    const killed = new MemoryTransport(a.broker);
    const c = new RolloutController(
      { plan, payloads: { payloads: [], fullModel: undefined, target: TARGET }, keys: [KEY], settleMs: 0 },
      {
        transport: killed,
        topics,
        clock: a.clock,
        publish: (o) => a.rel.publish(o),
        rollback: a.rel.rollback,
        log: silentLogger,
      },
    );
    await c.start();
    await flush();
    expect(retainedStatus(a.broker).state).toBe('publishing');
    // Killed after the release went out, before its status said so.
    await killed.close();
    release();
    await c.stop();
    const b = rig(plan, a.broker, a.clock);
    await b.start();
    expect(b.ctl.status().state).toBe('waiting');
    expect(b.events.map((e) => e.type)).toContain('adopted');
    expect(a.rel.calls).toHaveLength(1);
    expect(b.rel.calls).toHaveLength(0);
  });
});
