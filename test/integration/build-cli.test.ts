import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { decodeValues, encodeValues } from '../../protocol/dtypes.ts';
import { readSafetensors, writeSafetensors } from '../../protocol/safetensors.ts';
import { mulberry32 } from '../../util/random.ts';
import { modelPair, randomValues, writeModels, type Spec } from '../support/models.ts';

function fleet(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [FLEET_BIN, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const SPECS: Spec[] = [
  { name: 'enc.q_proj.weight', shape: [24, 16] },
  { name: 'enc.q_proj.bias', shape: [24] },
  { name: 'enc.v_proj.weight', shape: [24, 16] },
];

let dir: string;
let files: { base: string; target: string };
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-buildcli-'));
  files = await writeModels(dir, modelPair(11, SPECS, { 'enc.q_proj.weight': { rank: 2 }, 'enc.q_proj.bias': {} }));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('fleet build, inspect and apply from the command line', () => {
  it('builds, inspects with errors and sizes, and applies offline to the digest the update names', async () => {
    const out = path.join(dir, 'u.cbor');
    const b = fleet(['build', '--base', files.base, '--target', files.target, '--out', out, '--budget', '50%', '--quant', 'f16']);
    expect(b.code, b.err).toBe(0);
    expect(b.out).toMatch(/enc.q_proj.weight +\[24,16\] +rank 2 +f16/);
    const insp = fleet(['inspect', out, '--json']);
    expect(insp.code).toBe(0);
    const j = JSON.parse(insp.out) as { percentOfModelBytes: number; tensors: Array<{ name: string; relError: number | null }>; from: string; to: string };
    expect(j.percentOfModelBytes).toBeGreaterThan(0);
    expect(j.percentOfModelBytes).toBeLessThanOrEqual(50);
    expect(j.tensors.find((t) => t.name === 'enc.q_proj.weight')!.relError).toBeLessThan(2e-3);
    const applied = path.join(dir, 'c.safetensors');
    const a = fleet(['apply', '--model', files.base, '--update', out, '--out', applied]);
    expect(a.code, a.err).toBe(0);
    expect(a.out).toContain(j.to);
    // Applying to the wrong model is refused and writes nothing.
    const wrong = fleet(['apply', '--model', files.target, '--update', out, '--out', path.join(dir, 'wrong.safetensors')]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.err).toMatch(/No step of the release starts from the model|has digest/);
    await expect(fs.access(path.join(dir, 'wrong.safetensors'))).rejects.toThrow();
  });

  it('--method auto with --calib builds compact kinds, and inspect shows per tensor the method, bits and error', async () => {
    const out = path.join(dir, 'auto.cbor');
    const calib = path.join(dir, 'stats.safetensors');
    const diag = encodeValues(
      Float64Array.from({ length: 16 }, (_, j) => 1 + j),
      'F32',
    );
    await fs.writeFile(calib, writeSafetensors([{ name: 'enc.q_proj.weight', dtype: 'F32', shape: [16], data: diag }]));
    const b = fleet(['build', '--base', files.base, '--target', files.target, '--out', out, '--budget', '400', '--method', 'auto', '--calib', calib, '--yes']);
    expect(b.code, b.err).toBe(0);
    const insp = fleet(['inspect', out]);
    expect(insp.code, insp.err).toBe(0);
    expect(insp.out).toMatch(/enc.q_proj.weight +\[24,16\] +mixed \d+ +(\d+b×\d+\+?)+ +\d+ +\d\.\d\de[-+]\d+/);
    const j = JSON.parse(fleet(['inspect', out, '--json']).out) as { updateBytes: number; tensors: Array<{ kind: string; dtype: string; relError: number | null }> };
    expect(j.updateBytes).toBeLessThanOrEqual(400);
    expect(j.tensors.every((t) => t.relError !== null)).toBe(true);
    const bad: Array<[string[], RegExp]> = [
      [['--rank', '2', '--method', 'auto'], /--method auto needs --budget/],
      [['--budget', '400', '--calib', calib], /--calib needs --method auto, mixed or sign/],
      [['--budget', '400', '--method', 'mixed', '--calib', files.base], /calibration [^:]+: the model has no such tensor|calibration enc.q_proj.bias: the tensor is not a matrix/],
    ];
    for (const [args, message] of bad) {
      const r = fleet(['build', '--base', files.base, '--target', files.target, '--out', path.join(dir, 'never.cbor'), ...args]);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.err).toMatch(message);
    }
  });

  it('bad input ends with one clear message, a non-zero exit and no output file', async () => {
    const out = path.join(dir, 'bad.cbor');
    const truncated = path.join(dir, 'truncated.safetensors');
    await fs.writeFile(truncated, (await fs.readFile(files.target)).subarray(0, 100));
    const cases: Array<[string[], RegExp]> = [
      [['--target', files.target, '--rank', '0'], /rank 0/],
      [['--target', files.target, '--rank', '17'], /rank 17 is above min\(m, n\) = 16 of the largest changed matrix, enc.q_proj.weight/],
      [['--target', files.target, '--budget', '50'], /cannot hold even the smallest update/],
      [['--target', truncated, '--rank', '2'], /target model .*truncated.safetensors is not a valid safetensors file/],
      [['--target', files.target, '--rank', '2', '--energy', '0.5'], /exactly one of --rank, --budget or --energy/],
      [['--target', files.target], /exactly one of --rank, --budget or --energy/],
    ];
    for (const [args, message] of cases) {
      const r = fleet(['build', '--base', files.base, '--out', out, ...args]);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.err).toMatch(message);
      expect(r.err).not.toMatch(/\n\s+at /); // no stack trace
      await expect(fs.access(out)).rejects.toThrow();
    }
  });

  it('turns a PEFT LoRA adapter into an update that merges to W + (alpha/r)·B·A', async () => {
    const rand = mulberry32(5);
    const r = 4;
    const alpha = 8;
    // float32 values, as the adapter file holds them
    const a = randomValues(rand, r * 16, 0.1).map(Math.fround);
    const bq = randomValues(rand, 24 * r, 0.1).map(Math.fround);
    const adapter = writeSafetensors([
      { name: 'base_model.model.enc.q_proj.lora_A.weight', dtype: 'F32', shape: [r, 16], data: encodeValues(a, 'F32') },
      { name: 'base_model.model.enc.q_proj.lora_B.weight', dtype: 'F32', shape: [24, r], data: encodeValues(bq, 'F32') },
      { name: 'base_model.model.enc.k_proj.lora_A.weight', dtype: 'F32', shape: [r, 16], data: encodeValues(a, 'F32') },
      { name: 'base_model.model.enc.k_proj.lora_B.weight', dtype: 'F32', shape: [24, r], data: encodeValues(bq, 'F32') },
    ]);
    const adapterFile = path.join(dir, 'adapter_model.safetensors');
    const configFile = path.join(dir, 'adapter_config.json');
    await fs.writeFile(adapterFile, adapter);
    await fs.writeFile(configFile, JSON.stringify({ peft_type: 'LORA', r, lora_alpha: alpha, target_modules: ['q_proj', 'k_proj'], fan_in_fan_out: false }));
    const out = path.join(dir, 'lora.cbor');
    // k_proj has no base tensor: the build refuses, naming it; --allow-partial builds without it and says so.
    const refused = fleet(['build', '--base', files.base, '--lora', adapterFile, '--lora-config', configFile, '--out', out]);
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(/^fleet: .*enc\.k_proj: no base tensor.*--allow-partial/);
    const b = fleet(['build', '--base', files.base, '--lora', adapterFile, '--lora-config', configFile, '--out', out, '--allow-partial']);
    expect(b.code, b.err).toBe(0);
    expect(b.err).toMatch(/left out \(--allow-partial\): adapter module enc.k_proj/);
    const applied = path.join(dir, 'lora-applied.safetensors');
    expect(fleet(['apply', '--model', files.base, '--update', out, '--out', applied]).code).toBe(0);
    const base = readSafetensors(new Uint8Array(await fs.readFile(files.base)));
    const got = decodeValues(readSafetensors(new Uint8Array(await fs.readFile(applied))).tensor('enc.q_proj.weight'), 'F32');
    const w = decodeValues(base.tensor('enc.q_proj.weight'), 'F32');
    let maxErr = 0;
    for (let i = 0; i < 24; i++) {
      for (let j = 0; j < 16; j++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += bq[i * r + k] * a[k * 16 + j];
        const want = Math.fround(w[i * 16 + j] + (alpha / r) * s);
        maxErr = Math.max(maxErr, Math.abs(got[i * 16 + j] - want));
      }
    }
    // The device's arithmetic is the dense merge's, to the last bit.
    expect(maxErr).toBe(0);
    // Other tensors untouched.
    expect(Buffer.compare(Buffer.from(readSafetensors(new Uint8Array(await fs.readFile(applied))).tensor('enc.v_proj.weight')), Buffer.from(base.tensor('enc.v_proj.weight')))).toBe(0);
  });
});
