/**
 * A device's validation command for the MNIST demo: the staged model
 * (FLEET_MODEL_PATH) must classify this device's held-out field digits at
 * least as well as the running model, minus a tolerance. Writes both
 * accuracies as JSON to --report, and exits 0 (fit) or 1 (refused).
 *
 *   node --import tsx simulations/mnist-demo/validate.ts --digits FILE --running DIR/current.safetensors
 *       [--tolerance 1] [--report FILE]
 */
import { promises as fs } from 'node:fs';
import { parseArgs } from 'node:util';
import { digitsFromBytes, fileAccuracy } from './digits-file.ts';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { digits: { type: 'string' }, running: { type: 'string' }, tolerance: { type: 'string' }, report: { type: 'string' } },
  });
  const staged = process.env.FLEET_MODEL_PATH;
  if (!staged || !values.digits || !values.running) {
    process.stderr.write('validate: needs FLEET_MODEL_PATH, --digits and --running\n');
    return 2;
  }
  const tolerance = Number(values.tolerance ?? '1');
  const ds = digitsFromBytes(new Uint8Array(await fs.readFile(values.digits)));
  const before = await fileAccuracy(values.running, ds);
  const after = await fileAccuracy(staged, ds);
  const fit = 100 * after >= 100 * before - tolerance;
  const report = { digits: ds.n, before, after, tolerancePoints: tolerance, fit, staged: process.env.FLEET_MODEL_DIGEST ?? null };
  if (values.report) await fs.writeFile(values.report, JSON.stringify(report) + '\n');
  process.stdout.write(`${JSON.stringify(report)}\n`);
  if (!fit) process.stderr.write(`staged model scores ${(100 * after).toFixed(1)} % on ${ds.n} held-out field digits, below the running model's ${(100 * before).toFixed(1)} % minus ${tolerance} points\n`);
  return fit ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`validate: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(2);
  },
);
