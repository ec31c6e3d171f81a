import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { sha256Hex } from '../../protocol/chunks.ts';
import { decodePayload } from '../../protocol/lowrank.ts';
import { digestOnnxFile } from '../../util/onnx-file.ts';
import { publishUpdate } from '../../publisher/publish.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { CHUNK, createFixture, fixtureKeys, GROUP, MODEL, publish, runFleet, spawnDevice, StatusWatch, tempDir, topics, type Fixture } from '../support/harness.ts';
import { NET_SHAPES, netModel, netWeights, plusRankOne } from '../support/onnx-models.ts';
import { readUpdateFile } from '../../util/update-file.ts';

let f: Fixture | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await f?.close();
  f = undefined;
  for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
});

/** a.onnx and a retrained b.onnx (Conv, Gemm and MatMul weights and the shared bias changed). */
async function twoModels(dir: string): Promise<{ a: string; b: string }> {
  const w = netWeights(21);
  const t = {
    ...w,
    conv_w: plusRankOne(w.conv_w, NET_SHAPES.conv_w[0], 31),
    fc_w: plusRankOne(w.fc_w, NET_SHAPES.fc_w[0], 33),
    mm_w: plusRankOne(w.mm_w, NET_SHAPES.mm_w[0], 35),
    shared_bias: Float64Array.from(w.shared_bias, (x) => x + 0.02),
  };
  const a = path.join(dir, 'a.onnx');
  const b = path.join(dir, 'b.onnx');
  await fs.writeFile(a, netModel(w));
  await fs.writeFile(b, netModel(t));
  return { a, b };
}

describe('ONNX models through the fleet command', () => {
  it('build, inspect and apply take .onnx files; a changed graph is refused naming the difference', async () => {
    const dir = await tempDir('onnx-cli');
    dirs.push(dir);
    const { a, b } = await twoModels(dir);
    const upd = path.join(dir, 'u.cbor');
    const built = await runFleet(['build', '--base', a, '--target', b, '--rank', '1', '--out', upd, '--json']);
    expect(built.code, built.err).toBe(0);
    const report = JSON.parse(built.out) as { baseDigest: string; targetDigest: string; tensors: Array<{ name: string }> };
    expect(report.baseDigest).toBe(await digestOnnxFile(a));
    expect(report.tensors.map((t) => t.name)).toEqual(['conv_w', 'fc_w', 'mm_w', 'shared_bias']);

    const inspected = await runFleet(['inspect', upd, '--base', a, '--json']);
    expect(inspected.code, inspected.err).toBe(0);
    expect(JSON.parse(inspected.out).modelBytes).toBe((await fs.stat(a)).size);

    const out = path.join(dir, 'c.onnx');
    const applied = await runFleet(['apply', '--model', a, '--update', upd, '--out', out]);
    expect(applied.code, applied.err).toBe(0);
    expect(await digestOnnxFile(out)).toBe(report.targetDigest);
    // Applied to the wrong model (the target itself): refused, nothing written.
    const wrong = await runFleet(['apply', '--model', b, '--update', upd, '--out', path.join(dir, 'x.onnx')]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.err).toMatch(/wrong-base|digest/);
    await expect(fs.stat(path.join(dir, 'x.onnx'))).rejects.toThrow();

    const sig = path.join(dir, 'sigmoid.onnx');
    await fs.writeFile(sig, netModel(netWeights(21), { activation: 'Sigmoid' }));
    const refused = await runFleet(['build', '--base', a, '--target', sig, '--rank', '1', '--out', path.join(dir, 'r.cbor')]);
    expect(refused.code).not.toBe(0);
    expect(refused.err.trim().split('\n')).toHaveLength(1);
    expect(refused.err).toContain('first at model.graph.node[1] ("act").opType: "Relu" in the base, "Sigmoid" in the target');
    const mixed = await runFleet(['build', '--base', a, '--target', path.join(dir, 'nope.safetensors'), '--rank', '1', '--out', path.join(dir, 'r.cbor')]);
    expect(mixed.code).not.toBe(0);
  }, 120_000);

  it("a device process started with --initial model.onnx downloads, applies and acks (DIR/current.onnx is the publisher's own apply, byte for byte); one on no chain takes the full ONNX model", async () => {
    f = await createFixture('onnx-e2e');
    const { a, b } = await twoModels(f.dir);
    const upd = path.join(f.dir, 'u.cbor');
    const built = await runFleet(['build', '--base', a, '--target', b, '--rank', '1', '--out', upd]);
    expect(built.code, built.err).toBe(0);
    const expected = path.join(f.dir, 'expected.onnx');
    expect((await runFleet(['apply', '--model', a, '--update', upd, '--out', expected])).code).toBe(0);
    const payload = await readUpdateFile(upd);
    const target = decodePayload(payload).target;

    f.baseFile = a;
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'onnx-1');
    const idle = await watch.until('onnx-1', (s) => s.state === 'idle');
    expect(idle.running).toBe(await digestOnnxFile(a));
    await publish(f, payload);
    const s = await watch.until('onnx-1', (s) => s.state === 'ok' || s.state === 'rolled_back' || s.state === 'rejected' || s.state === 'failed');
    expect(s.state, `${s.reason}: ${s.message}`).toBe('ok');
    expect(s.running).toBe(target);
    const current = path.join(f.dir, 'onnx-1', 'current.onnx');
    expect(await fs.readlink(current)).toBe(path.join('models', `${target}.onnx`));
    expect(sha256Hex(await fs.readFile(current))).toBe(sha256Hex(await fs.readFile(expected)));
    await expect(fs.stat(path.join(f.dir, 'onnx-1', 'current.safetensors'))).rejects.toThrow();

    // A device on no chain (another model of the same graph) takes the full ONNX model (`fleet publish --full`).
    const other = path.join(f.dir, 'other.onnx');
    await fs.writeFile(other, netModel(netWeights(99)));
    const t = await MqttTransport.connect({ url: f.url, clientId: 'test-publisher-full' }, 10_000);
    try {
      await publishUpdate({
        transport: t,
        topics,
        payloads: [payload],
        fullModel: new Uint8Array(await fs.readFile(expected)),
        ...(await fixtureKeys(f)),
        model: MODEL,
        group: GROUP,
        chunkSize: CHUNK,
        ttlSeconds: 3600,
        log: silentLogger,
      });
    } finally {
      await t.close();
    }
    // Started after the release (retained) that has the full-model step.
    f.baseFile = other;
    spawnDevice(f, 'onnx-2');
    const full = await watch.until('onnx-2', (s) => s.state === 'ok' || s.state === 'rejected' || s.state === 'failed', 60_000);
    expect(full.state, `${full.reason}: ${full.message}`).toBe('ok');
    expect(full.running).toBe(target);
    expect(sha256Hex(await fs.readFile(path.join(f.dir, 'onnx-2', 'current.onnx')))).toBe(sha256Hex(await fs.readFile(expected)));
  }, 120_000);

  it('a bundle with the full ONNX model installs into a model file and a device directory', async () => {
    f = await createFixture('onnx-bundle');
    const { a, b } = await twoModels(f.dir);
    const bundle = path.join(f.dir, 'full.bundle');
    const made = await runFleet(['bundle', '--full', b, '--key', f.keyFile, '--rollout-key', f.rolloutKeyFile, '--model', 'm', '--group', 'g', '--out', bundle]);
    expect(made.code, made.err).toBe(0);
    const out = path.join(f.dir, 'installed.onnx');
    const r = await runFleet(['apply', '--bundle', bundle, '--trust', f.trustFile, '--model', a, '--out', out]);
    expect(r.code, r.err).toBe(0);
    expect(Buffer.compare(await fs.readFile(out), await fs.readFile(b))).toBe(0);
    // A device directory provisioned with an ONNX model.
    const dev = path.join(f.dir, 'dev');
    // A device directory holds a model first: the agent's provisioning, as `fleet device --initial a.onnx` does.
    const { DeviceStorage } = await import('../../device/storage.ts');
    const { DeviceAgent } = await import('../../device/agent.ts');
    const { ONNX } = await import('../../util/model-format.ts');
    const storage = new DeviceStorage(dev, undefined, ONNX);
    await DeviceAgent.provision(storage, a, (file, fsys) => ONNX.digestFile(file, fsys));
    const d = await runFleet(['apply', '--bundle', bundle, '--trust', f.trustFile, '--dir', dev]);
    expect(d.code, d.err).toBe(0);
    expect(d.out).toContain('current.onnx switched');
    expect(await digestOnnxFile(path.join(dev, 'current.onnx'))).toBe(await digestOnnxFile(b));
  }, 120_000);
});
