/**
 * Benchmark of the compression engine on a 25 M-parameter model
 * (24 matrices of 1024×1024 plus biases):
 *   - randomized SVD vs ml-matrix's full SVD on one 1024×1024 ΔW (bench/rsvd.ts);
 *   - `fleet build --budget 1%` (and with `--method auto`) as its own process: time and peak memory;
 *   - the device's streaming apply of a rank-16 update: time and multiply-adds per second.
 *
 *   npm run bench:build        (add -- --skip-full-svd to skip the ~50 s baseline)
 *
 * Ends with one JSON line of its figures.
 */
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { applyToFile } from '../util/apply-file.ts';
import { decodePayload } from '../protocol/lowrank.ts';
import { writeSafetensors, type TensorInput } from '../protocol/safetensors.ts';
import { mulberry32 } from '../util/random.ts';
import { benchRsvd, type RsvdBenchResult } from './rsvd.ts';
import { readUpdateFile } from '../util/update-file.ts';

const FLEET = fileURLToPath(new URL('../bin/fleet.js', import.meta.url));
const LAYERS = 24;
const D = 1024;

function gaussian(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

/** Base and retrained models: each ΔW of approximate rank 16 plus noise, biases nudged. */
function makeModels(): { base: Uint8Array; target: Uint8Array; params: number } {
  const rand = mulberry32(25);
  const base: TensorInput[] = [];
  const target: TensorInput[] = [];
  let params = 0;
  for (let l = 0; l < LAYERS; l++) {
    const w = new Float32Array(D * D);
    for (let i = 0; i < w.length; i++) w[i] = gaussian(rand) * 0.03;
    const r = 16;
    const u = Float64Array.from({ length: D * r }, () => gaussian(rand) * 0.002);
    const v = Float64Array.from({ length: r * D }, () => gaussian(rand) * 0.1);
    const t = new Float32Array(D * D);
    const acc = new Float64Array(D);
    for (let i = 0; i < D; i++) {
      acc.fill(0);
      for (let k = 0; k < r; k++) {
        const uik = u[i * r + k];
        for (let j = 0; j < D; j++) acc[j] += uik * v[k * D + j];
      }
      for (let j = 0; j < D; j++) t[i * D + j] = w[i * D + j] + acc[j] + gaussian(rand) * 2e-5;
    }
    const b = Float32Array.from({ length: D }, () => gaussian(rand) * 0.01);
    const tb = b.map((x) => x + gaussian(rand) * 1e-3);
    const name = `layers.${String(l).padStart(2, '0')}`;
    base.push({ name: `${name}.weight`, dtype: 'F32', shape: [D, D], data: new Uint8Array(w.buffer) });
    base.push({ name: `${name}.bias`, dtype: 'F32', shape: [D], data: new Uint8Array(b.buffer) });
    target.push({ name: `${name}.weight`, dtype: 'F32', shape: [D, D], data: new Uint8Array(t.buffer) });
    target.push({ name: `${name}.bias`, dtype: 'F32', shape: [D], data: new Uint8Array(tb.buffer) });
    params += D * D + D;
  }
  return { base: writeSafetensors(base), target: writeSafetensors(target), params };
}

function fleetJson(args: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, [FLEET, ...args, '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`fleet ${args.join(' ')} failed: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
}

async function main(): Promise<void> {
  const skipFull = process.argv.includes('--skip-full-svd');
  const log = (s: string): void => {
    process.stderr.write(s + '\n');
  };
  let rsvd: RsvdBenchResult | Record<string, null> = { rsvdSeconds: null, fullSvdSeconds: null, speedup: null, rsvdRelErr: null, fullSvdRelErr: null };
  if (!skipFull) rsvd = await benchRsvd(log);

  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-bench-build-'));
  try {
    log('making a 25 M-parameter model pair …');
    const { base, target, params } = makeModels();
    const baseFile = path.join(dir, 'base.safetensors');
    const targetFile = path.join(dir, 'target.safetensors');
    await fs.writeFile(baseFile, base);
    await fs.writeFile(targetFile, target);
    const modelMB = base.byteLength / 1e6;

    log('fleet build --budget 1% …');
    const budget = fleetJson(['build', '--base', baseFile, '--target', targetFile, '--out', path.join(dir, 'budget.cbor'), '--budget', '1%', '--yes']);
    log(`  ${budget.seconds} s, peak ${Number(budget.peakRssMB).toFixed(0)} MB, update ${budget.updateBytes} bytes`);

    log('fleet build --budget 1% --method auto …');
    const auto = fleetJson(['build', '--base', baseFile, '--target', targetFile, '--out', path.join(dir, 'auto.cbor'), '--budget', '1%', '--method', 'auto', '--yes']);
    log(`  ${auto.seconds} s, peak ${Number(auto.peakRssMB).toFixed(0)} MB, update ${auto.updateBytes} bytes`);

    log('fleet build --rank 16, then the device apply …');
    const rank16 = path.join(dir, 'rank16.cbor');
    fleetJson(['build', '--base', baseFile, '--target', targetFile, '--out', rank16, '--rank', '16', '--yes']);
    const payload = decodePayload(await readUpdateFile(rank16));
    const t0 = performance.now();
    const digest = await applyToFile(baseFile, payload, path.join(dir, 'applied.safetensors'));
    const applySeconds = (performance.now() - t0) / 1000;
    if (digest !== payload.target) throw new Error('apply produced another digest than the build named');
    const madds = LAYERS * D * D * 16;
    log(`  apply ${applySeconds.toFixed(2)} s, ${(madds / applySeconds / 1e6).toFixed(0)} M multiply-adds/s`);

    const result = {
      ...rsvd,
      build25mSeconds: budget.seconds,
      build25mPeakMB: Number(Number(budget.peakRssMB).toFixed(1)),
      build25mUpdateBytes: budget.updateBytes,
      build25mAutoSeconds: auto.seconds,
      build25mAutoPeakMB: Number(Number(auto.peakRssMB).toFixed(1)),
      build25mAutoUpdateBytes: auto.updateBytes,
      autoPeakOverModel: Number((Number(auto.peakRssMB) / (base.byteLength / 1048576)).toFixed(2)),
      modelParams: params,
      modelMB: Number(modelMB.toFixed(1)),
      peakOverModel: Number((Number(budget.peakRssMB) / (base.byteLength / 1048576)).toFixed(2)),
      apply25mSeconds: Number(applySeconds.toFixed(3)),
      applyMaddsPerSecond: Math.round(madds / applySeconds),
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

await main();
