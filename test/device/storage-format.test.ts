import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceAgent } from '../../device/agent.ts';
import { DeviceStorage } from '../../device/storage.ts';
import { synthesizeModel } from '../../publisher/synth.ts';
import { ONNX, SAFETENSORS } from '../../util/model-format.ts';
import { digestOnnxFile } from '../../util/onnx-file.ts';
import { tempDir } from '../support/harness.ts';
import { netModel, netWeights } from '../support/onnx-models.ts';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
});

describe('device storage: the model format of a directory', () => {
  it('an ONNX directory keeps models/{digest}.onnx and current.onnx, and is known as ONNX again after a restart without --initial', async () => {
    const dir = await tempDir('storage-format');
    dirs.push(dir);
    const model = path.join(dir, 'm.onnx');
    await fs.writeFile(model, netModel(netWeights(1)));
    const first = new DeviceStorage(path.join(dir, 'dev'), undefined, ONNX);
    const digest = await DeviceAgent.provision(first, model, (f, fsys) => first.format.digestFile(f, fsys));
    expect(digest).toBe(await digestOnnxFile(model));
    expect(await fs.readlink(path.join(dir, 'dev', 'current.onnx'))).toBe(path.join('models', `${digest}.onnx`));

    const again = new DeviceStorage(path.join(dir, 'dev'));
    await again.init();
    expect(again.format).toBe(ONNX);
    expect(again.currentPath).toBe(path.join(dir, 'dev', 'current.onnx'));
    expect((await again.pointer())?.digest).toBe(digest);
    expect(await again.removeStaging()).toEqual([]);
    expect(await again.hasVersion(digest)).toBe(true);

    // Started with a model of the other format: refused, naming both.
    const st = path.join(dir, 'm.safetensors');
    await fs.writeFile(st, synthesizeModel(1, [[4, 4]]));
    const other = new DeviceStorage(path.join(dir, 'dev'), undefined, SAFETENSORS);
    await expect(other.init()).rejects.toThrow(/runs a model in the onnx format \(current\.onnx\); the initial model given is safetensors/);
  });
});
