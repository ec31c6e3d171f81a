/**
 * TUF roles against real agents on a real Aedes broker: release keys sign
 * manifests, the rollout key signs group assignments, `fleet refresh`
 * re-signs assignments, and a trust file signed by the release threshold
 * rotates the devices' keys (and survives a restart).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { maxSeqAt, parseTrustFile, signingKeyFromSeed, signTrust, trustOf, type SigningKey, type TrustFile } from '../../protocol/release.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishManifestOnly, publishUpdate, PublishError } from '../../publisher/publish.ts';
import { refreshGroup } from '../../publisher/refresh.ts';
import { rollbackGroup } from '../../publisher/rollback.ts';
import { synthesizeUpdate } from '../../publisher/synth.ts';
import { silentLogger } from '../../util/log.ts';
import { CHUNK, connect, createFixture, currentDigest, exists, GROUP, MODEL, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

interface Setup {
  f: Fixture;
  release: SigningKey;
  rollout: SigningKey;
  trust: TrustFile;
  watch: StatusWatch;
}

async function setup(tag: string): Promise<Setup> {
  f = own(await createFixture(tag));
  const release = await loadSigningKey(f.keyFile);
  const rollout = await loadSigningKey(f.rolloutKeyFile);
  const trust = parseTrustFile(await fs.readFile(f.trustFile, 'utf8'));
  expect(trust.rollout?.keys.map((k) => k.id)).toEqual([rollout.id]);
  expect(trust.keys.map((k) => k.id)).toEqual([release.id]);
  return { f, release, rollout, trust, watch: await StatusWatch.start(f) };
}

const common = { topics, model: MODEL, chunkSize: CHUNK, log: silentLogger, settleMs: 300 };

describe('release keys and the rollout key', () => {
  it('the release engineer signs a manifest offline-style; the rollout key alone assigns it; a stolen rollout key cannot ship new weights', async () => {
    const { f, release, rollout, trust, watch } = await setup('roles-split');
    await startAgent(f, 'r1');
    await watch.until('r1', (s) => s.state === 'idle');
    const pub = await connect(f, 'roles-pub');

    // Release engineer: upload and publish only the manifest (no assignment: devices do nothing).
    const m = await publishManifestOnly({ ...common, transport: pub, payloads: [f.update.payload], keys: [release] });
    expect(m.target).toBe(f.update.targetDigest);
    // Rollout operator: the rollout key alone assigns that manifest to the group.
    const r = await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload], keys: [], rolloutKeys: [rollout], trust, group: GROUP, ttlSeconds: 3600 });
    expect(r.release.manifest).toBe(m.manifest);
    const ok = await watch.until('r1', (s) => s.state === 'ok' && s.running === f.update.targetDigest);
    expect(ok.seq).toBe(r.release.seq);

    // What the rollout key can do: move the group between signed manifests (here: back to the base).
    const back = await rollbackGroup({ ...common, transport: pub, keys: [], rolloutKeys: [rollout], trust, group: GROUP, ttlSeconds: 3600 });
    expect(back.to).toBe(f.update.baseDigest);
    await watch.until('r1', (s) => s.state === 'ok' && s.running === f.update.baseDigest && s.rollback === true);

    // With the rollout key alone, new weights have no manifest: refused before anything is published.
    const evil = synthesizeUpdate(f.update.target, 2, 666);
    const e = await publishUpdate({ ...common, transport: pub, payloads: [evil.payload], keys: [], rolloutKeys: [rollout], trust, group: GROUP, ttlSeconds: 3600 }).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(PublishError);
    expect((e as PublishError).code).toBe('no-manifest');
    // …and a manifest it signs itself is refused by the device as the wrong role (the rollout key in the release role's place).
    await publishUpdate({ ...common, transport: pub, payloads: [evil.payload], keys: [rollout], rolloutKeys: [rollout], trust: trustOf([rollout]), group: GROUP, ttlSeconds: 3600 });
    // (A refusal before the signatures hold names no seq: the body is not trusted.)
    const refused = await watch.until('r1', (s) => s.state === 'rejected');
    expect(refused.reason).toBe('wrong-role');
    expect(await currentDigest(f, 'r1')).toBe(f.update.baseDigest);
  });

  it('fleet refresh re-signs an assignment before it expires: same manifest, higher seq, later expiry; the device acks without downloading', async () => {
    const { f, release, rollout, trust, watch } = await setup('roles-refresh');
    await startAgent(f, 'r2');
    await watch.until('r2', (s) => s.state === 'idle');
    const pub = await connect(f, 'refresh-pub');
    const first = await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload], keys: [release], rolloutKeys: [rollout], group: GROUP, ttlSeconds: 120 });
    await watch.until('r2', (s) => s.state === 'ok' && s.seq === first.release.seq);
    const r = await refreshGroup({ ...common, transport: pub, keys: [], rolloutKeys: [rollout], trust, group: GROUP, ttlSeconds: 30 * 86400 });
    expect(r.after.manifest).toBe(first.release.manifest);
    expect(r.after.seq).toBeGreaterThan(first.release.seq);
    expect(r.after.expires).toBeGreaterThan(first.release.expires + 86400);
    const s = await watch.until('r2', (s) => s.state === 'ok' && s.seq === r.after.seq);
    expect(s.bytes).toBe(0);
    expect(s.running).toBe(f.update.targetDigest);
  });
});

describe('key rotation', () => {
  it('a trust file signed by the current release threshold is taken, kept across a restart, and the old release key no longer works; one signed by the rollout key is not', async () => {
    const { f, release, rollout, trust, watch } = await setup('roles-rotate');
    const { agent } = await startAgent(f, 'r3');
    await watch.until('r3', (s) => s.state === 'idle');
    const pub = await connect(f, 'rotate-pub');
    const newRelease = signingKeyFromSeed(new Uint8Array(32).fill(77));
    const next = trustOf([newRelease], [rollout], 1, 1);

    // Signed by the rollout key: refused, nothing changes.
    await pub.publish(topics.trust(), signTrust(next, [rollout]), { qos: 1, retain: true });
    await agent.idle();
    await expectNoEventWithin(300, () => exists(path.join(f.dir, 'r3', 'trust.json')), 'r3 storing a trust file signed by the rollout key');
    await agent.idle();
    await expect(fs.access(path.join(f.dir, 'r3', 'trust.json'))).rejects.toThrow();

    // Signed by the current release key: stored, and used from now on.
    await pub.publish(topics.trust(), signTrust(next, [release]), { qos: 1, retain: true });
    await until(() => exists(path.join(f.dir, 'r3', 'trust.json')), { what: 'r3 storing the trust file the release key signed', timeoutMs: 10_000 });
    expect(parseTrustFile(await fs.readFile(path.join(f.dir, 'r3', 'trust.json'), 'utf8'))).toEqual(next);

    // The old release key is not trusted any more.
    await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload], keys: [release], rolloutKeys: [rollout], trust, group: GROUP, ttlSeconds: 3600 });
    const refused = await watch.until('r3', (s) => s.state === 'rejected');
    expect(refused.reason).toBe('untrusted-key');

    // Restart the agent with the original trust file: the rotated one on disk wins (higher version).
    await agent.stop();
    f.agents.splice(f.agents.indexOf(agent), 1);
    await startAgent(f, 'r3');
    const u = synthesizeUpdate(f.update.target, 3, 99);
    const fresh = await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload, u.payload], keys: [newRelease], rolloutKeys: [rollout], trust: next, group: GROUP, ttlSeconds: 3600 });
    await watch.until('r3', (s) => s.state === 'ok' && s.seq === fresh.release.seq && s.running === u.targetDigest);
  });
});

describe('fast-forward', () => {
  it('a compromised rollout key cannot sign an absurd seq; the highest it may sign blocks lower ones as replayed, until the trust file names a new rollout key', async () => {
    const { f, release, rollout, trust, watch } = await setup('roles-ff');
    await startAgent(f, 'r4');
    await watch.until('r4', (s) => s.state === 'idle');
    const pub = await connect(f, 'ff-pub');
    // The signer refuses a seq above issued x 1000 + 999 (a device would refuse it as malformed).
    const absurd = await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload], keys: [release], rolloutKeys: [rollout], group: GROUP, ttlSeconds: 3600, seq: 2 ** 50 }).catch((e: unknown) => e);
    expect(absurd).toMatchObject({ code: 'bad-seq' });
    // The most it can do: the ceiling for now.
    const huge = maxSeqAt(Math.floor(Date.now() / 1000));
    await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload], keys: [release], rolloutKeys: [rollout], group: GROUP, ttlSeconds: 3600, seq: huge });
    await watch.until('r4', (s) => s.state === 'ok' && s.seq === huge);
    const u = synthesizeUpdate(f.update.target, 3, 5);
    // A lower seq is refused before it is published (devices would refuse it as replayed).
    const lower = await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload, u.payload], keys: [release], rolloutKeys: [rollout], trust, group: GROUP, ttlSeconds: 3600, seq: huge - 1 }).catch(
      (e: unknown) => e,
    );
    expect(lower).toMatchObject({ code: 'bad-seq' });

    // Recovery: the release key signs a trust file with a new rollout key; sequence numbers start again.
    const newRollout = signingKeyFromSeed(new Uint8Array(32).fill(88));
    const next = trustOf([release], [newRollout], 1, 1);
    await pub.publish(topics.trust(), signTrust(next, [release]), { qos: 1, retain: true });
    await until(() => exists(path.join(f.dir, 'r4', 'trust.json')), { what: 'r4 storing the new trust file', timeoutMs: 10_000 });
    const fresh = await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload, u.payload], keys: [release], rolloutKeys: [newRollout], trust: next, group: GROUP, ttlSeconds: 3600, seq: 10 });
    await watch.until('r4', (s) => s.state === 'ok' && s.seq === fresh.release.seq && s.running === u.targetDigest);
  });
});
