/**
 * `fleet build --lora` against adapters laid out exactly as PEFT writes them
 * (get_peft_model_state_dict's key names, LoraConfig's fields), one case per
 * PEFT feature: the update the command writes, applied to the base by the
 * device's own code (applyToModel), must equal PEFT's merge_and_unload computed
 * here independently in float64 — or the command must refuse with one line.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeValues, encodeValues } from '../../protocol/dtypes.ts';
import { decodePayload } from '../../protocol/lowrank.ts';
import { applyToModel } from '../../protocol/delta-apply.ts';
import { readSafetensors, writeSafetensors } from '../../protocol/safetensors.ts';
import { mulberry32 } from '../../util/random.ts';
import { readUpdateFile } from '../../util/update-file.ts';

const execFileP = promisify(execFile);
const FLEET_BIN = fileURLToPath(new URL('../../bin/fleet.js', import.meta.url));

interface T {
  shape: number[];
  values: Float64Array;
}
/** Random f32 values (already rounded, so the test knows exactly what is stored). */
function t(shape: number[], seed: number): T {
  const rand = mulberry32(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return { shape, values: Float64Array.from({ length: n }, () => Math.fround(rand() - 0.5)) };
}
const file = (ts: Record<string, T>): Uint8Array => writeSafetensors(Object.entries(ts).map(([name, x]) => ({ name, dtype: 'F32' as const, shape: x.shape, data: encodeValues(x.values, 'F32') })));

// The base: a Llama-like q_proj (Linear [out 6, in 5]) with a bias, a square v_proj, GPT-2 Conv1D c_attn
// (stored [in 5, out 7]) and c_proj (square [7, 7]), an embedding, a classification head.
const Q = 'model.layers.0.self_attn.q_proj';
const V = 'model.layers.0.self_attn.v_proj';
const CA = 'transformer.h.0.attn.c_attn';
const CP = 'transformer.h.0.attn.c_proj';
const EMB = 'model.embed_tokens';
const BASE: Record<string, T> = {
  [`${Q}.weight`]: t([6, 5], 1),
  [`${Q}.bias`]: t([6], 2),
  [`${V}.weight`]: t([4, 4], 3),
  [`${V}.bias`]: t([4], 4),
  [`${CA}.weight`]: t([5, 7], 5),
  [`${CP}.weight`]: t([7, 7], 6),
  [`${EMB}.weight`]: t([10, 4], 7),
  'score.weight': t([3, 6], 8),
  'score.bias': t([3], 9),
};
const P = 'base_model.model.';

/** PEFT's merge in float64: W + s·B·A ([out, in]) or W + (s·B·A)ᵀ (fan_in_fan_out). */
function loraMerge(w: T, a: T, b: T, s: number, fanInFanOut = false): Float64Array {
  const out = w.values.slice();
  const r = a.shape[0];
  const inF = a.shape[1];
  const outF = b.shape[0];
  for (let o = 0; o < outF; o++) {
    for (let i = 0; i < inF; i++) {
      let d = 0;
      for (let k = 0; k < r; k++) d += b.values[o * r + k] * a.values[k * inF + i];
      out[fanInFanOut ? i * outF + o : o * inF + i] += s * d;
    }
  }
  return out;
}

/** DoRA (PEFT's DoraLinearVariant.merge_safe): per output o, W'_o = m_o · (W + ΔW)_o / ‖(W + ΔW)_o‖. */
function doraMerge(w: T, a: T, b: T, s: number, mag: T, fanInFanOut = false): Float64Array {
  const merged = loraMerge(w, a, b, s, fanInFanOut);
  const outF = b.shape[0];
  const inF = a.shape[1];
  const at = (o: number, i: number) => (fanInFanOut ? i * outF + o : o * inF + i);
  for (let o = 0; o < outF; o++) {
    let n2 = 0;
    for (let i = 0; i < inF; i++) n2 += merged[at(o, i)] ** 2;
    for (let i = 0; i < inF; i++) merged[at(o, i)] *= mag.values[o] / Math.sqrt(n2);
  }
  return merged;
}

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-peft-test-'));
  await fs.writeFile(path.join(dir, 'base.safetensors'), file(BASE));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

let caseNo = 0;
/** Run `fleet build --lora` on an adapter; on success, apply the update with the device's code. */
async function build(tensors: Record<string, T>, config: Record<string, unknown>, extra: string[] = []) {
  const n = ++caseNo;
  const adapter = path.join(dir, `adapter-${n}.safetensors`);
  const cfg = path.join(dir, `adapter_config-${n}.json`);
  const out = path.join(dir, `update-${n}.cbor`);
  await fs.writeFile(adapter, file(tensors));
  await fs.writeFile(cfg, JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 4, bias: 'none', fan_in_fan_out: false, ...config }));
  const args = [FLEET_BIN, 'build', '--base', path.join(dir, 'base.safetensors'), '--lora', adapter, '--lora-config', cfg, '--out', out, '--json', ...extra];
  const run = await execFileP(process.execPath, args).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
  if (run.code !== 0) return { ...run, model: undefined, report: undefined };
  const payload = decodePayload(await readUpdateFile(out));
  const applied = applyToModel(new Uint8Array(await fs.readFile(path.join(dir, 'base.safetensors'))), payload);
  expect(applied.digest).toBe(payload.target);
  const f = readSafetensors(applied.bytes);
  const model = (name: string) => decodeValues(f.tensor(name), f.info(name)!.dtype);
  return { ...run, model, report: JSON.parse(run.stdout.trim().split('\n').pop()!) as Record<string, unknown> };
}

type Built = Awaited<ReturnType<typeof build>>;
/** Every base tensor equals PEFT's merge (given) or the base (not given), to float32 rounding. */
function expectModel(b: Built, merged: Record<string, Float64Array>): void {
  expect(b.code, b.stderr).toBe(0);
  for (const [name, base] of Object.entries(BASE)) {
    const want = merged[name] ?? base.values;
    const got = b.model!(name);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    expect(worst, name).toBeLessThanOrEqual(2e-6);
  }
}

function expectRefused(b: Built, message: RegExp): void {
  expect(b.code).not.toBe(0);
  const lines = b.stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(message);
}

const qA = t([2, 5], 20);
const qB = t([6, 2], 21);
const qLora = { [`${P}${Q}.lora_A.weight`]: qA, [`${P}${Q}.lora_B.weight`]: qB };

describe('fleet build --lora merges as PEFT does, case by case', () => {
  it('bias="lora_only": the targeted module\'s bias, saved as <module>.base_layer.bias, ships', async () => {
    const bias = t([6], 30);
    const b = await build({ ...qLora, [`${P}${Q}.base_layer.bias`]: bias }, { target_modules: ['q_proj'], bias: 'lora_only' });
    expectModel(b, { [`${Q}.weight`]: loraMerge(BASE[`${Q}.weight`], qA, qB, 2), [`${Q}.bias`]: bias.values });
  });

  it('bias="all": targeted (base_layer) and untargeted biases ship', async () => {
    const qb = t([6], 31);
    const vb = t([4], 32);
    const sb = t([3], 33);
    const b = await build({ ...qLora, [`${P}${Q}.base_layer.bias`]: qb, [`${P}${V}.bias`]: vb, [`${P}score.bias`]: sb }, { target_modules: ['q_proj'], bias: 'all' });
    expectModel(b, { [`${Q}.weight`]: loraMerge(BASE[`${Q}.weight`], qA, qB, 2), [`${Q}.bias`]: qb.values, [`${V}.bias`]: vb.values, 'score.bias': sb.values });
  });

  it("DoRA with modules_to_save: W' = m·(W + s·B·A)/‖W + s·B·A‖ per output row, and the saved head", async () => {
    const mag = t([6], 40);
    mag.values.forEach((x, i) => (mag.values[i] = Math.fround(Math.abs(x) + 0.5)));
    const head = t([3, 6], 41);
    const b = await build({ ...qLora, [`${P}${Q}.lora_magnitude_vector`]: mag, [`${P}score.weight`]: head }, { target_modules: ['q_proj'], use_dora: true, modules_to_save: ['score'] });
    expectModel(b, { [`${Q}.weight`]: doraMerge(BASE[`${Q}.weight`], qA, qB, 2, mag), 'score.weight': head.values });
  });

  it('DoRA on a GPT-2 Conv1D ([in, out]): the norm is per output, i.e. per column of the stored weight', async () => {
    const a = t([2, 5], 42);
    const bb = t([7, 2], 43);
    const mag = t([7], 44);
    mag.values.forEach((x, i) => (mag.values[i] = Math.fround(Math.abs(x) + 0.5)));
    const b = await build({ [`${P}${CA}.lora_A.weight`]: a, [`${P}${CA}.lora_B.weight`]: bb, [`${P}${CA}.lora_magnitude_vector`]: mag }, { target_modules: ['c_attn'], use_dora: true, fan_in_fan_out: true });
    expectModel(b, { [`${CA}.weight`]: doraMerge(BASE[`${CA}.weight`], a, bb, 2, mag, true) });
  });

  it('lora_bias: the base bias + s·lora_B.bias', async () => {
    const lb = t([6], 45);
    const b = await build({ ...qLora, [`${P}${Q}.lora_B.bias`]: lb }, { target_modules: ['q_proj'], lora_bias: true });
    expectModel(b, { [`${Q}.weight`]: loraMerge(BASE[`${Q}.weight`], qA, qB, 2), [`${Q}.bias`]: BASE[`${Q}.bias`].values.map((x, i) => x + 2 * lb.values[i]) });
  });

  it('trainable_token_indices: the listed rows of the embedding are replaced', async () => {
    const rows = t([3, 4], 50);
    const indices = [7, 2, 9];
    const want = BASE[`${EMB}.weight`].values.slice();
    indices.forEach((row, k) => want.set(rows.values.subarray(k * 4, k * 4 + 4), row * 4));
    const b = await build({ ...qLora, [`${P}${EMB}.token_adapter.trainable_tokens_delta`]: rows }, { target_modules: ['q_proj'], trainable_token_indices: { embed_tokens: indices } });
    expectModel(b, { [`${Q}.weight`]: loraMerge(BASE[`${Q}.weight`], qA, qB, 2), [`${EMB}.weight`]: want });
  });

  it('alpha_pattern / rank_pattern: the first key in the file that matches wins, not an exact one; (?P<name>…) is read as Python reads it', async () => {
    const vA = t([3, 4], 60);
    const vB = t([4, 3], 61);
    const b = await build(
      { ...qLora, [`${P}${V}.lora_A.weight`]: vA, [`${P}${V}.lora_B.weight`]: vB },
      {
        target_modules: ['q_proj', 'v_proj'],
        alpha_pattern: { q_proj: 8, [Q]: 2, '(?P<which>v)_proj': 9 },
        rank_pattern: { 'self_attn\\.(?P<p>v)_pr(?P=p)?oj': 3 },
      },
    );
    expectModel(b, { [`${Q}.weight`]: loraMerge(BASE[`${Q}.weight`], qA, qB, 4), [`${V}.weight`]: loraMerge(BASE[`${V}.weight`], vA, vB, 3) });
  });

  it('a pattern key with Python-only syntax that cannot be translated is refused, not skipped', async () => {
    expectRefused(await build(qLora, { target_modules: ['q_proj'], alpha_pattern: { '(?i)Q_PROJ': 8 } }), /alpha_pattern key "\(\?i\)Q_PROJ".*Python-only/);
  });

  it('GPT-2 Conv1D: read [in, out] by shape even when the config says fan_in_fan_out = false; the square c_proj follows, and the report says so', async () => {
    const a1 = t([2, 5], 70);
    const b1 = t([7, 2], 71);
    const a2 = t([2, 7], 72);
    const b2 = t([7, 2], 73);
    const b = await build({ [`${P}${CA}.lora_A.weight`]: a1, [`${P}${CA}.lora_B.weight`]: b1, [`${P}${CP}.lora_A.weight`]: a2, [`${P}${CP}.lora_B.weight`]: b2 }, { target_modules: ['c_attn', 'c_proj'] });
    expectModel(b, { [`${CA}.weight`]: loraMerge(BASE[`${CA}.weight`], a1, b1, 2, true), [`${CP}.weight`]: loraMerge(BASE[`${CP}.weight`], a2, b2, 2, true) });
    expect((b.report!.lora as { layout: unknown[] }).layout).toEqual([
      { module: CA, tensor: `${CA}.weight`, storedAs: '[in, out]', by: 'shape' },
      { module: CP, tensor: `${CP}.weight`, storedAs: '[in, out]', by: 'the other layers' },
    ]);
  });

  it('a model mixing [out, in] and [in, out] layers with a square one is refused unless --fan-in-fan-out names the layers', async () => {
    const a1 = t([2, 5], 80);
    const b1 = t([7, 2], 81);
    const a2 = t([2, 4], 82);
    const b2 = t([4, 2], 83);
    const tensors = { ...qLora, [`${P}${CA}.lora_A.weight`]: a1, [`${P}${CA}.lora_B.weight`]: b1, [`${P}${V}.lora_A.weight`]: a2, [`${P}${V}.lora_B.weight`]: b2 };
    expectRefused(await build(tensors, { target_modules: ['q_proj', 'v_proj', 'c_attn'] }), /v_proj\.weight \[4, 4\] is square and the model mixes.*--fan-in-fan-out/);
    const b = await build(tensors, { target_modules: ['q_proj', 'v_proj', 'c_attn'] }, ['--fan-in-fan-out', 'c_attn']);
    expectModel(b, {
      [`${Q}.weight`]: loraMerge(BASE[`${Q}.weight`], qA, qB, 2),
      [`${CA}.weight`]: loraMerge(BASE[`${CA}.weight`], a1, b1, 2, true),
      [`${V}.weight`]: loraMerge(BASE[`${V}.weight`], a2, b2, 2),
    });
  });

  it.each([
    ['KaSA (lora_diag), whose base weight PEFT truncates', { kasa_config: { beta: 1e-4, gamma: 1e-3 } }, { [`${P}${Q}.lora_diag`]: t([2], 90) }, /kasa_config is set: KaSA/],
    ['LoRA-GA initialisation, which moves the base weights', { init_lora_weights: 'lora_ga' }, {}, /init_lora_weights = "lora_ga" changes the base weights/],
    ['aLoRA, which PEFT cannot merge', { alora_invocation_tokens: [5, 6] }, {}, /alora_invocation_tokens is set: .*aLoRA/],
    [
      'layer_replication, whose layers have no base tensors',
      {
        layer_replication: [
          [0, 1],
          [0, 1],
        ],
      },
      {},
      /layer_replication is set/,
    ],
  ])('refuses %s', async (_what, config, tensors, message) => {
    expectRefused(await build({ ...qLora, ...tensors }, { target_modules: ['q_proj'], ...config }), message);
  });

  it('an adapter tensor that is not used fails the build; with --allow-partial the report lists what was left out', async () => {
    const tensors = { ...qLora, [`${P}decoder.fc.lora_A.weight`]: t([2, 5], 100), [`${P}decoder.fc.lora_B.weight`]: t([6, 2], 101) };
    expectRefused(await build(tensors, { target_modules: ['q_proj', 'fc'] }), /1 part\(s\) of the adapter cannot be merged.*decoder\.fc: no base tensor.*--allow-partial/);
    const b = await build(tensors, { target_modules: ['q_proj', 'fc'] }, ['--allow-partial']);
    expectModel(b, { [`${Q}.weight`]: loraMerge(BASE[`${Q}.weight`], qA, qB, 2) });
    expect((b.report!.lora as { leftOut: unknown[] }).leftOut).toEqual([{ module: 'decoder.fc', reason: expect.stringContaining('no base tensor') }]);
    expect(b.stderr).toContain('left out (--allow-partial): adapter module decoder.fc');
  });
});
