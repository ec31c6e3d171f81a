import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseTrustFile, pathFrom, signingKeyFromSeed, verifyRelease, type ReleaseBody, type SigningKey } from '../../protocol/release.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate, PublishError, type PublishOptions, type PublishResult } from '../../publisher/publish.ts';
import { rollbackGroup, type RollbackOptions } from '../../publisher/rollback.ts';
import { synthesizeModel, synthesizeUpdate, type SynthUpdate } from '../../publisher/synth.ts';
import { silentLogger } from '../../util/log.ts';
import { CHUNK, connect, createFixture, GROUP, MODEL, SMALL_LAYERS, topics, type Fixture } from '../support/harness.ts';

let f: Fixture;
let key: SigningKey;
let rkey: SigningKey;
/** base → t1 (the fixture's update) and t1 → t2. */
let u1: SynthUpdate;
let u2: SynthUpdate;
let n = 0;

beforeEach(async () => {
  f = await createFixture('publish');
  key = await loadSigningKey(f.keyFile);
  rkey = await loadSigningKey(f.rolloutKeyFile);
  u1 = f.update;
  u2 = synthesizeUpdate(u1.target, 2, 21);
});
afterEach(async () => {
  await f.close();
});

async function publish(payloads: Uint8Array[], over: Partial<PublishOptions> = {}): Promise<PublishResult> {
  const transport = await connect(f, `test-publisher-${++n}`);
  return publishUpdate({
    transport,
    topics,
    payloads,
    keys: [key],
    rolloutKeys: [rkey],
    model: MODEL,
    group: GROUP,
    chunkSize: CHUNK,
    ttlSeconds: 3600,
    log: silentLogger,
    ...over,
  });
}

async function rollback(over: Partial<RollbackOptions> = {}) {
  const transport = await connect(f, `test-rollback-${++n}`);
  return rollbackGroup({ transport, topics, keys: [key], rolloutKeys: [rkey], model: MODEL, group: GROUP, chunkSize: CHUNK, ttlSeconds: 3600, log: silentLogger, ...over });
}

/** The retained release as a device would read it (verified with the fixture's trust file); undefined when none comes. */
async function readRelease(): Promise<ReleaseBody | undefined> {
  const trust = parseTrustFile(await fs.readFile(f.trustFile, 'utf8'));
  const t = await connect(f, `test-reader-${++n}`);
  const topic = topics.release(GROUP, MODEL);
  const got = new Promise<ReleaseBody | undefined>((resolve, reject) => {
    const timer = setTimeout(() => resolve(undefined), 1000);
    t.onMessage((tp, payload) => {
      if (tp !== topic || payload.byteLength === 0) return;
      clearTimeout(timer);
      try {
        resolve(verifyRelease(payload, trust));
      } catch (e) {
        reject(e as Error);
      }
    });
  });
  await t.subscribe(topic, 1);
  return got;
}

async function refusal(p: Promise<unknown>): Promise<PublishError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(PublishError);
  return e as PublishError;
}

const stored = (updateId: string) =>
  fs.access(path.join(f.dir, 'broker', 'store', 'updates', updateId, 'payload')).then(
    () => true,
    () => false,
  );

describe('publishUpdate', () => {
  it('publishes a chain of 2 updates: base → t1 → t2, target t2, previous = where the chain starts', async () => {
    const r = await publish([u1.payload, u2.payload]);
    const b = r.release;
    expect(b.target).toBe(u2.targetDigest);
    expect(b.steps.map((s) => [s.from, s.to])).toEqual([
      [f.update.baseDigest, u1.targetDigest],
      [u1.targetDigest, u2.targetDigest],
    ]);
    expect(b.previous).toBe(f.update.baseDigest);
    expect(b.rollback).toBe(false);
    expect(r.uploads).toHaveLength(2);
    expect(r.updateId).toBe(b.steps[1].updateId);
    for (const s of b.steps) expect(await stored(s.updateId)).toBe(true);
    expect(pathFrom(b, f.update.baseDigest)).toEqual(b.steps);
    expect(pathFrom(b, u1.targetDigest)).toEqual([b.steps[1]]);
    expect(await readRelease()).toEqual(b);
  });

  it('payloads in the wrong order still chain', async () => {
    const r = await publish([u2.payload, u1.payload]);
    expect(r.release.steps.map((s) => [s.from, s.to])).toEqual([
      [f.update.baseDigest, u1.targetDigest],
      [u1.targetDigest, u2.targetDigest],
    ]);
    expect(await readRelease()).toEqual(r.release);
  });

  it("publishing again records the first release's target as previous, with a higher seq", async () => {
    const first = await publish([u1.payload]);
    expect(first.release.previous).toBe(f.update.baseDigest);
    const second = await publish([u2.payload]);
    expect(second.release.previous).toBe(u1.targetDigest);
    expect(second.release.seq).toBeGreaterThan(first.release.seq);
    expect(second.alreadyStored).toBe(false);
    const back = await readRelease();
    expect(back).toEqual(second.release);
    expect(back!.previous).toBe(u1.targetDigest);
    // Re-publishing the same target (now with more ways to reach it) keeps the version before it.
    const third = await publish([u1.payload, u2.payload]);
    expect(third.release.previous).toBe(u1.targetDigest);
  });

  it('refuses payloads that do not chain, and leaves the current release alone', async () => {
    const first = await publish([u1.payload]);
    const other = synthesizeUpdate(synthesizeModel(99, SMALL_LAYERS), 2, 100);
    const e1 = await refusal(publish([u1.payload, other.payload]));
    expect(e1.code).toBe('bad-update');
    expect(e1.message).toMatch(/do not form chains ending at one target/);
    const fork = synthesizeUpdate(f.base, 2, 50);
    const e2 = await refusal(publish([u1.payload, fork.payload]));
    expect(e2.message).toMatch(/two updates start from/);
    const e3 = await refusal(publish([u1.payload, u1.payload]));
    expect(e3.message).toMatch(/two updates start from/);
    const e4 = await refusal(publish([f.base]));
    expect(e4.message).toMatch(/update 1 is not a valid payload/);
    expect(await readRelease()).toEqual(first.release);
  });

  it('adds a full-model step for the target, and refuses a full model with another digest', async () => {
    const e = await refusal(publish([u1.payload, u2.payload], { fullModel: u1.target }));
    expect(e.code).toBe('bad-update');
    expect(e.message).toMatch(/full model's digest .* is not the updates' target/);
    expect(await readRelease()).toBeUndefined();

    const r = await publish([u2.payload, u1.payload], { fullModel: u2.target });
    const b = r.release;
    expect(b.steps).toHaveLength(3);
    expect(b.steps[2]).toMatchObject({ from: null, to: u2.targetDigest, size: u2.target.byteLength });
    expect(await stored(b.steps[2].updateId)).toBe(true);
    expect(pathFrom(b, 'ee'.repeat(32))).toEqual([b.steps[2]]);
    expect(pathFrom(b, f.update.baseDigest)).toEqual(b.steps.slice(0, 2));
    expect(await readRelease()).toEqual(b);
  });

  it('refuses to name another chunking than the one the update server holds', async () => {
    const first = await publish([u1.payload]);
    expect(first.release.steps[0].chunks).toBeGreaterThan(2);
    const e = await refusal(publish([u1.payload], { chunkSize: CHUNK * 8 }));
    expect(e.code).toBe('upload-refused');
    expect(e.message).toMatch(/already holds .* cut into \d+ chunks/);
    const again = await publish([u1.payload]);
    expect(again.alreadyStored).toBe(true);
  });
});

describe('rollbackGroup', () => {
  it('assigns the manifest the release keys signed for the previous version, with the rollout key alone: rollback true, previous = the current target, a higher seq', async () => {
    const first = await publish([u1.payload]);
    const second = await publish([u2.payload]);
    const trust = parseTrustFile(await fs.readFile(f.trustFile, 'utf8'));
    const r = await rollback({ keys: [], trust });
    expect(r.from).toBe(u2.targetDigest);
    expect(r.to).toBe(u1.targetDigest);
    expect(r.replacedSeq).toBe(second.release.seq);
    const b = await readRelease();
    expect(b).toEqual(r.release);
    expect(b).toMatchObject({ target: u1.targetDigest, rollback: true, previous: u2.targetDigest, steps: first.release.steps, manifest: first.release.manifest });
    expect(b!.seq).toBeGreaterThan(second.release.seq);
    // Rolling back the rollback goes forward again.
    const again = await rollback();
    expect(again.release).toMatchObject({ target: u2.targetDigest, previous: u1.targetDigest, rollback: true });
    expect(again.release.seq).toBeGreaterThan(b!.seq);
  });

  it('with the previous model in full: one full-model step; a model with another digest is refused', async () => {
    await publish([u1.payload]);
    const second = await publish([u2.payload]);
    const e = await refusal(rollback({ fullModel: u2.target }));
    expect(e.code).toBe('bad-update');
    expect(e.message).toMatch(/is not the previous version/);
    expect(await readRelease()).toEqual(second.release);

    const r = await rollback({ fullModel: u1.target });
    expect(r.upload).toBeDefined();
    const b = await readRelease();
    expect(b).toEqual(r.release);
    expect(b!.steps).toHaveLength(1);
    expect(b!.steps[0]).toMatchObject({ from: null, to: u1.targetDigest, size: u1.target.byteLength, updateId: r.upload!.updateId });
    expect(await stored(r.upload!.updateId)).toBe(true);
    expect(pathFrom(b!, u2.targetDigest)).toEqual(b!.steps);
  });

  it('fails clearly with no previous version, with no release, and with a release not signed by the keys', async () => {
    const e0 = await refusal(rollback());
    expect(e0.code).toBe('no-release');
    expect(e0.message).toMatch(/no release is published/);

    // A full model alone, with nothing before it: no previous version is known.
    const first = await publish([], { fullModel: u1.target });
    const e1 = await refusal(rollback());
    expect(e1.code).toBe('no-previous');
    expect(e1.message).toMatch(/no previous version is known for this group/);

    // A release by keys the rollback's trust file does not name (signed and published as its own keys see it).
    const other = signingKeyFromSeed(new Uint8Array(32).fill(9));
    await publish([u2.payload], { keys: [other], rolloutKeys: [other] });
    const e2 = await refusal(rollback());
    expect(e2.code).toBe('untrusted-release');
    expect(e2.message).toMatch(/does not verify against the trust file/);
    expect(first.release.previous).toBeNull();
  });

  it('refuses an explicit seq that is not above the current one', async () => {
    await publish([u1.payload]);
    const second = await publish([u2.payload]);
    const e = await refusal(rollback({ seq: second.release.seq }));
    expect(e.code).toBe('bad-seq');
    expect((await readRelease())!.seq).toBe(second.release.seq);
  });
});
