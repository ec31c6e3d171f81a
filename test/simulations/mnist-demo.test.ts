import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { drift, loadAllDigits, PIXELS, splitDigits } from '../../simulations/paper/data.ts';
import { mlpToSafetensors } from '../../simulations/paper/fleet-build.ts';
import { accuracy, initMlp, type Mlp } from '../../simulations/paper/mlp.ts';
import { digitsToBytes } from '../../simulations/mnist-demo/digits-file.ts';
import { runMnistDemo } from '../../simulations/mnist-demo/demo.ts';
import { mulberry32 } from '../../util/random.ts';
import { fullTrainable, train } from '../../simulations/paper/train.ts';

const execFileP = promisify(execFile);
const VALIDATE = fileURLToPath(new URL('../../simulations/mnist-demo/validate.ts', import.meta.url));

describe('demo:mnist', () => {
  it('three device processes validate, switch to and ack the low-rank update; field accuracy rises on every device', async () => {
    const lines: string[] = [];
    const r = await runMnistDemo({ baseTrain: 1500, fieldTrain: 600, perDevice: 150, epochs: 3, loraEpochs: 8, out: (l) => lines.push(l) });
    expect(r.acked).toBe(3);
    expect(r.devices).toHaveLength(3);
    for (const d of r.devices) {
      expect(d.acked).toBe(true);
      expect(d.digits).toBe(150);
      expect(d.after!).toBeGreaterThan(d.before!);
    }
    expect(r.updatePercent).toBeLessThan(1);
    expect(lines.some((l) => /mnist-device-1: acked, field accuracy [\d.]+ % → [\d.]+ %/.test(l))).toBe(true);
    expect(lines.some((l) => /3\/3 devices acked/.test(l))).toBe(true);
  });

  it('the validation command refuses a staged model that scores worse than the running one', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mnist-validate-test-'));
    try {
      const all = loadAllDigits();
      const { baseTrain, test } = splitDigits(all, { baseTrain: 400, fieldTrain: 0, test: 200 }, 31);
      const good = initMlp(mulberry32(32), PIXELS, 32, 10);
      train(fullTrainable(good), baseTrain, { epochs: 2, batch: 32, lr: 2e-3, seed: 33 });
      const bad: Mlp = { ...good, w2: new Float32Array(good.w2.length), b2: new Float32Array(10) }; // predicts class 0 always
      const digits = drift(test, 34, { shiftMin: 0, shiftMax: 0, rotateMin: 0, rotateMax: 0, background: 0, contrast: 1, noise: 0 });
      expect(accuracy(good, digits)).toBeGreaterThan(accuracy(bad, digits) + 0.2);
      const files = { good: path.join(dir, 'good.safetensors'), bad: path.join(dir, 'bad.safetensors'), digits: path.join(dir, 'digits.safetensors') };
      await fs.writeFile(files.good, mlpToSafetensors(good));
      await fs.writeFile(files.bad, mlpToSafetensors(bad));
      await fs.writeFile(files.digits, digitsToBytes(digits));
      const run = (staged: string, running: string) =>
        execFileP(process.execPath, ['--import', 'tsx', VALIDATE, '--digits', files.digits, '--running', running, '--report', path.join(dir, 'r.json')], { env: { ...process.env, FLEET_MODEL_PATH: staged } }).then(
          () => 0,
          (e: { code?: number }) => e.code ?? -1,
        );
      expect(await run(files.good, files.bad)).toBe(0);
      const fit = JSON.parse(await fs.readFile(path.join(dir, 'r.json'), 'utf8')) as { before: number; after: number; fit: boolean };
      expect(fit.fit).toBe(true);
      expect(fit.after).toBeCloseTo(accuracy(good, digits), 9);
      expect(await run(files.bad, files.good)).toBe(1);
      expect((JSON.parse(await fs.readFile(path.join(dir, 'r.json'), 'utf8')) as { fit: boolean }).fit).toBe(false);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
