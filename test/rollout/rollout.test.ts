import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeRelease, type ReleaseBody } from '../../protocol/release.ts';
import { PRESENCE_OFFLINE } from '../../protocol/status.ts';
import type { RolloutController } from '../../rollout/controller.ts';
import { collectInventory } from '../../rollout/inventory.ts';
import type { RolloutPlan } from '../../rollout/plan.ts';
import { parseRolloutStatus, rolloutControlTopic, type RolloutStatus } from '../../rollout/status.ts';
import type { AgentConfig } from '../../device/agent.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishManifestOnly } from '../../publisher/publish.ts';
import { silentLogger } from '../../util/log.ts';
import type { Clock } from '../../platform/clock.ts';
import { JumpClock } from '../support/clock.ts';
import { CHUNK, connect, MODEL, readRetained, topics, type Fixture } from '../support/harness.ts';
import { controller as sharedController, plan, recordingHook, setup as sharedSetup, untilStatus, wave, type Run } from './aedes-helpers.ts';

let f: Fixture | undefined;
const controllers: RolloutController[] = [];
afterEach(async () => {
  for (const c of controllers.splice(0)) await c.stop();
  await f?.close();
  f = undefined;
});

/** The shared helpers, with this file's cleanup: the fixture and every controller are closed after each test. */
async function setup(tag: string, devices: Array<[string, string, Partial<AgentConfig>?]>): ReturnType<typeof sharedSetup> {
  const r = await sharedSetup(tag, devices);
  f = r.fx;
  return r;
}

async function controller(fx: Fixture, p: RolloutPlan, onEventCmd?: string, o: { rolloutKeyOnly?: boolean; clock?: Clock } = {}): Promise<Run> {
  const run = await sharedController(fx, p, onEventCmd, o);
  controllers.push(run.ctl);
  return run;
}

async function releaseOf(fx: Fixture, group: string): Promise<ReleaseBody | undefined> {
  const p = await readRetained(fx, topics.release(group, MODEL), 300);
  return p?.byteLength ? decodeRelease(p) : undefined;
}

async function rolloutStatus(fx: Fixture, id = 'model-v2'): Promise<RolloutStatus | null> {
  const p = await readRetained(fx, topics.rolloutStatus(id), 300);
  return p ? parseRolloutStatus(p) : null;
}

const until = untilStatus;

const FLEET: Array<[string, string]> = [
  ['c1', 'canary'],
  ['c2', 'canary'],
  ['l1', 'line'],
  ['l2', 'line'],
  ['l3', 'line'],
];

describe('staged rollout over Aedes with device agents', () => {
  it('canary reaches 100 %, soaks 1 s, promotes; line completes; statuses retained', async () => {
    const { fx, watch } = await setup('rollout-ok', FLEET);
    const inv = (await collectInventory(await connect(fx, 'inventory'), topics, 300)).records;
    expect(inv.map((r) => [r.device, r.status?.group])).toEqual(FLEET);
    const run = await controller(fx, plan([wave('canary', { soakSeconds: 1 }), wave('line')]));
    const end = await run.ctl.done();
    expect(end.state).toBe('completed');
    expect(run.published).toEqual(['canary', 'line']);
    for (const [id] of FLEET) expect(watch.latest.get(id)).toMatchObject({ state: 'ok', running: fx.update.targetDigest });
    expect(end.waves.map((w) => [w.group, w.devices, w.counts.ok, w.counts.total])).toEqual([
      ['canary', ['c1', 'c2'], 2, 2],
      ['line', ['l1', 'l2', 'l3'], 3, 3],
    ]);
    const t = (type: string): number => Date.parse(run.events.find((e) => e.type === type)!.time);
    expect(t('promoted') - t('threshold-reached')).toBeGreaterThanOrEqual(1000);
    expect(run.events.map((e) => e.type)).toEqual(['started', 'publishing', 'published', 'threshold-reached', 'promoted', 'publishing', 'published', 'threshold-reached', 'completed']);
    const s = await rolloutStatus(fx);
    expect(s).toMatchObject({ state: 'completed', rollout: 'model-v2', wave: 1 });
    expect(s!.plan.target).toBe(fx.update.targetDigest);
  }, 60_000);

  it('with the rollout key only: the manifest the release key published beforehand is assigned wave by wave; without it the rollout cannot start a wave', async () => {
    const { fx, watch } = await setup('rollout-roles', [
      ['c1', 'canary'],
      ['l1', 'line'],
    ]);
    const refused = await controller(fx, plan([wave('canary'), wave('line')], { id: 'no-manifest' }), undefined, { rolloutKeyOnly: true });
    await untilStatus(refused.ctl, (s) => /no retained manifest signed by the release keys/.test(JSON.stringify(s)));
    await refused.ctl.stop();
    expect(watch.latest.get('c1')!.state).toBe('idle');
    const pub = await connect(fx, 'release-engineer');
    await publishManifestOnly({ transport: pub, topics, model: MODEL, payloads: [fx.update.payload], keys: [await loadSigningKey(fx.keyFile)], chunkSize: CHUNK, log: silentLogger });
    const run = await controller(fx, plan([wave('canary'), wave('line')]), undefined, { rolloutKeyOnly: true });
    expect((await run.ctl.done()).state).toBe('completed');
    for (const id of ['c1', 'l1']) expect(watch.latest.get(id)).toMatchObject({ state: 'ok', running: fx.update.targetDigest });
  }, 60_000);

  it('canary health fails: rolled back on the devices, failure threshold crossed, halted, canary rolled back, hook told', async () => {
    const { fx, watch } = await setup(
      'rollout-fail',
      FLEET.map(([id, g]) => [id, g, g === 'canary' ? { healthCmd: 'exit 1' } : {}]),
    );
    const hook = recordingHook(path.join(fx.dir, 'hook'));
    const run = await controller(fx, plan([wave('canary', { failureThreshold: { share: 0.5 } }), wave('line')]), hook.command);
    const end = await run.ctl.done();
    expect(end.state).toBe('halted');
    expect(end.reason).toMatch(/wave 1 \(canary\): [12] of 2 failed.*rolled_back \(health-check-failed\).*rolled back: canary/);
    expect(run.published).toEqual(['canary']);
    const canary = await releaseOf(fx, 'canary');
    expect(canary).toMatchObject({ rollback: true, target: fx.update.baseDigest, previous: fx.update.targetDigest });
    expect(await releaseOf(fx, 'line')).toBeUndefined();
    for (const id of ['c1', 'c2']) await watch.until(id, (s) => s.state === 'ok' && s.rollback && s.running === fx.update.baseDigest);
    for (const id of ['l1', 'l2', 'l3']) expect(watch.latest.get(id)!.state).toBe('idle');
    await run.ctl.stop();
    const { env, stdin } = await hook.events();
    expect(env).toEqual(stdin);
    expect(env.some((e) => e.type === 'device-rolled-back' && e.group === 'canary')).toBe(true);
    expect(env.at(-1)).toMatchObject({ type: 'halted', rollout: 'model-v2', reason: end.reason });
    expect((await rolloutStatus(fx))!.state).toBe('halted');
  }, 60_000);

  it("offline: 'skip' leaves a stopped device out and the wave completes at its timeout", async () => {
    const { fx, stopDevice } = await setup('rollout-skip', [
      ['c1', 'canary'],
      ['c2', 'canary'],
      ['c3', 'canary'],
    ]);
    await stopDevice('c3');
    const will = await connect(fx, 'will');
    await will.publish(topics.presence('c3'), PRESENCE_OFFLINE, { qos: 1, retain: true });
    // The controller's clock is moved past the wave's timeout once the online devices have finished, rather than waited out.
    const clock = new JumpClock();
    const run = await controller(fx, plan([wave('canary', { offline: 'skip', timeoutSeconds: 12 })]), undefined, { clock });
    const mid = await until(run.ctl, (s) => s.waves[0].counts.ok === 2);
    expect(mid.state).toBe('waiting');
    expect(mid.waves[0].counts).toMatchObject({ total: 3, offline: 1 });
    expect(run.ctl.status().state, 'the wave ended before its timeout').toBe('waiting');
    clock.jump(12_000);
    const end = await run.ctl.done();
    expect(end.state).toBe('completed');
    expect(end.waves[0].counts).toMatchObject({ total: 2, ok: 2, skipped: 1 });
  }, 60_000);

  it("offline: 'block' keeps the wave waiting past its timeout and names the device", async () => {
    const { fx, stopDevice } = await setup('rollout-block', [
      ['c1', 'canary'],
      ['c2', 'canary'],
      ['c3', 'canary'],
    ]);
    await stopDevice('c3'); // no last will: its presence still says online, it just never answers
    // The controller's clock is moved past the wave's timeout once the online devices have finished, rather than waited out.
    const clock = new JumpClock();
    const run = await controller(fx, plan([wave('canary', { timeoutSeconds: 12 })]), undefined, { clock });
    const ok = await until(run.ctl, (s) => s.waves[0].counts.ok === 2);
    expect(ok.state).toBe('waiting');
    expect(run.ctl.status().waves[0].blocking, 'blocking named before the timeout').toEqual([]);
    clock.jump(12_000);
    const blocked = await until(run.ctl, (s) => s.waves[0].blocking.length > 0);
    expect(blocked.state).toBe('waiting');
    expect(blocked.waves[0].blocking).toEqual(['c3']);
    expect(blocked.reason).toMatch(/cannot complete: offline device\(s\) c3 block it/);
    expect(clock.now() - Date.parse(blocked.waves[0].publishedAt!)).toBeGreaterThanOrEqual(12_000);
    expect((await rolloutStatus(fx))!.waves[0].blocking).toEqual(['c3']);
    // An operator gives up on it.
    const t = await connect(fx, 'operator');
    await t.publish(rolloutControlTopic(topics, 'model-v2'), JSON.stringify({ v: 1, id: 'x1', command: 'abort', time: new Date().toISOString() }), { qos: 1, retain: true });
    expect((await run.ctl.done()).state).toBe('aborted');
  }, 60_000);

  it('a controller stopped mid-wave is replaced by a new one that rebuilds from retained topics and finishes without publishing wave 1 again', async () => {
    const { fx, watch } = await setup('rollout-restart', FLEET);
    const p = plan([wave('canary', { soakSeconds: 3 }), wave('line')]);
    const a = await controller(fx, p);
    await until(a.ctl, (s) => s.state === 'soaking');
    await a.ctl.stop();
    const seq = (await releaseOf(fx, 'canary'))!.seq;
    const b = await controller(fx, p);
    expect(b.ctl.status()).toMatchObject({ state: 'soaking', wave: 0 });
    const end = await b.ctl.done();
    expect(end.state).toBe('completed');
    expect(a.published).toEqual(['canary']);
    expect(b.published).toEqual(['line']);
    expect((await releaseOf(fx, 'canary'))!.seq).toBe(seq);
    for (const [id] of FLEET) expect(watch.latest.get(id)).toMatchObject({ state: 'ok', running: fx.update.targetDigest });
    expect(end.events.map((e) => e.type)).toContain('resumed-controller');
  }, 60_000);
});
