import { type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { synthesizeUpdate, type SynthUpdate } from '../../publisher/synth.ts';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { mulberry32 } from '../../util/random.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { createFixture, publish, spawnDevice, StatusWatch, type Fixture, MEDIUM_LAYERS } from '../support/harness.ts';
import type { DeviceStatus } from '../../protocol/status.ts';
import { stopChild } from '../../platform/child-process.ts';

let f: Fixture | undefined;
let proxy: LinkProxy | undefined;
afterEach(async () => {
  await proxy?.stop();
  await f?.close();
  f = undefined;
  proxy = undefined;
});

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  process.kill(child.pid!, 'SIGKILL');
  await exited;
}

/**
 * Kill the agent at random instants between the start of a download and its
 * ack, restarting it from its directory each time. After every kill the file
 * applications load must be complete and be the old or the new model. When
 * a cycle reaches its end, the next update (from the new model) starts the
 * next cycle.
 */
async function killLoop(fx: Fixture, kills: number, extra: string[], seed: number, endsAs: (s: DeviceStatus) => void): Promise<{ phases: Record<string, number>; cycles: number; final: string }> {
  const rand = mulberry32(seed);
  const watch = await StatusWatch.start(fx);
  const id = 'crashy';
  const current = path.join(fx.dir, id, 'current.safetensors');
  let child = spawnDevice(fx, id, extra, proxy!.url);
  await watch.until(id, (s) => s.state === 'idle');
  let update: SynthUpdate = fx.update;
  let from = update.baseDigest;
  await publish(fx, update.payload);
  const phases: Record<string, number> = {};
  let cycles = 1;
  const nextCycle = async (): Promise<void> => {
    const s = watch.latest.get(id)!;
    // However many kills it took, every cycle ends as the update deserves.
    endsAs(s);
    from = s.running;
    const base = s.state === 'ok' ? update.target : new Uint8Array(readFileSync(current));
    update = synthesizeUpdate(base, 16, 100 + cycles);
    await publish(fx, update.payload);
    cycles++;
  };
  const ended = (): boolean => {
    const s = watch.latest.get(id)!;
    return (s.state === 'ok' || s.state === 'rolled_back') && s.target === update.targetDigest;
  };
  for (let k = 0; k < kills;) {
    // A random instant of the cycle: after its download started (or resumed), before its end.
    await watch.until(id, (s) => s.target === update.targetDigest && s.state !== 'idle', 60_000);
    await new Promise((r) => setTimeout(r, rand() * 2000));
    if (ended()) {
      await nextCycle();
      continue;
    }
    const last = watch.latest.get(id)!;
    phases[last.state] = (phases[last.state] ?? 0) + 1;
    await kill(child);
    k++;
    const digest = await digestModelFile(current);
    expect([from, update.targetDigest]).toContain(digest);
    child = spawnDevice(fx, id, extra, proxy!.url);
  }
  const end = await watch.until(id, (s) => (s.state === 'ok' || s.state === 'rolled_back') && s.target === update.targetDigest, 60_000);
  await stopChild(child);
  endsAs(end);
  expect(await digestModelFile(current)).toBe(end.running);
  return { phases, cycles, final: end.state };
}

describe('crashes at random instants (SIGKILL, real processes)', () => {
  it('50 kills between download and ack: always the old or the new model, and finally ok on the new one', async () => {
    f = await createFixture('crash', { layers: MEDIUM_LAYERS, rank: 16 });
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 40_000 });
    await proxy.start();
    // No health command: the switch is the commit, so a kill at any instant is never a verdict.
    const r = await killLoop(f, 50, [], 1, (s) => {
      expect(s.state, `cycle to ${s.target?.slice(0, 12)}: ${s.reason} ${s.message}`).toBe('ok');
      expect(s.running).toBe(s.target);
    });
    console.log(`50 kills over ${r.cycles} update cycles, by last status before the kill: ${JSON.stringify(r.phases)}`);
    expect(r.final).toBe('ok');
  }, 600_000);

  it('with a failing health check, kills never leave a torn model and the device ends on the old model, rolled back', async () => {
    f = await createFixture('crash-health', { layers: MEDIUM_LAYERS, rank: 16 });
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 40_000 });
    await proxy.start();
    const r = await killLoop(f, 10, ['--health-cmd', 'exit 1'], 2, (s) => {
      expect(s.state).toBe('rolled_back');
      // Kills during the trial count as attempts, failures too: never more, never fewer than 3.
      expect(s.attempt, `${s.reason} ${s.message}`).toBe(3);
      expect(s.maxAttempts).toBe(3);
      expect(['health-check-failed', 'crashed-while-testing']).toContain(s.reason);
    });
    console.log(`10 kills with a failing health command over ${r.cycles} cycles: ${JSON.stringify(r.phases)}`);
    expect(r.final).toBe('rolled_back');
  }, 300_000);
});

describe('kills around the switch (no health command: the switch is the commit)', () => {
  it('every kill in staging, switching or testing ends ok on the new model after a restart, never rolled back', async () => {
    f = await createFixture('crash-switch', { layers: MEDIUM_LAYERS, rank: 16 });
    const watch = await StatusWatch.start(f);
    const id = 'sw';
    const dir = path.join(f.dir, id);
    // The on-switch command holds the device in `testing` for a moment, so that random kills land there too.
    const args = ['--on-switch', 'sleep 0.4'];
    let child = spawnDevice(f, id, args);
    await watch.until(id, (s) => s.state === 'idle');
    const rand = mulberry32(7);
    const landed: Record<string, number> = {};
    let update: SynthUpdate = f.update;
    let inTrial = 0;
    for (let cycle = 0; cycle < 40 && inTrial < 6; cycle++) {
      if (cycle > 0) update = synthesizeUpdate(update.target, 16, 200 + cycle);
      await publish(f, update.payload);
      await watch.until(id, (s) => s.target === update.targetDigest && (s.state === 'verifying' || s.state === 'applying' || s.state === 'testing'), 60_000);
      await new Promise((r) => setTimeout(r, rand() * 800));
      await kill(child);
      let phase = 'none';
      try {
        phase = (JSON.parse(readFileSync(path.join(dir, 'journal.json'), 'utf8')) as { phase: string }).phase;
      } catch {
        // No journal: before staging began, or after the commit.
      }
      landed[phase] = (landed[phase] ?? 0) + 1;
      if (phase === 'switching' || phase === 'testing') inTrial++;
      expect([update.baseDigest, update.targetDigest]).toContain(await digestModelFile(path.join(dir, 'current.safetensors')));
      child = spawnDevice(f, id, args);
      const end = await watch.until(id, (s) => s.target === update.targetDigest && ['ok', 'rolled_back', 'rejected', 'failed'].includes(s.state), 60_000);
      expect(end.state, `killed with the journal at ${phase}: ${end.reason} ${end.message}`).toBe('ok');
      expect(end.running).toBe(update.targetDigest);
      expect(await digestModelFile(path.join(dir, 'current.safetensors'))).toBe(update.targetDigest);
    }
    console.log(`kills around the switch, by journal phase at the kill: ${JSON.stringify(landed)}`);
    expect(inTrial, 'too few kills landed in switching or testing to mean anything').toBeGreaterThanOrEqual(6);
    await stopChild(child);
  }, 600_000);
});

/** Waits for a child to exit by itself (the agent crashed). */
const exited = (child: ChildProcess): Promise<void> => (child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r())));

describe('a crash of the agent during the trial is an attempt, not a verdict', () => {
  it('kills in the health window: each restart is the next attempt (1, 2, 3 of 3), then the switch back', async () => {
    f = await createFixture('crash-testing');
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port });
    await proxy.start();
    const watch = await StatusWatch.start(f);
    const args = ['--health-window', '30s'];
    let child = spawnDevice(f, 'ct', args, proxy.url);
    await watch.until('ct', (s) => s.state === 'idle');
    await publish(f);
    const current = path.join(f.dir, 'ct', 'current.safetensors');
    for (let attempt = 1; attempt <= 3; attempt++) {
      const s = await watch.until('ct', (s) => s.state === 'testing' && s.attempt === attempt);
      expect(s.maxAttempts).toBe(3);
      if (attempt > 1) expect(s.message).toContain(`attempt ${attempt} of 3`);
      expect(await digestModelFile(current)).toBe(f.update.targetDigest);
      await kill(child);
      child = spawnDevice(f, 'ct', args, proxy.url);
    }
    const s = await watch.until('ct', (s) => s.state === 'rolled_back');
    expect(s.reason).toBe('crashed-while-testing');
    expect(s.attempt).toBe(3);
    expect(s.message).toContain('each of 3 attempts');
    expect(s.running).toBe(f.update.baseDigest);
    expect(await digestModelFile(current)).toBe(f.update.baseDigest);
    await stopChild(child);
  }, 120_000);

  it('one kill in the health window, then a healthy trial: ok on the new model, attempt 2 of 3', async () => {
    f = await createFixture('crash-testing-once');
    const watch = await StatusWatch.start(f);
    const args = ['--health-window', '3s'];
    const first = spawnDevice(f, 'c1', args);
    await watch.until('c1', (s) => s.state === 'idle');
    await publish(f);
    await watch.until('c1', (s) => s.state === 'testing' && s.attempt === 1);
    await kill(first);
    const second = spawnDevice(f, 'c1', args);
    const s = await watch.until('c1', (s) => s.state === 'ok', 60_000);
    expect(s.running).toBe(f.update.targetDigest);
    expect(s.attempt).toBe(2);
    expect(s.message).toContain('healthy on attempt 2 of 3');
    expect(await digestModelFile(path.join(f.dir, 'c1', 'current.safetensors'))).toBe(f.update.targetDigest);
    await stopChild(second);
  }, 120_000);

  it('a health command that crashes the agent every time: exactly N crashes, then rolled back', async () => {
    f = await createFixture('crash-health-kills');
    const watch = await StatusWatch.start(f);
    const runs = path.join(f.dir, 'health-runs');
    // The health command kills the agent that runs it (its parent), as a model that takes the device down would.
    const args = ['--max-attempts', '4', '--health-cmd', `echo run >> '${runs}'; kill -9 $PPID; sleep 5`];
    let child = spawnDevice(f, 'hk', args);
    await watch.until('hk', (s) => s.state === 'idle');
    await publish(f);
    let crashes = 0;
    for (;;) {
      await Promise.race([exited(child), watch.until('hk', (s) => s.state === 'rolled_back', 60_000)]);
      if (watch.latest.get('hk')?.state === 'rolled_back') break;
      expect(child.signalCode).toBe('SIGKILL');
      crashes++;
      expect(crashes, 'more crashes than attempts').toBeLessThanOrEqual(4);
      child = spawnDevice(f, 'hk', args);
    }
    const s = watch.latest.get('hk')!;
    expect(crashes).toBe(4);
    expect(readFileSync(runs, 'utf8').trim().split('\n')).toHaveLength(4);
    expect(s.reason).toBe('crashed-while-testing');
    expect(s.attempt).toBe(4);
    expect(s.running).toBe(f.update.baseDigest);
    expect(await digestModelFile(path.join(f.dir, 'hk', 'current.safetensors'))).toBe(f.update.baseDigest);
    await stopChild(child);
  }, 180_000);
});
