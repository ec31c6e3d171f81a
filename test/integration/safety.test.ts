import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseTrustFile } from '../../protocol/release.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate } from '../../publisher/publish.ts';
import { rollbackGroup } from '../../publisher/rollback.ts';
import { synthesizeModel, synthesizeUpdate } from '../../publisher/synth.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { CHUNK, createFixture, currentDigest, GROUP, MODEL, SMALL_LAYERS, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

type Key = Awaited<ReturnType<typeof loadSigningKey>>;
async function withPublisher<T>(fx: Fixture, fn: (t: MqttTransport, keys: Key[], rolloutKeys: Key[]) => Promise<T>): Promise<T> {
  const t = await MqttTransport.connect({ url: fx.url, clientId: `pub-${Math.random().toString(36).slice(2)}` }, 10_000);
  try {
    return await fn(t, [await loadSigningKey(fx.keyFile)], [await loadSigningKey(fx.rolloutKeyFile)]);
  } finally {
    await t.close();
  }
}

async function publishChain(fx: Fixture, payloads: Uint8Array[], fullModel?: Uint8Array) {
  return withPublisher(fx, (transport, keys, rolloutKeys) =>
    publishUpdate({ transport, topics, payloads, fullModel, keys, rolloutKeys, model: MODEL, group: GROUP, chunkSize: CHUNK, ttlSeconds: 3600, log: silentLogger }),
  );
}

async function modelFiles(dir: string): Promise<string[]> {
  return (await fs.readdir(path.join(dir, 'models'))).sort();
}

describe('validation before the switch', () => {
  it('a model the validation command refuses never becomes current: rejected with its last output lines', async () => {
    f = own(await createFixture('validate'));
    const watch = await StatusWatch.start(f);
    const { storage } = await startAgent(f, 'v1', silentLogger, { validateCmd: 'echo "accuracy 0.41 < 0.90 on 32 samples"; test -f "$FLEET_MODEL_PATH" && exit 3' });
    await watch.until('v1', (s) => s.state === 'idle');
    await publishChain(f, [f.update.payload]);
    const s = await watch.until('v1', (s) => s.state === 'rejected');
    expect(s.reason).toBe('validation-failed');
    expect(s.message).toMatch(/exited with 3; last output:\naccuracy 0.41 < 0.90 on 32 samples/);
    expect(s.running).toBe(f.update.baseDigest);
    expect(await currentDigest(f, 'v1')).toBe(f.update.baseDigest);
    expect(await modelFiles(storage.dir)).toEqual([`${f.update.baseDigest}.safetensors`]);
  });

  it('a validation command that hangs is stopped at its timeout: rejected (validation-timeout)', async () => {
    f = own(await createFixture('validate-hang'));
    const watch = await StatusWatch.start(f);
    await startAgent(f, 'v2', silentLogger, { validateCmd: 'sleep 30', validateTimeoutMs: 400 });
    await watch.until('v2', (s) => s.state === 'idle');
    await publishChain(f, [f.update.payload]);
    const s = await watch.until('v2', (s) => s.state === 'rejected');
    expect(s.reason).toBe('validation-timeout');
    expect(await currentDigest(f, 'v2')).toBe(f.update.baseDigest);
  });
});

describe('health after the switch', () => {
  it('a failing health command switches back and says why; the same release is not tried again, a new one is', async () => {
    f = own(await createFixture('health'));
    const flag = path.join(f.dir, 'unhealthy');
    await fs.writeFile(flag, '');
    const switched = path.join(f.dir, 'switched.log');
    const watch = await StatusWatch.start(f);
    const { agent } = await startAgent(f, 'h1', silentLogger, {
      healthCmd: `echo "inference failed: NaN output"; test ! -f '${flag}'`,
      onSwitchCmd: `echo "$FLEET_MODEL_DIGEST $FLEET_ROLLBACK" >> '${switched}'`,
    });
    await watch.until('h1', (s) => s.state === 'idle');
    await publishChain(f, [f.update.payload]);
    const s = await watch.until('h1', (s) => s.state === 'rolled_back');
    expect(s.reason).toBe('health-check-failed');
    expect(s.message).toMatch(/inference failed: NaN output/);
    expect(s.running).toBe(f.update.baseDigest);
    expect(await currentDigest(f, 'h1')).toBe(f.update.baseDigest);
    // The application was told of both switches.
    expect((await fs.readFile(switched, 'utf8')).trim().split('\n')).toEqual([`${f.update.targetDigest} 0`, `${f.update.baseDigest} 1`]);
    // A new release naming the same target is tried again.
    await fs.rm(flag);
    await publishChain(f, [f.update.payload]);
    const ok = await watch.until('h1', (s) => s.state === 'ok');
    expect(ok.running).toBe(f.update.targetDigest);
    await agent.idle();
  });

  it('a health command that hangs past its timeout rolls back (health-check-timeout)', async () => {
    f = own(await createFixture('health-hang'));
    const watch = await StatusWatch.start(f);
    await startAgent(f, 'h2', silentLogger, { healthCmd: 'sleep 30', healthTimeoutMs: 400 });
    await watch.until('h2', (s) => s.state === 'idle');
    await publishChain(f, [f.update.payload]);
    const s = await watch.until('h2', (s) => s.state === 'rolled_back');
    expect(s.reason).toBe('health-check-timeout');
    expect(await currentDigest(f, 'h2')).toBe(f.update.baseDigest);
  });
});

describe('versions, chains, rollback', () => {
  it('pruning keeps exactly the current and the previous version', async () => {
    f = own(await createFixture('prune'));
    const second = synthesizeUpdate(f.update.target, 2, 31);
    const watch = await StatusWatch.start(f);
    const { storage } = await startAgent(f, 'p1');
    await watch.until('p1', (s) => s.state === 'idle');
    await publishChain(f, [f.update.payload]);
    await watch.until('p1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest);
    await publishChain(f, [second.payload]);
    await watch.until('p1', (s) => s.state === 'ok' && s.running === second.targetDigest);
    expect(await modelFiles(storage.dir)).toEqual([`${f.update.targetDigest}.safetensors`, `${second.targetDigest}.safetensors`].sort());
    expect((await storage.pointer())!.previous).toBe(f.update.targetDigest);
  });

  it('a chain of three steps brings devices at each digest on it to the target; a device on no chain takes the full model', async () => {
    f = own(await createFixture('chain'));
    const v0 = f.base;
    const u1 = f.update;
    const u2 = synthesizeUpdate(u1.target, 2, 41);
    const u3 = synthesizeUpdate(u2.target, 2, 42);
    const stranger = synthesizeModel(55, SMALL_LAYERS);
    const starts: Array<[string, Uint8Array]> = [
      ['c0', v0],
      ['c1', u1.target],
      ['c2', u2.target],
      ['cx', stranger],
    ];
    const watch = await StatusWatch.start(f);
    for (const [id, model] of starts) {
      const file = path.join(f.dir, `${id}-initial.safetensors`);
      await fs.writeFile(file, model);
      await startAgent({ ...f, baseFile: file }, id);
    }
    for (const [id] of starts) await watch.until(id, (s) => s.state === 'idle');
    const r = await publishChain(f, [u3.payload, u1.payload, u2.payload], u3.target);
    expect(r.release.steps.filter((s) => s.from !== null)).toHaveLength(3);
    for (const [id] of starts) {
      const s = await watch.until(id, (s) => s.state === 'ok', 30_000);
      expect(s.running).toBe(u3.targetDigest);
      expect(await currentDigest(f, id)).toBe(u3.targetDigest);
    }
    // Bytes: a device one step away fetched one payload; the stranger fetched the whole model.
    expect(watch.latest.get('c2')!.totalBytes).toBe(u3.payload.byteLength);
    expect(watch.latest.get('cx')!.totalBytes).toBe(r.release.steps.find((s) => s.from === null)!.size);
  });

  it('operator rollback: a device holding the previous version switches back exactly; one that does not takes the full model, or refuses without it', async () => {
    f = own(await createFixture('rollback'));
    const watch = await StatusWatch.start(f);
    const { storage } = await startAgent(f, 'r1');
    const targetFile = path.join(f.dir, 'target-initial.safetensors');
    await fs.writeFile(targetFile, f.update.target);
    await watch.until('r1', (s) => s.state === 'idle');
    await publishChain(f, [f.update.payload]);
    await watch.until('r1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest);
    // A device that never ran the base (provisioned at the target).
    await startAgent({ ...f, baseFile: targetFile }, 'r2');
    await watch.until('r2', (s) => s.state === 'ok' || s.state === 'idle');
    // Roll back without a full model, with the rollout key alone (the earlier version's manifest is
    // retained since the publish): r1 switches back, r2 cannot.
    const trust = parseTrustFile(await fs.readFile(f.trustFile, 'utf8'));
    await withPublisher(f, (transport, _keys, rolloutKeys) => rollbackGroup({ transport, topics, keys: [], rolloutKeys, trust, model: MODEL, group: GROUP, ttlSeconds: 3600, log: silentLogger }));
    const back = await watch.until('r1', (s) => s.state === 'ok' && s.running === f!.update.baseDigest);
    expect(back.rollback).toBe(true);
    expect(Buffer.compare(await fs.readFile(path.join(storage.dir, 'current.safetensors')), Buffer.from(f.base))).toBe(0);
    const refused = await watch.until('r2', (s) => s.state === 'rejected');
    expect(refused.reason).toBe('wrong-base');
    // Forward again, then back with the full model: r2 now takes it.
    await publishChain(f, [f.update.payload]);
    await watch.until('r1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest && !s.rollback);
    await withPublisher(f, (transport, keys, rolloutKeys) => rollbackGroup({ transport, topics, keys, rolloutKeys, model: MODEL, group: GROUP, fullModel: f!.base, ttlSeconds: 3600, log: silentLogger }));
    const r2 = await watch.until('r2', (s) => s.state === 'ok' && s.running === f!.update.baseDigest);
    expect(r2.rollback).toBe(true);
    expect(await digestModelFile(path.join(f.dir, 'r2', 'current.safetensors'))).toBe(f.update.baseDigest);
  });
});
