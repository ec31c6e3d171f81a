import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { onnxAccuracy, readSamples } from '../../device/onnx-validate.ts';
import { decodePayload } from '../../protocol/lowrank.ts';
import { writeSafetensors } from '../../protocol/safetensors.ts';
import { digestOnnxFile } from '../../util/onnx-file.ts';
import { createFixture, publish, runFleet, spawnDevice, StatusWatch, tempDir, type Fixture } from '../support/harness.ts';
import { netModel, netWeights, values } from '../support/onnx-models.ts';
import { readUpdateFile } from '../../util/update-file.ts';

let f: Fixture | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await f?.close();
  f = undefined;
  for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
});

const N = 64;

/**
 * a.onnx; good.cbor (a tiny change of the shared bias); broken.cbor (the MatMul weight
 * negated, carried exactly at rank 4); samples.safetensors labelled by a.onnx's own
 * predictions under ONNX Runtime (so the running model scores 100 %).
 */
async function setup(dir: string): Promise<{ a: string; good: string; broken: string; samples: string }> {
  const w = netWeights(41);
  const a = path.join(dir, 'a.onnx');
  await fs.writeFile(a, netModel(w));
  await fs.writeFile(path.join(dir, 'good.onnx'), netModel({ ...w, shared_bias: Float64Array.from(w.shared_bias, (x) => x + 1e-4) }));
  await fs.writeFile(path.join(dir, 'broken.onnx'), netModel({ ...w, mm_w: Float64Array.from(w.mm_w, (x) => -x) }));
  const inputs = Float32Array.from(values(43, N * 2 * 5 * 5));
  const unlabelled = writeSafetensors([
    { name: 'inputs', dtype: 'F32', shape: [N, 2, 5, 5], data: new Uint8Array(inputs.buffer) },
    { name: 'labels', dtype: 'I64', shape: [N], data: new Uint8Array(N * 8) },
  ]);
  const { predictions } = await onnxAccuracy(new Uint8Array(await fs.readFile(a)), readSamples(unlabelled));
  expect(new Set(predictions).size, 'the samples fall in several classes').toBeGreaterThan(1);
  const samples = path.join(dir, 'samples.safetensors');
  await fs.writeFile(
    samples,
    writeSafetensors([
      { name: 'inputs', dtype: 'F32', shape: [N, 2, 5, 5], data: new Uint8Array(inputs.buffer) },
      { name: 'labels', dtype: 'I64', shape: [N], data: new Uint8Array(BigInt64Array.from(predictions, (p) => BigInt(p)).buffer) },
    ]),
  );
  for (const [name, rank] of [
    ['good', '1'],
    ['broken', '4'],
  ]) {
    const r = await runFleet(['build', '--base', a, '--target', path.join(dir, `${name}.onnx`), '--rank', rank, '--out', path.join(dir, `${name}.cbor`), '--yes']);
    expect(r.code, r.err).toBe(0);
  }
  return { a, good: path.join(dir, 'good.cbor'), broken: path.join(dir, 'broken.cbor'), samples };
}

describe('validation of a staged ONNX model with ONNX Runtime', () => {
  it('fleet apply --validate-onnx refuses a broken update (accuracy in the message, nothing written) and writes a good one', async () => {
    const dir = await tempDir('onnx-validate');
    dirs.push(dir);
    const m = await setup(dir);
    const out = path.join(dir, 'c.onnx');
    const bad = await runFleet(['apply', '--model', m.a, '--update', m.broken, '--out', out, '--validate-onnx', m.samples, '--min-accuracy', '0.9']);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(/accuracy (\d+\.\d) % on 64 samples \(running model 100\.0 %\): below --min-accuracy 90\.0 %/);
    expect(Number(/accuracy (\d+\.\d) %/.exec(bad.err)![1])).toBeLessThan(90);
    await expect(fs.stat(out)).rejects.toThrow();
    expect((await fs.readdir(dir)).filter((x) => x.includes('.staged-'))).toEqual([]);
    // --max-drop alone refuses it too.
    const drop = await runFleet(['apply', '--model', m.a, '--update', m.broken, '--out', out, '--validate-onnx', m.samples, '--max-drop', '5']);
    expect(drop.code).not.toBe(0);
    expect(drop.err).toMatch(/points below the running model, over --max-drop 5/);

    const good = await runFleet(['apply', '--model', m.a, '--update', m.good, '--out', out, '--validate-onnx', m.samples, '--min-accuracy', '0.9', '--max-drop', '5']);
    expect(good.code, good.err).toBe(0);
    expect(good.out).toMatch(/ONNX validation: accuracy \d+\.\d % on 64 samples \(running model 100\.0 %\)/);
    expect(await digestOnnxFile(out)).toBe(decodePayload(await readUpdateFile(m.good)).target);

    // The flag on a safetensors model is refused, with what to do.
    const st = await runFleet(['apply', '--model', path.join(dir, 'x.safetensors'), '--update', m.good, '--out', out, '--validate-onnx', m.samples]);
    expect(st.code).not.toBe(0);
    expect(st.err).toMatch(/--validate-onnx needs an ONNX model/);
  }, 120_000);

  it('a device process with --validate-onnx refuses the broken update with validation-failed, stays on its model, then takes the good one; figures in the status', async () => {
    f = await createFixture('onnx-validate-dev');
    const m = await setup(f.dir);
    f.baseFile = m.a;
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'v1', ['--validate-onnx', m.samples, '--min-accuracy', '90%', '--max-drop', '5']);
    const idle = await watch.until('v1', (s) => s.state === 'idle');
    const base = idle.running;

    await publish(f, await readUpdateFile(m.broken));
    const refused = await watch.until('v1', (s) => s.reason === 'validation-failed', 60_000);
    expect(refused.message).toMatch(/accuracy \d+\.\d % on 64 samples \(running model 100\.0 %\): below --min-accuracy 90\.0 %/);
    expect(refused.validation?.samples).toBe(64);
    expect(refused.validation?.runningAccuracy).toBe(1);
    expect(refused.validation!.accuracy).toBeLessThan(0.9);
    expect(refused.running).toBe(base);
    expect(await digestOnnxFile(path.join(f.dir, 'v1', 'current.onnx'))).toBe(base);

    const goodPayload = await readUpdateFile(m.good);
    await publish(f, goodPayload);
    const ok = await watch.until('v1', (s) => s.state === 'ok' && s.running === decodePayload(goodPayload).target, 60_000);
    expect(ok.validation?.runningAccuracy).toBe(1);
    expect(ok.validation!.accuracy).toBeGreaterThanOrEqual(0.95);
  }, 120_000);
});
