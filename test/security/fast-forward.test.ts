/**
 * Hole 1 of issue 14: a freeze without a key. Anyone allowed to publish on a
 * release topic (an `operator`, or anyone on a broker without --auth)
 * retained a release whose seq was edited to 2^53-2, its signature broken.
 * The next honest publish took the highest seq of any release that merely
 * decoded, signed seq + 1 (MAX_SAFE_INTEGER), and every later release was
 * `replayed` on the devices until a new rollout key was rotated in.
 *
 * Now publishers, refresh, rollback and the rollout controller derive the next
 * seq only from releases that verify against the trust file; nothing is
 * published that fails the checks a device makes; and a seq above
 * issued x 1000 + 999 is refused by the signer and by the device.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cborDecode, cborEncode } from '../../protocol/cbor.ts';
import { composeRelease, decodeRelease, maxSeqAt, parseTrustFile, releaseParts, signManifest, verifyRelease, type SigningKey, type TrustFile } from '../../protocol/release.ts';
import { signEnvelope } from '../../protocol/signed.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { PublishError, publishManifest, publishUpdate } from '../../publisher/publish.ts';
import { refreshGroup } from '../../publisher/refresh.ts';
import { rollbackGroup } from '../../publisher/rollback.ts';
import { synthesizeUpdate } from '../../publisher/synth.ts';
import { ContentStore } from '../../server/content-store.ts';
import type { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { CHUNK, connect, createFixture, GROUP, MODEL, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { until } from '../support/wait.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

const common = { topics, model: MODEL, group: GROUP, chunkSize: CHUNK, log: silentLogger, settleMs: 300, ttlSeconds: 3600 };

/** The release retained on the group's topic now, as a fresh subscriber gets it. */
async function retained(t: MqttTransport): Promise<Uint8Array> {
  const topic = topics.release(GROUP, MODEL);
  let got: Uint8Array | undefined;
  const off = t.onMessage((tp, payload) => {
    if (tp === topic) got = payload;
  });
  await t.subscribe(topic, 1);
  const release = await until(() => got, { what: 'the retained release', timeoutMs: 10_000 });
  off();
  await t.unsubscribe(topic);
  return release;
}

/** The attacker's edit: the same release, the assignment's seq replaced, the old signatures kept (they no longer verify). */
function withSeq(release: Uint8Array, seq: number): Uint8Array {
  const parts = releaseParts(release);
  const env = cborDecode(parts.assignment) as { body: Uint8Array; sigs: unknown[] };
  const body = cborDecode(env.body) as Record<string, unknown>;
  return composeRelease({ manifest: parts.manifest, assignment: cborEncode({ body: cborEncode({ ...body, seq }), sigs: env.sigs }) });
}

async function setup(tag: string): Promise<{ f: Fixture; keys: { keys: SigningKey[]; rolloutKeys: SigningKey[]; trust: TrustFile }; watch: StatusWatch }> {
  f = own(await createFixture(tag));
  const keys = { keys: [await loadSigningKey(f.keyFile)], rolloutKeys: [await loadSigningKey(f.rolloutKeyFile)], trust: parseTrustFile(await fs.readFile(f.trustFile, 'utf8')) };
  return { f, keys, watch: await StatusWatch.start(f) };
}

describe('fast-forward without a key', () => {
  it('a retained release with an edited seq is ignored by the publisher, refresh and rollback; honest releases keep reaching ok', async () => {
    const { f, keys, watch } = await setup('sec-ff');
    await startAgent(f, 'ff1');
    await watch.until('ff1', (s) => s.state === 'idle');
    const pub = await connect(f, 'ff-publisher');
    const attacker = await connect(f, 'ff-attacker');

    const v1 = await publishUpdate({ ...common, ...keys, transport: pub, payloads: [f.update.payload] });
    await watch.until('ff1', (s) => s.state === 'ok' && s.seq === v1.release.seq && s.running === f.update.targetDigest);

    // The attack: the retained release, its seq edited to 2^53 - 2.
    const forged = withSeq(await retained(attacker), 2 ** 53 - 2);
    expect(() => verifyRelease(forged, keys.trust)).toThrow();
    await attacker.publish(topics.release(GROUP, MODEL), forged, { qos: 1, retain: true });
    await watch.until('ff1', (s) => s.state === 'rejected');
    expect(watch.latest.get('ff1')!.running).toBe(f.update.targetDigest);

    // Refresh and rollback have nothing they can trust to work from: refused, nothing published.
    await expect(refreshGroup({ ...common, ...keys, transport: pub })).rejects.toMatchObject({ code: 'untrusted-release' });
    await expect(rollbackGroup({ ...common, ...keys, transport: pub })).rejects.toMatchObject({ code: 'untrusted-release' });
    expect(Buffer.from(await retained(pub)).equals(Buffer.from(forged))).toBe(true);

    // Two honest publishes in a row (a freeze shows on the second): each reaches ok, seq within the ceiling.
    const u2 = synthesizeUpdate(f.update.target, 3, 21);
    const v2 = await publishUpdate({ ...common, ...keys, transport: pub, payloads: [f.update.payload, u2.payload] });
    expect(v2.release.seq).toBeLessThanOrEqual(maxSeqAt(v2.release.issued));
    await watch.until('ff1', (s) => s.state === 'ok' && s.seq === v2.release.seq && s.running === u2.targetDigest);
    const u3 = synthesizeUpdate(u2.target, 3, 22);
    const v3 = await publishUpdate({ ...common, ...keys, transport: pub, payloads: [f.update.payload, u2.payload, u3.payload] });
    expect(v3.release.seq).toBeGreaterThan(v2.release.seq);
    await watch.until('ff1', (s) => s.state === 'ok' && s.seq === v3.release.seq && s.running === u3.targetDigest);

    // Refresh now works from the verified release: devices acknowledge it.
    const r = await refreshGroup({ ...common, ...keys, transport: pub });
    expect(r.before.seq).toBe(v3.release.seq);
    await watch.until('ff1', (s) => s.state === 'ok' && s.seq === r.after.seq && s.running === u3.targetDigest);
    // The update server keeps the honest release for re-assertion after a broker restart.
    await f.broker!.updateServer!.idle();
    const stored = await new ContentStore(path.join(f.dir, 'broker', 'store')).getRelease(GROUP, MODEL);
    expect(decodeRelease(stored!).seq).toBe(r.after.seq);
  });

  it('the signer refuses a seq absurd for the time, and so does a device', async () => {
    const { f, keys, watch } = await setup('sec-ff-ceiling');
    await startAgent(f, 'ff2');
    await watch.until('ff2', (s) => s.state === 'idle');
    const pub = await connect(f, 'ff2-publisher');
    const v1 = await publishUpdate({ ...common, ...keys, transport: pub, payloads: [f.update.payload] });
    await watch.until('ff2', (s) => s.state === 'ok' && s.seq === v1.release.seq);

    // A publisher asked for an absurd seq: refused before anything is published.
    const err = await publishUpdate({ ...common, ...keys, transport: pub, payloads: [f.update.payload], seq: 2 ** 50 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PublishError);
    expect((err as PublishError).code).toBe('bad-seq');
    expect(decodeRelease(await retained(pub)).seq).toBe(v1.release.seq);
    // Nor is a manifest a device would call malformed.
    const badManifest = publishManifest({ transport: pub, topics, model: MODEL, keys: keys.keys }, { ...v1.release, target: 'not-a-digest' });
    await expect(badManifest).rejects.toMatchObject({ code: 'invalid-release' });

    // The same signed with the rollout key by hand (bypassing the signer's check): the device refuses it.
    const now = Math.floor(Date.now() / 1000);
    const manifest = signManifest({ model: MODEL, target: v1.release.target, steps: v1.release.steps, limits: v1.release.limits }, keys.keys);
    const parts = releaseParts(await retained(pub));
    const body = cborDecode((cborDecode(parts.assignment) as { body: Uint8Array }).body) as Record<string, unknown>;
    const absurd = composeRelease({ manifest, assignment: signEnvelope(cborEncode({ ...body, seq: maxSeqAt(now + 60) + 1, issued: now, expires: now + 3600 }), keys.rolloutKeys) });
    await pub.publish(topics.release(GROUP, MODEL), absurd, { qos: 1, retain: true });
    const refused = await watch.until('ff2', (s) => s.state === 'rejected');
    expect(refused.reason).toBe('malformed-release');
    expect(refused.running).toBe(f.update.targetDigest);
  });
});
