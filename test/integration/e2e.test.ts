import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeFrame, decodeRequest } from '../../protocol/frames.ts';
import { composeRelease, decodeRelease, releaseParts, signRelease } from '../../protocol/release.ts';
import { decodeEnvelope } from '../../protocol/signed.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { synthesizeModel, synthesizeUpdate } from '../../publisher/synth.ts';
import { chunkCount, chunkRange, sha256Hex } from '../../protocol/chunks.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { CHUNK, connect, createFixture, currentDigest, GROUP, MODEL, publish, SMALL_LAYERS, spawnDevice, StatusWatch, topics, type Fixture, untilLog } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';
import { transportWith } from '../support/transport-with.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

describe('end to end over TCP with Aedes on an ephemeral port', () => {
  it('three device processes download, verify, apply and ack', async () => {
    f = own(await createFixture('three'));
    const watch = await StatusWatch.start(f);
    const ids = ['dev-a', 'dev-b', 'dev-c'];
    for (const id of ids) spawnDevice(f, id);
    for (const id of ids) await watch.until(id, (s) => s.state === 'idle');
    const r = await publish(f);
    expect(r.release.steps[0].chunks).toBeGreaterThan(3);
    for (const id of ids) {
      const s = await watch.until(id, (s) => s.state === 'ok');
      expect(s.running).toBe(f.update.targetDigest);
      expect(s.bytes).toBe(f.update.payload.byteLength);
      expect(s.reason).toBeNull();
      expect(await currentDigest(f, id)).toBe(f.update.targetDigest);
      // The file applications load is byte-identical to the publisher's own apply.
      expect(sha256Hex(await fs.readFile(path.join(f.dir, id, 'current.safetensors')))).toBe(sha256Hex(f.update.target));
    }
    // Every device went through the named states in order.
    const seen: string[] = watch.history.filter((s) => s.device === 'dev-a').map((s) => s.state);
    const firstSeen = ['downloading', 'verifying', 'applying', 'testing', 'ok'].map((st) => seen.indexOf(st));
    expect(firstSeen.every((i) => i >= 0)).toBe(true);
    expect(firstSeen).toEqual([...firstSeen].sort((a, b) => a - b));
  });

  it('a device started after the publisher has exited still completes (the update server holds the content)', async () => {
    f = own(await createFixture('late'));
    await publish(f); // the publisher connects, uploads, publishes and disconnects
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'late-1');
    const s = await watch.until('late-1', (s) => s.state === 'ok');
    expect(s.running).toBe(f.update.targetDigest);
  });

  it('drops and counts a frame that does not match the chunk list, asks again, and ends on the right digest', async () => {
    f = own(await createFixture('inject', { updateServer: false }));
    // Run the update server with a delay on its answers so the forged frames arrive first.
    const { UpdateServer } = await import('../../server/update-server.ts');
    const { ContentStore } = await import('../../server/content-store.ts');
    const { silentLogger } = await import('../../util/log.ts');
    const serverT = await connect(f, 'slow-update-server');
    const slow = transportWith(serverT, {
      connected: true,
      publish: async (t: string, p: Uint8Array | string, o?: object) => {
        if (t.includes('/to/')) await new Promise((r) => setTimeout(r, 150));
        return serverT.publish(t, p, o);
      },
    });
    const server = new UpdateServer({ transport: slow, store: new ContentStore(path.join(f.dir, 'store')), topics, log: silentLogger });
    await server.start();

    // The attacker answers every chunk request at once with garbage of the right size.
    const attacker = await connect(f, 'attacker');
    const asked = new Map<number, number>();
    let forged = 0;
    attacker.onMessage((topic, payload) => {
      const p = topics.parse(topic);
      if (p?.kind !== 'request') return;
      const req = decodeRequest(payload);
      for (const i of req.want) {
        asked.set(i, (asked.get(i) ?? 0) + 1);
        if (forged >= 3) continue;
        forged++;
        const size = f!.update.payload.byteLength;
        const [b, e] = chunkRange(size, CHUNK, i);
        const frame = encodeFrame({ kind: 'chunk', updateId: p.updateId, index: i, count: chunkCount(size, CHUNK), data: new Uint8Array(e - b).fill(0xab) });
        void attacker.publish(topics.frames(p.model, p.updateId, p.deviceId), frame, { qos: 1 });
      }
    });
    await attacker.subscribe(topics.allRequests(), 1);

    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'victim');
    await watch.until('victim', (s) => s.state === 'idle');
    await publish(f);
    const s = await watch.until('victim', (s) => s.state === 'ok');
    expect(s.running).toBe(f.update.targetDigest);
    expect(forged).toBe(3);
    expect(s.badChunks).toBe(3);
    // The forged chunks were asked for again.
    const again = [...asked.values()].filter((n) => n >= 2).length;
    expect(again).toBeGreaterThanOrEqual(3);
    expect(await currentDigest(f, 'victim')).toBe(f.update.targetDigest);
    await server.stop();
  });

  it('refuses a release for a base the device does not run, names the reason, and leaves the model unchanged', async () => {
    f = own(await createFixture('wrongbase'));
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'dev-w');
    await watch.until('dev-w', (s) => s.state === 'idle');
    const before = await fs.readFile(path.join(f.dir, 'dev-w', 'current.safetensors'));
    // An update built from another model.
    const other = synthesizeUpdate(synthesizeModel(99, SMALL_LAYERS), 2, 100);
    await publish(f, other.payload);
    const s = await watch.until('dev-w', (s) => s.state === 'rejected');
    expect(s.reason).toBe('wrong-base');
    expect(s.message).toMatch(/No step of the release starts from the model this device runs/);
    expect(s.running).toBe(f.update.baseDigest);
    expect(Buffer.compare(await fs.readFile(path.join(f.dir, 'dev-w', 'current.safetensors')), before)).toBe(0);
    const mem = JSON.parse(await fs.readFile(path.join(f.dir, 'dev-w', 'state.json'), 'utf8')) as { refused: string[] };
    expect(mem.refused).toHaveLength(1);
  });

  it('refuses a release with a flipped signature byte, and does not process the re-delivered retained release again after a restart', async () => {
    f = own(await createFixture('badsig'));
    const watch = await StatusWatch.start(f);
    const child = spawnDevice(f, 'dev-s');
    await watch.until('dev-s', (s) => s.state === 'idle');
    const r = await publish(f);
    await watch.until('dev-s', (s) => s.state === 'ok');
    // Now a tampered re-sign of a newer release.
    const key = await loadSigningKey(f.keyFile);
    const rolloutKey = await loadSigningKey(f.rolloutKeyFile);
    const parts = releaseParts(signRelease({ ...r.release, seq: r.release.seq + 1, target: r.release.target }, [key], [rolloutKey]));
    const manifest = decodeEnvelope(parts.manifest, 'malformed-release', 'manifest');
    manifest.sigs[0].sig[10] ^= 0x01;
    const tampered = composeRelease({ assignment: parts.assignment, manifest: cborEncode({ body: manifest.body, sigs: manifest.sigs.map((s) => ({ k: s.keyId, s: s.sig })) }) });
    expect(decodeRelease(tampered).seq).toBe(r.release.seq + 1);
    const pub = await connect(f, 'tamperer');
    await pub.publish(topics.release(GROUP, MODEL), tampered, { qos: 1, retain: true });
    const s = await watch.until('dev-s', (s) => s.state === 'rejected');
    expect(s.reason).toBe('bad-signature');
    expect(s.running).toBe(f.update.targetDigest);
    // Restart the agent: the retained tampered release is delivered again and ignored.
    const { stopChild } = await import('../../platform/child-process.ts');
    await stopChild(child);
    spawnDevice(f, 'dev-s');
    await untilLog(path.join(f.dir, 'dev-s.log'), /not processed again.*"refused":true/, 10_000);
    const log = await fs.readFile(path.join(f.dir, 'dev-s.log'), 'utf8');
    expect(log).toMatch(/not processed again.*"refused":true/);
    expect(log.match(/release refused/g)).toHaveLength(1);
    expect(await currentDigest(f, 'dev-s')).toBe(f.update.targetDigest);
  });
});
