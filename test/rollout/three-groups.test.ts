import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AgentConfig } from '../../device/agent.ts';
import { decodeRelease, type ReleaseBody } from '../../protocol/release.ts';
import { currentDigest, MODEL, readRetained, topics, type Fixture } from '../support/harness.ts';
import { controller, plan, recordingHook, setup, wave, type Run } from './aedes-helpers.ts';

let f: Fixture | undefined;
let run: Run | undefined;
afterEach(async () => {
  await run?.ctl.stop();
  run = undefined;
  await f?.close();
  f = undefined;
});

const GROUPS = ['canary', 'line-a', 'line-b'] as const;
const FLEET: Array<[string, string]> = [
  ['c1', 'canary'],
  ['c2', 'canary'],
  ['a1', 'line-a'],
  ['a2', 'line-a'],
  ['b1', 'line-b'],
  ['b2', 'line-b'],
];
const inGroup = (g: string): string[] => FLEET.filter(([, x]) => x === g).map(([id]) => id);

async function releaseOf(fx: Fixture, group: string): Promise<ReleaseBody | undefined> {
  const got = await readRetained(fx, topics.release(group, MODEL), 300);
  return got ? decodeRelease(got) : undefined;
}

describe('a rollout over three groups of in-process agents (canary, line-a, line-b)', () => {
  it('promotes wave by wave to completion: no group moves before the previous one was promoted', async () => {
    const { fx, watch } = await setup('rollout-3-ok', FLEET);
    f = fx;
    run = await controller(fx, plan([wave('canary', { soakSeconds: 1 }), wave('line-a', { successThreshold: 0.5 }), wave('line-b')]));
    const end = await run.ctl.done();
    expect(end.state).toBe('completed');
    expect(run.published).toEqual([...GROUPS]);
    expect(end.waves.map((w) => [w.group, w.devices, w.counts.ok, w.counts.total, w.counts.failed])).toEqual(GROUPS.map((g) => [g, inGroup(g), 2, 2, 0]));
    expect(run.events.map((e) => e.type)).toEqual([
      'started',
      'publishing',
      'published',
      'threshold-reached',
      'promoted',
      'publishing',
      'published',
      'threshold-reached',
      'promoted',
      'publishing',
      'published',
      'threshold-reached',
      'completed',
    ]);
    // Wave k+1's devices did nothing until wave k was promoted.
    const promoted = run.events.filter((e) => e.type === 'promoted').map((e) => Date.parse(e.time));
    for (const [k, g] of GROUPS.slice(1).entries()) {
      const firstMove = Math.min(...watch.history.filter((s) => inGroup(g).includes(s.device) && s.state !== 'idle').map((s) => Date.parse(s.time)));
      expect(firstMove).toBeGreaterThanOrEqual(promoted[k]);
    }
    for (const [id] of FLEET) {
      expect(watch.latest.get(id)).toMatchObject({ state: 'ok', running: fx.update.targetDigest, rollback: false });
      expect(await currentDigest(fx, id)).toBe(fx.update.targetDigest);
    }
  }, 90_000);

  it('health fails in wave 2 (line-a): halts at the threshold, canary and line-a end on the previous model, line-b untouched, the alert command gets the halt', async () => {
    const devices: Array<[string, string, Partial<AgentConfig>?]> = FLEET.map(([id, g]) => [id, g, g === 'line-a' ? { healthCmd: 'exit 1' } : {}]);
    const { fx, watch } = await setup('rollout-3-fail', devices);
    f = fx;
    const hook = recordingHook(path.join(fx.dir, 'alert'));
    run = await controller(fx, plan([wave('canary'), wave('line-a', { failureThreshold: { count: 1 } }), wave('line-b')]), hook.command);
    const end = await run.ctl.done();
    expect(end.state).toBe('halted');
    expect(end.wave).toBe(1);
    expect(end.reason).toMatch(/wave 2 \(line-a\): [12] of 2 failed.*health-check-failed.*rolled back: canary, line-a$/);
    // Rolled back newest first (the reason lists the groups in wave order).
    expect(run.events.filter((e) => e.type === 'rollback-published').map((e) => e.group)).toEqual(['line-a', 'canary']);
    expect(run.published).toEqual(['canary', 'line-a']);
    expect(end.waves[0]).toMatchObject({ counts: { ok: 2, total: 2, failed: 0 }, rolledBack: true });
    expect(end.waves[1]).toMatchObject({ rolledBack: true });
    expect(end.waves[1].counts.failed).toBeGreaterThanOrEqual(1);
    expect(end.waves[2].devices).toBeNull(); // never started
    const types = run.events.map((e) => e.type);
    expect(types.indexOf('failure-threshold')).toBeGreaterThan(types.lastIndexOf('promoted'));
    expect(run.events.find((e) => e.type === 'failure-threshold')).toMatchObject({ wave: 1, group: 'line-a' });
    // Both groups reached were rolled back by release; line-b never got one.
    for (const g of ['canary', 'line-a']) expect(await releaseOf(fx, g)).toMatchObject({ rollback: true, target: fx.update.baseDigest });
    expect(await releaseOf(fx, 'line-b')).toBeUndefined();
    // Every reached device ends on the previous model: canary by the rollback release, line-a by its own health check (and then the release).
    for (const id of inGroup('canary')) await watch.until(id, (s) => s.state === 'ok' && s.rollback && s.running === fx.update.baseDigest);
    for (const id of inGroup('line-a')) await watch.until(id, (s) => (s.state === 'ok' || s.state === 'rolled_back') && s.running === fx.update.baseDigest);
    for (const id of [...inGroup('canary'), ...inGroup('line-a')]) expect(await currentDigest(fx, id)).toBe(fx.update.baseDigest);
    for (const id of inGroup('line-b')) {
      expect(watch.latest.get(id)).toMatchObject({ state: 'idle', running: fx.update.baseDigest });
      expect(await currentDigest(fx, id)).toBe(fx.update.baseDigest);
    }
    // The alert command (--on-event through the controller's hook runner) was told, in order, ending with the halt.
    await run.ctl.stop();
    const { env, stdin } = await hook.events();
    expect(env).toEqual(stdin);
    expect(env.some((e) => e.type === 'device-rolled-back' && e.group === 'line-a')).toBe(true);
    expect(env.filter((e) => e.type === 'halted')).toHaveLength(1);
    expect(env.at(-1)).toMatchObject({ type: 'halted', rollout: 'model-v2', reason: end.reason });
    expect(env.map((e) => e.type)).not.toContain('completed');
  }, 90_000);
});
