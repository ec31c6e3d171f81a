/**
 * Bad-input corpus, part 2: crafted releases and bad payloads, each against an
 * in-process agent on a real Aedes broker (with its update server). Every case
 * starts from a known running digest, must end `rejected` with its specific
 * reason in the device's retained status, and leave the installed model as it
 * was; each group ends with a valid release that still installs.
 */
import nacl from 'tweetnacl';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceAgent } from '../../device/agent.ts';
import { cborDecode, cborEncode } from '../../protocol/cbor.ts';
import { sha256Hex } from '../../protocol/chunks.ts';
import { encodePayload, type Payload, type TensorDelta } from '../../protocol/lowrank.ts';
import { applyToModel } from '../../protocol/delta-apply.ts';
import { encodeAssignment } from '../../protocol/assignment.ts';
import { encodeManifest, limitsOf } from '../../protocol/manifest.ts';
import { signingKeyFromSeed, signRelease, type ReleaseDraft, type ReleaseStep, type SigningKey, type TrustFile } from '../../protocol/release.ts';
import { writeSafetensors } from '../../protocol/safetensors.ts';
import type { DeviceStatus } from '../../protocol/status.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate, stepOf, uploadPayload } from '../../publisher/publish.ts';
import { synthesizeUpdate } from '../../publisher/synth.ts';
import type { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { CHUNK, connect, createFixture, currentDigest, GROUP, MODEL, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';

let cases = 0;
afterAll(() => console.log(`bad-input corpus, part 2 (releases, payloads): ${cases} cases`));

const nowSec = () => Math.floor(Date.now() / 1000);
const hex64 = (n: number) => sha256Hex(new Uint8Array([n, 0xc0, 0x51]));
const f32 = (...v: number[]) => new Uint8Array(Float32Array.from(v).buffer);
const fill32 = (n: number, x: number) => f32(...new Array<number>(n).fill(x));

/** One agent under test: run a case that must be refused with `reason`, model unchanged. */
async function expectRefused(fx: Fixture, watch: StatusWatch, agent: DeviceAgent, id: string, running: string, reason: string, act: () => Promise<unknown>): Promise<DeviceStatus> {
  cases++;
  await agent.idle();
  expect(['idle', 'ok', 'rejected', 'failed']).toContain(agent.state);
  expect(await currentDigest(fx, id)).toBe(running);
  const from = watch.history.length;
  const t0 = Date.now();
  await act();
  const s = await watch.after(id, from, t0, (s) => s.state === 'rejected' || s.state === 'failed' || s.state === 'ok');
  expect(`${s.state}/${s.reason}`).toBe(`rejected/${reason}`);
  expect(s.running).toBe(running);
  await agent.idle();
  expect(await currentDigest(fx, id)).toBe(running);
  return s;
}

// --- releases -------------------------------------------------------------------

describe('bad-input corpus: releases (release keys 2-of-2, a separate rollout key, payload limit 100 kB, 1,000 chunks)', () => {
  const ID = 'corpus-rel';
  let f: Fixture;
  let watch: StatusWatch;
  let agent: DeviceAgent;
  let pub: MqttTransport;
  let k1: SigningKey;
  let r1: SigningKey;
  let agentTrust: TrustFile;
  const k2 = signingKeyFromSeed(new Uint8Array(32).fill(21));
  const outsider = signingKeyFromSeed(new Uint8Array(32).fill(22));
  let running: string;
  let acceptedSeq: number;
  let lastSeq = 0;
  const nextSeq = () => (lastSeq = Math.max(lastSeq + 1, nowSec()));

  beforeAll(async () => {
    f = await createFixture('corpus-rel');
    k1 = await loadSigningKey(f.keyFile);
    r1 = await loadSigningKey(f.rolloutKeyFile);
    const trust: TrustFile = (agentTrust = { threshold: 2, keys: [k1, k2].map((k) => ({ id: k.id, publicKey: k.publicKey })), rollout: { threshold: 1, keys: [{ id: r1.id, publicKey: r1.publicKey }] } });
    watch = await StatusWatch.start(f);
    ({ agent } = await startAgent(f, ID, silentLogger, { trust, maxPayloadBytes: 100_000, maxChunks: 1000 }));
    pub = await connect(f, 'corpus-rel-publisher');
    await watch.until(ID, (s) => s.state === 'idle');
    // A first accepted release, so that replays have something to replay.
    const r = await publishUpdate({
      transport: pub,
      topics,
      payloads: [f.update.payload],
      keys: [k1, k2],
      rolloutKeys: [r1],
      trust,
      model: MODEL,
      group: GROUP,
      chunkSize: CHUNK,
      ttlSeconds: 3600,
      seq: nextSeq(),
      log: silentLogger,
    });
    acceptedSeq = r.release.seq;
    await watch.until(ID, (s) => s.state === 'ok' && s.running === f.update.targetDigest);
    running = f.update.targetDigest;
  }, 30_000);

  afterAll(async () => {
    await f?.close();
  });

  const body = (over: Partial<ReleaseDraft> = {}, step: Partial<ReleaseStep> = {}): ReleaseDraft => {
    const target = over.target ?? hex64(1);
    const sha = hex64(2);
    const now = nowSec();
    return {
      model: MODEL,
      group: GROUP,
      seq: nextSeq(),
      issued: now - 10,
      expires: now + 3600,
      target,
      rollback: false,
      previous: null,
      steps: [{ updateId: sha.slice(0, 32), from: running, to: target, size: 2000, sha256: sha, chunkSize: 1024, chunks: 2, listSha256: hex64(3), ...step }],
      ...over,
    };
  };
  const both = () => [k1, k2];
  type Sigs = (bytes: Uint8Array) => Array<{ k: string; s: Uint8Array }>;
  const sig = (k: SigningKey, bytes: Uint8Array) => ({ k: k.id, s: nacl.sign.detached(bytes, k.secretKey) });
  const manifestOf = (b: ReleaseDraft) => encodeManifest({ model: b.model, target: b.target, steps: b.steps, limits: b.limits ?? limitsOf(b.steps) });
  const assignmentOf = (b: ReleaseDraft, manifestBody: Uint8Array) =>
    encodeAssignment({
      model: b.model,
      group: b.group,
      seq: b.seq,
      issued: b.issued,
      expires: b.expires,
      rollback: b.rollback,
      previous: b.previous,
      manifest: sha256Hex(manifestBody),
    });
  /** A release with hand-made signatures: the manifest's (default: both release keys) and the assignment's (default: the rollout key). */
  const envelope = (b: ReleaseDraft, manifestSigs: Sigs = (m) => [sig(k1, m), sig(k2, m)], assignmentSigs: Sigs = (a) => [sig(r1, a)], manifestBody = manifestOf(b)) => {
    const a = assignmentOf(b, manifestBody);
    return cborEncode({ v: 1, manifest: cborEncode({ body: manifestBody, sigs: manifestSigs(manifestBody) }), assignment: cborEncode({ body: a, sigs: assignmentSigs(a) }) });
  };
  const signed = (b: ReleaseDraft, keys = both()) => signRelease(b, keys, [r1]);

  const releaseCases: Array<{ name: string; reason: string; bytes: () => Uint8Array }> = [
    { name: 'manifest: a flipped signature byte', reason: 'bad-signature', bytes: () => envelope(body(), (m) => [sig(k1, m), { ...sig(k2, m), s: sig(k2, m).s.map((x, i) => (i === 9 ? x ^ 1 : x)) }]) },
    { name: 'manifest: a valid signature over another body', reason: 'bad-signature', bytes: () => envelope(body(), (m) => [sig(k1, m), sig(k2, manifestOf(body({ target: hex64(5) })))]) },
    { name: 'manifest: too few signatures (1 of threshold 2)', reason: 'threshold-not-met', bytes: () => signed(body(), [k1]) },
    { name: 'manifest: the same release key twice', reason: 'threshold-not-met', bytes: () => envelope(body(), (m) => [sig(k1, m), sig(k1, m)]) },
    { name: 'manifest: one release key and one unknown key', reason: 'threshold-not-met', bytes: () => signed(body(), [k1, outsider]) },
    { name: 'manifest: signed by an unknown key only', reason: 'untrusted-key', bytes: () => signed(body(), [outsider]) },
    { name: 'manifest: signed by the rollout key (a stolen rollout key making new weights)', reason: 'wrong-role', bytes: () => envelope(body(), (m) => [sig(r1, m)]) },
    { name: 'assignment: signed by a release key instead of the rollout key', reason: 'wrong-role', bytes: () => envelope(body(), undefined, (a) => [sig(k1, a)]) },
    { name: 'assignment: signed by an unknown key', reason: 'untrusted-key', bytes: () => envelope(body(), undefined, (a) => [sig(outsider, a)]) },
    { name: 'assignment: a flipped signature byte', reason: 'bad-signature', bytes: () => envelope(body(), undefined, (a) => [{ ...sig(r1, a), s: sig(r1, a).s.map((x, i) => (i === 3 ? x ^ 0x40 : x)) }]) },
    {
      name: 'assignment: names another manifest (mix-and-match)',
      reason: 'manifest-mismatch',
      bytes: () => {
        const b = body();
        const a = assignmentOf(b, manifestOf(body({ target: hex64(6) })));
        const m = manifestOf(b);
        return cborEncode({ v: 1, manifest: cborEncode({ body: m, sigs: [sig(k1, m), sig(k2, m)] }), assignment: cborEncode({ body: a, sigs: [sig(r1, a)] }) });
      },
    },
    {
      name: 'assignment: for another model than its manifest',
      reason: 'manifest-mismatch',
      bytes: () => {
        const b = body();
        const m = manifestOf({ ...b, model: 'other-model' });
        return envelope(b, undefined, undefined, m);
      },
    },
    {
      name: 'manifest: limits over the device caps (5,000 chunks allowed, the device takes 1,000)',
      reason: 'payload-too-large',
      bytes: () => signed(body({ limits: { payloadBytes: 100_000, chunks: 5000, chunkBytes: 1024 } })),
    },
    { name: "manifest: a step over the manifest's own limits", reason: 'malformed-release', bytes: () => signed(body({ limits: { payloadBytes: 1000, chunks: 2, chunkBytes: 1024 } })) },
    { name: 'release: expired', reason: 'expired', bytes: () => signed(body({ issued: nowSec() - 7200, expires: nowSec() - 3600 })) },
    { name: 'release: issued a day in the future', reason: 'not-yet-valid', bytes: () => signed(body({ issued: nowSec() + 86_400, expires: nowSec() + 90_000 })) },
    { name: 'release: replayed sequence number', reason: 'replayed', bytes: () => signed(body({ seq: acceptedSeq })) },
    { name: 'release: lower sequence number', reason: 'replayed', bytes: () => signed(body({ seq: acceptedSeq - 1 })) },
    { name: 'release: wrong model', reason: 'wrong-model', bytes: () => signed(body({ model: 'other-model' })) },
    { name: 'release: wrong group', reason: 'wrong-group', bytes: () => signed(body({ group: 'other-group' })) },
    { name: 'release: wrong from-digest', reason: 'wrong-base', bytes: () => signed(body({}, { from: hex64(9) })) },
    { name: 'release: chunk count does not match size / chunk', reason: 'malformed-release', bytes: () => signed(body({}, { chunks: 3 })) },
    { name: 'release: absurd chunk count (> 2^24)', reason: 'malformed-release', bytes: () => signed(body({}, { size: 2 ** 25, chunkSize: 1, chunks: 2 ** 25 })) },
    { name: 'release: update id is not the payload hash', reason: 'malformed-release', bytes: () => signed(body({}, { updateId: hex64(7).slice(0, 32) })) },
    { name: 'release: a step that does not lead to the target', reason: 'malformed-release', bytes: () => signed(body({}, { to: hex64(8) })) },
    { name: 'release: expires before issued', reason: 'malformed-release', bytes: () => signed(body({ expires: nowSec() - 100 })) },
    { name: 'release: payload over the device limit', reason: 'payload-too-large', bytes: () => signed(body({}, { size: 200_000, chunks: Math.ceil(200_000 / 1024) })) },
    { name: 'release: malformed CBOR', reason: 'malformed-release', bytes: () => new Uint8Array([0xbf, 0x64, 0x62, 0x6f, 0xff, 0x00]) },
    { name: 'release: empty manifest sigs', reason: 'malformed-release', bytes: () => envelope(body(), () => []) },
    { name: 'release: a 63-byte signature', reason: 'malformed-release', bytes: () => envelope(body(), (m) => [sig(k1, m), { ...sig(k2, m), s: sig(k2, m).s.subarray(0, 63) }]) },
    { name: 'release: manifest body of protocol version 2', reason: 'malformed-release', bytes: () => envelope(body(), undefined, undefined, cborEncode({ ...(cborDecode(manifestOf(body())) as object), v: 2 })) },
    {
      name: 'release: a manifest where the assignment belongs, signed by the rollout key (type confusion)',
      reason: 'malformed-release',
      bytes: () => {
        const m = manifestOf(body());
        return cborEncode({ v: 1, manifest: cborEncode({ body: m, sigs: [sig(k1, m), sig(k2, m)] }), assignment: cborEncode({ body: m, sigs: [sig(r1, m)] }) });
      },
    },
  ];

  for (const c of releaseCases) {
    it(c.name, async () => {
      await expectRefused(f, watch, agent, ID, running, c.reason, () => pub.publish(topics.release(GROUP, MODEL), c.bytes(), { qos: 1, retain: true }));
    });
  }

  it('the agent still takes a valid release (signed by both keys) after all of them', async () => {
    await agent.idle();
    const u = synthesizeUpdate(f.update.target, 3, 77);
    const from = watch.history.length;
    const t0 = Date.now();
    await publishUpdate({
      transport: pub,
      topics,
      payloads: [u.payload],
      keys: [k1, k2],
      rolloutKeys: [r1],
      trust: agentTrust,
      model: MODEL,
      group: GROUP,
      chunkSize: CHUNK,
      ttlSeconds: 3600,
      seq: nextSeq(),
      log: silentLogger,
    });
    await watch.after(ID, from, t0, (s) => s.state === 'ok' && s.running === u.targetDigest);
    expect(await currentDigest(f, ID)).toBe(u.targetDigest);
  });
});

// --- payloads -----------------------------------------------------------------------

describe('bad-input corpus: payloads (validly signed releases naming bad payloads)', () => {
  const ID = 'corpus-pay';
  const ID8 = 'corpus-i8';
  const GROUP8 = 'i8-group';
  let f: Fixture;
  let watch: StatusWatch;
  let agent: DeviceAgent;
  let agent8: DeviceAgent;
  let pub: MqttTransport;
  let key: SigningKey;
  let rkey: SigningKey;
  let base: string;
  // A model with an I8 tensor beside an F32 one.
  const i8Model = writeSafetensors([
    { name: 'q.weight', dtype: 'I8', shape: [4, 4], data: new Uint8Array(16).map((_, i) => i) },
    { name: 'w', dtype: 'F32', shape: [4, 4], data: fill32(16, 0.5) },
  ]);
  let base8: string;
  let lastSeq = 0;
  const nextSeq = () => (lastSeq = Math.max(lastSeq + 1, nowSec()));

  beforeAll(async () => {
    f = await createFixture('corpus-pay');
    key = await loadSigningKey(f.keyFile);
    rkey = await loadSigningKey(f.rolloutKeyFile);
    base = f.update.baseDigest;
    watch = await StatusWatch.start(f);
    ({ agent } = await startAgent(f, ID, silentLogger));
    const file8 = path.join(f.dir, 'i8.safetensors');
    await fs.writeFile(file8, i8Model);
    ({ agent: agent8 } = await startAgent({ ...f, baseFile: file8 }, ID8, silentLogger, { group: GROUP8 }));
    base8 = await currentDigest(f, ID8);
    pub = await connect(f, 'corpus-pay-publisher');
    await watch.until(ID, (s) => s.state === 'idle');
    await watch.until(ID8, (s) => s.state === 'idle');
  }, 30_000);

  afterAll(async () => {
    await f?.close();
  });

  const viaPublish =
    (payload: Uint8Array, group = GROUP) =>
    () =>
      publishUpdate({ transport: pub, topics, payloads: [payload], keys: [key], rolloutKeys: [rkey], model: MODEL, group, chunkSize: CHUNK, ttlSeconds: 3600, seq: nextSeq(), log: silentLogger });
  /** For payloads publishUpdate refuses to decode: upload the bytes, sign a release naming them. */
  const viaUpload =
    (payload: Uint8Array, over: Partial<ReleaseStep> = {}) =>
    async () => {
      const up = await uploadPayload({ transport: pub, topics, model: MODEL, payload, chunkSize: CHUNK, log: silentLogger });
      const target = hex64(40);
      const now = nowSec();
      const b: ReleaseDraft = { model: MODEL, group: GROUP, seq: nextSeq(), issued: now, expires: now + 3600, target, steps: [{ ...stepOf(up, base, target), ...over }], rollback: false, previous: null };
      await pub.publish(topics.release(GROUP, MODEL), signRelease(b, [key], [rkey]), { qos: 1, retain: true });
    };
  const lowRank = (name: string, shape: number[], u: Uint8Array, v: Uint8Array, rank = 1): TensorDelta => ({ name, shape, rank, dtype: 'f32', u, v });
  const payloadOf = (tensors: TensorDelta[], b = base, t = hex64(41)) => encodePayload({ v: 1, base: b, target: t, tensors });
  /** Raw CBOR, for payloads the encoder refuses. */
  const rawPayload = (tensors: unknown[], extra: Record<string, unknown> = {}) => cborEncode({ v: 1, base, target: hex64(42), tensors, ...extra });
  const w0 = (over: Record<string, unknown> = {}) => ({ name: 'layers.0.weight', shape: [64, 96], rank: 1, dtype: 'f32', u: fill32(64, 0.01), v: fill32(96, 0.01), ...over });

  const payloadCases: Array<{ name: string; reason: string; act: () => () => Promise<unknown>; agent8?: boolean }> = [
    { name: 'payload: shape mismatch', reason: 'shape-mismatch', act: () => viaPublish(payloadOf([lowRank('layers.0.weight', [32, 96], fill32(32, 0.01), fill32(96, 0.01))])) },
    { name: 'payload: a tensor the model does not have', reason: 'shape-mismatch', act: () => viaPublish(payloadOf([lowRank('layers.9.weight', [4, 4], fill32(4, 0.01), fill32(4, 0.01))])) },
    { name: 'payload: factors that overflow to Inf when applied', reason: 'non-finite', act: () => viaPublish(payloadOf([lowRank('layers.0.weight', [64, 96], fill32(64, 1e30), fill32(96, 1e30))])) },
    { name: 'payload: NaN in a factor', reason: 'non-finite', act: () => viaUpload(rawPayload([w0({ u: f32(NaN, ...new Array<number>(63).fill(0)) })])) },
    { name: 'payload: Inf in an f16 factor', reason: 'non-finite', act: () => viaUpload(rawPayload([w0({ dtype: 'f16', u: new Uint8Array(128).fill(0).map((_, i) => (i === 1 ? 0x7c : 0)), v: new Uint8Array(192) })])) },
    {
      name: 'payload: NaN in an i8 scale',
      reason: 'non-finite',
      act: () => viaUpload(rawPayload([w0({ dtype: 'i8', u: new Uint8Array(64), v: new Uint8Array(96), scales: { u: f32(NaN, ...new Array<number>(63).fill(1)), v: f32(1) } })])),
    },
    { name: 'payload: rank 0', reason: 'malformed-payload', act: () => viaUpload(rawPayload([w0({ rank: 0, u: new Uint8Array(0), v: new Uint8Array(0) })])) },
    { name: 'payload: factor bytes of the wrong length', reason: 'malformed-payload', act: () => viaUpload(rawPayload([w0({ u: fill32(63, 0.01) })])) },
    { name: 'payload: an unexpected field', reason: 'malformed-payload', act: () => viaUpload(rawPayload([w0()], { extra: true })) },
    { name: 'payload: the same tensor twice', reason: 'malformed-payload', act: () => viaUpload(rawPayload([w0(), w0()])) },
    { name: 'payload: truncated bytes (the release hashes the truncated bytes)', reason: 'malformed-payload', act: () => viaUpload(f.update.payload.subarray(0, f.update.payload.byteLength - 100)) },
    { name: 'payload: not CBOR at all', reason: 'malformed-payload', act: () => viaUpload(new Uint8Array(3000).fill(0xff)) },
    {
      name: 'payload: names other base/target digests than the release',
      reason: 'malformed-payload',
      act: () => viaUpload(payloadOf([lowRank('layers.0.weight', [64, 96], fill32(64, 0.01), fill32(96, 0.01))], hex64(50), hex64(51))),
    },
    {
      name: 'payload: bytes that do not hash to the release value',
      reason: 'payload-hash-mismatch',
      act: () => {
        const p = payloadOf([lowRank('layers.2.weight', [10, 128], fill32(10, 0.01), fill32(128, 0.01))]);
        const sha = sha256Hex(p);
        return viaUpload(p, { sha256: sha.slice(0, 63) + (sha[63] === '0' ? '1' : '0') });
      },
    },
    { name: 'payload: the result does not have the digest the release names', reason: 'digest-mismatch', act: () => viaPublish(payloadOf([lowRank('layers.0.weight', [64, 96], fill32(64, 0.01), fill32(96, 0.01))])) },
    { name: 'payload: an update touching an I8 tensor', reason: 'unsupported-dtype', agent8: true, act: () => viaPublish(payloadOf([lowRank('q.weight', [4, 4], fill32(4, 0.1), fill32(4, 0.1))], base8), GROUP8) },
  ];

  for (const c of payloadCases) {
    it(c.name, async () => {
      const [a, id, running] = c.agent8 ? [agent8, ID8, base8] : [agent, ID, base];
      await expectRefused(f, watch, a, id, running, c.reason, c.act());
    });
  }

  it('both agents still take a valid update after all of them', async () => {
    const from = watch.history.length;
    const t0 = Date.now();
    await viaPublish(f.update.payload)();
    await watch.after(ID, from, t0, (s) => s.state === 'ok' && s.running === f.update.targetDigest);
    expect(await currentDigest(f, ID)).toBe(f.update.targetDigest);
    const draft: Payload = { v: 1, base: base8, target: '0'.repeat(64), tensors: [lowRank('w', [4, 4], fill32(4, 0.1), fill32(4, 0.1))] };
    const target8 = applyToModel(i8Model, draft).digest;
    await viaPublish(encodePayload({ ...draft, target: target8 }), GROUP8)();
    await watch.after(ID8, from, t0, (s) => s.state === 'ok' && s.running === target8);
    expect(await currentDigest(f, ID8)).toBe(target8);
  });
});
