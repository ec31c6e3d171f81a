import { type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { synthesizeUpdate, type SynthUpdate } from '../../publisher/synth.ts';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { mulberry32 } from '../../util/random.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { createFixture, publish, spawnDevice, StatusWatch, type Fixture, MEDIUM_LAYERS } from '../support/harness.ts';
import { stopChild } from '../../cli/demo.ts';


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
async function killLoop(fx: Fixture, kills: number, extra: string[], seed: number): Promise<{ phases: Record<string, number>; cycles: number; final: string }> {
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
  for (let k = 0; k < kills; ) {
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
  expect(await digestModelFile(current)).toBe(end.running);
  return { phases, cycles, final: end.state };
}

describe('crashes at random instants (SIGKILL, real processes)', () => {
  it('50 kills between download and ack: always the old or the new model, and finally ok on the new one', async () => {
    f = await createFixture('crash', { layers: MEDIUM_LAYERS, rank: 16 });
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 40_000 });
    await proxy.start();
    const r = await killLoop(f, 50, [], 1);
    console.log(`50 kills over ${r.cycles} update cycles, by last status before the kill: ${JSON.stringify(r.phases)}`);
    expect(r.final).toBe('ok');
  }, 600_000);

  it('with a failing health check, kills never leave a torn model and the device ends on the old model, rolled back', async () => {
    f = await createFixture('crash-health', { layers: MEDIUM_LAYERS, rank: 16 });
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 40_000 });
    await proxy.start();
    const r = await killLoop(f, 10, ['--health-cmd', 'exit 1'], 2);
    expect(r.final).toBe('rolled_back');
  }, 300_000);
});

describe('a crash of the agent in the health window', () => {
  it('switches back to the previous model on restart and says why', async () => {
    f = await createFixture('crash-testing');
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port });
    await proxy.start();
    const watch = await StatusWatch.start(f);
    const first = spawnDevice(f, 'ct', ['--health-window', '30s'], proxy.url);
    await watch.until('ct', (s) => s.state === 'idle');
    await publish(f);
    await watch.until('ct', (s) => s.state === 'testing');
    expect(await digestModelFile(path.join(f.dir, 'ct', 'current.safetensors'))).toBe(f.update.targetDigest);
    await kill(first);
    spawnDevice(f, 'ct', ['--health-window', '30s'], proxy.url);
    const s = await watch.until('ct', (s) => s.state === 'rolled_back');
    expect(s.reason).toBe('crashed-while-testing');
    expect(s.running).toBe(f.update.baseDigest);
    expect(await digestModelFile(path.join(f.dir, 'ct', 'current.safetensors'))).toBe(f.update.baseDigest);
  }, 60_000);
});
