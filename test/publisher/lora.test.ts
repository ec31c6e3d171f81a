import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { decodeValues, encodeValues, roundToDtype, type WritableDtype } from '../../protocol/dtypes.ts';
import { decodePayload, encodePayload, isLowRank } from '../../protocol/lowrank.ts';
import { applyTensor, applyToModel } from '../../protocol/delta-apply.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { buildUpdate, type BuildMode } from '../../publisher/build.ts';
import { loraSource, twoModelSource } from '../../publisher/delta-source.ts';
import { denseLoraDelta, LoraError, loraFactors, loraTensorDelta, parseLoraConfig, patternValue, type LoraConfig, type LoraFactor } from '../../publisher/lora.ts';
import { readUpdateFile } from '../../util/update-file.ts';

const execFileP = promisify(execFile);
const FLEET_BIN = fileURLToPath(new URL('../../bin/fleet.js', import.meta.url));

// A tiny deterministic generator (values in [-1, 1)).
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  };
}

interface T {
  name: string;
  dtype: WritableDtype;
  shape: number[];
  values: Float64Array;
}

/** Random values already rounded to the dtype, so the test knows exactly what is stored. */
function tensor(name: string, shape: number[], seed: number, dtype: WritableDtype = 'F32'): T {
  const rand = rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = roundToDtype(rand() * 0.5, dtype);
  return { name, dtype, shape, values };
}

function file(ts: T[]): Uint8Array {
  const inputs: TensorInput[] = ts.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: encodeValues(t.values, t.dtype) }));
  return writeSafetensors(inputs);
}

// The base model: a Linear (out 6, in 5), a GPT-2 Conv1D (in 5, out 7, stored [in, out]), a Conv2d (4, 3, 3, 3).
const Q = 'encoder.layers.0.self_attn.q_proj';
const C1D = 'h.0.attn.c_attn';
const CONV = 'features.0';
const W_Q = tensor(`${Q}.weight`, [6, 5], 1);
const W_C1D = tensor(`${C1D}.weight`, [5, 7], 2);
const W_CONV = tensor(`${CONV}.weight`, [4, 3, 3, 3], 3);
const baseBytes = file([W_Q, tensor(`${Q}.bias`, [6], 4), W_C1D, W_CONV, tensor('embed.weight', [10, 4], 5, 'F64')]);
const base = readSafetensors(baseBytes).header;

const PEFT = 'base_model.model.';
const config = (o: Record<string, unknown> = {}): LoraConfig => parseLoraConfig(JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj', 'c_attn'], ...o }));

/** W + scaling·B·A computed directly, in the base tensor's own layout. */
function mergedDirect(w: T, a: T, b: T, scaling: number, fanInFanOut = false): Float64Array {
  const out = w.values.slice();
  const r = a.shape[0];
  const inner = a.values.length / r; // in·kh·kw (or in)
  const outDim = b.shape[0];
  for (let o = 0; o < outDim; o++) {
    for (let i = 0; i < inner; i++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += b.values[o * r + k] * a.values[k * inner + i];
      // Linear/conv: W[o, i...]; fan_in_fan_out: W stored [in, out], so W[i, o].
      const at = fanInFanOut ? i * outDim + o : o * inner + i;
      out[at] += scaling * s;
    }
  }
  return out;
}

function mergedFactor(w: T, f: LoraFactor): Float64Array {
  const d = denseLoraDelta(f);
  return w.values.map((x, i) => x + d[i]);
}

function expectClose(a: Float64Array, b: Float64Array): void {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(1e-12);
}

function only(result: ReturnType<typeof loraFactors>, tensorName: string): LoraFactor {
  const f = result.factors.find((x) => x.tensor === tensorName);
  expect(f, `a factor for ${tensorName}; unmapped: ${JSON.stringify(result.unmapped)}`).toBeDefined();
  return f!;
}

describe('parseLoraConfig', () => {
  it('reads PEFT fields with defaults', () => {
    const c = config({ use_rslora: true, rank_pattern: { q_proj: 3 }, alpha_pattern: {}, modules_to_save: null, fan_in_fan_out: false });
    expect(c).toMatchObject({ r: 2, loraAlpha: 4, useRslora: true, fanInFanOut: false, targetModules: ['q_proj', 'c_attn'] });
    expect({ ...c.rankPattern }).toEqual({ q_proj: 3 });
    expect(parseLoraConfig('{"r": 8, "lora_alpha": 16}')).toMatchObject({ useRslora: false, fanInFanOut: false });
  });

  it.each([
    ['{"r": 8, "lora_alpha": ', /not JSON/],
    ['[1, 2]', /not a JSON object/],
    ['{"lora_alpha": 16}', /r must be a positive integer/],
    ['{"r": 0, "lora_alpha": 16}', /r must be a positive integer/],
    ['{"r": 8}', /lora_alpha/],
    ['{"r": 8, "lora_alpha": 16, "use_rslora": "yes"}', /use_rslora/],
    ['{"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 2.5}}', /rank_pattern\["q_proj"\]/],
    ['{"r": 8, "lora_alpha": 16, "peft_type": "ADALORA"}', /peft_type/],
  ])('rejects %s', (json, message) => {
    let err: unknown;
    try {
      parseLoraConfig(json);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LoraError);
    expect((err as LoraError).code).toBe('malformed-config');
    expect((err as LoraError).message).toMatch(message);
  });

  it("matches patterns like PEFT's get_pattern_key: the first key in order matching at a dot, an exact key no better", () => {
    const p = { q_proj: 3, 'layers.0.self_attn.q_proj': 5, [`${Q}`]: 7 };
    expect(patternValue(p, Q)).toEqual({ key: 'q_proj', value: 3 });
    expect(patternValue({ [`${Q}`]: 7, q_proj: 3 }, Q)).toEqual({ key: Q, value: 7 });
    expect(patternValue({ '(?P<n>q)_proj': 4 }, Q)).toEqual({ key: '(?P<n>q)_proj', value: 4 });
    expect(() => patternValue({ '(?i)Q_PROJ': 4 }, Q)).toThrow(/Python-only group/);
    expect(() => patternValue({ 'q_proj{,2}': 4 }, Q)).toThrow(LoraError);
    expect(patternValue({ q_proj: 3 }, Q)).toEqual({ key: 'q_proj', value: 3 });
    expect(patternValue({ proj: 3 }, Q)).toBeUndefined(); // not at a dot boundary
  });
});

describe('loraFactors', () => {
  it('Linear and Conv2d (F32, with and without an adapter name segment): W + U·V = W + scaling·B·A', () => {
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [2, 5], 10);
    const b = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 2], 11);
    const ca = tensor(`${PEFT}${CONV}.lora_A.default.weight`, [2, 3, 3, 3], 12);
    const cb = tensor(`${PEFT}${CONV}.lora_B.default.weight`, [4, 2, 1, 1], 13);
    const res = loraFactors(file([a, b, ca, cb]), config(), base);
    expect(res.unmapped).toEqual([]);
    expect(res.factors).toHaveLength(2);
    const fq = only(res, W_Q.name);
    expect(fq).toMatchObject({ module: Q, shape: [6, 5], rank: 2 });
    expectClose(mergedFactor(W_Q, fq), mergedDirect(W_Q, a, b, 2));
    const fc = only(res, W_CONV.name);
    expect(fc).toMatchObject({ module: CONV, shape: [4, 3, 3, 3], rank: 2 });
    expect(fc.u.length).toBe(4 * 2);
    expect(fc.v.length).toBe(2 * 27);
    expectClose(mergedFactor(W_CONV, fc), mergedDirect(W_CONV, ca, cb, 2));
  });

  it('GPT-2 Conv1D with fan_in_fan_out: ΔW = (B·A)ᵀ·scaling, F16 adapter', () => {
    const a = tensor(`${PEFT}${C1D}.lora_A.weight`, [2, 5], 20, 'F16');
    const b = tensor(`${PEFT}${C1D}.lora_B.weight`, [7, 2], 21, 'F16');
    const res = loraFactors(file([a, b]), config({ fan_in_fan_out: true, lora_alpha: 3 }), base);
    expect(res.unmapped).toEqual([]);
    const f = only(res, W_C1D.name);
    expect(f).toMatchObject({ shape: [5, 7], rank: 2 });
    expectClose(mergedFactor(W_C1D, f), mergedDirect(W_C1D, a, b, 1.5, true));
  });

  it('a non-square Conv1D adapter is read [in, out] by its shape, as PEFT forces fan_in_fan_out for Conv1D', () => {
    const a = tensor(`${PEFT}${C1D}.lora_A.weight`, [2, 5], 20);
    const b = tensor(`${PEFT}${C1D}.lora_B.weight`, [7, 2], 21);
    const res = loraFactors(file([a, b]), config(), base);
    expect(res.unmapped).toEqual([]);
    expectClose(mergedFactor(W_C1D, only(res, W_C1D.name)), mergedDirect(W_C1D, a, b, 2, true));
    expect(res.layout).toEqual([{ module: C1D, tensor: W_C1D.name, storedAs: '[in, out]', by: 'shape' }]);
    // --fan-in-fan-out naming other layers: this one is [out, in], which its shape does not allow.
    const named = loraFactors(file([a, b]), config(), base, { fanInFanOut: ['q_proj'] });
    expect(named.unmapped[0].reason).toMatch(/would fit stored \[in, out\]/);
  });

  it('rslora: scaling = lora_alpha / sqrt(r)', () => {
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [3, 5], 30);
    const b = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 3], 31);
    const res = loraFactors(file([a, b]), config({ r: 3, lora_alpha: 6, use_rslora: true }), base);
    const f = only(res, W_Q.name);
    expectClose(mergedFactor(W_Q, f), mergedDirect(W_Q, a, b, 6 / Math.sqrt(3)));
    expect(f.u[0]).toBe(b.values[0] * (6 / Math.sqrt(3)));
  });

  it('rank_pattern and alpha_pattern override r and lora_alpha per module', () => {
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [3, 5], 40);
    const b = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 3], 41);
    const ca = tensor(`${PEFT}${CONV}.lora_A.weight`, [2, 3, 3, 3], 42);
    const cb = tensor(`${PEFT}${CONV}.lora_B.weight`, [4, 2, 1, 1], 43);
    const cfg = config({ rank_pattern: { q_proj: 3 }, alpha_pattern: { 'layers.0.self_attn.q_proj': 9 } });
    const res = loraFactors(file([a, b, ca, cb]), cfg, base);
    expect(res.unmapped).toEqual([]);
    expectClose(mergedFactor(W_Q, only(res, W_Q.name)), mergedDirect(W_Q, a, b, 3));
    expectClose(mergedFactor(W_CONV, only(res, W_CONV.name)), mergedDirect(W_CONV, ca, cb, 2));
    // Without the rank_pattern, r = 2 does not match the rank-3 tensors.
    const bad = loraFactors(file([a, b]), config(), base);
    expect(bad.factors).toEqual([]);
    expect(bad.unmapped[0].reason).toMatch(/rank mismatch.*r = 2/);
  });

  it('an adapter for other shapes is unmapped, naming the tensor and both shapes', () => {
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [2, 8], 50);
    const b = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 2], 51);
    const res = loraFactors(file([a, b]), config(), base);
    expect(res.factors).toEqual([]);
    expect(res.unmapped).toHaveLength(1);
    const { module, reason } = res.unmapped[0];
    expect(module).toBe(Q);
    expect(reason).toContain(`${PEFT}${Q}.lora_A.weight [2, 8]`);
    expect(reason).toContain(`${W_Q.name} [6, 5]`);
    expect(reason).toContain('expected lora_A [2, 5]');
  });

  it('a module with only lora_A is unmapped', () => {
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [2, 5], 60);
    const res = loraFactors(file([a]), config(), base);
    expect(res.factors).toEqual([]);
    expect(res.unmapped).toEqual([{ module: Q, reason: expect.stringMatching(/no matching lora_B/) }]);
  });

  it('a module that matches no base tensor is unmapped with the names tried', () => {
    const a = tensor(`${PEFT}decoder.fc.lora_A.weight`, [2, 5], 70);
    const b = tensor(`${PEFT}decoder.fc.lora_B.weight`, [6, 2], 71);
    const res = loraFactors(file([a, b]), config(), base);
    expect(res.unmapped).toHaveLength(1);
    expect(res.unmapped[0].module).toBe('decoder.fc');
    expect(res.unmapped[0].reason).toContain('tried decoder.fc.weight, model.decoder.fc.weight');
  });

  it('strips a leading model. from the module path when the base has none', () => {
    const a = tensor(`${PEFT}model.${Q}.lora_A.weight`, [2, 5], 80);
    const b = tensor(`${PEFT}model.${Q}.lora_B.weight`, [6, 2], 81);
    const res = loraFactors(file([a, b]), config(), base);
    const f = only(res, W_Q.name);
    expect(f.module).toBe(`model.${Q}`);
    expectClose(mergedFactor(W_Q, f), mergedDirect(W_Q, a, b, 2));
  });

  it('reports a base tensor that cannot be updated, DoRA and modules_to_save', () => {
    const ea = tensor(`${PEFT}embed.lora_A.weight`, [2, 4], 90);
    const eb = tensor(`${PEFT}embed.lora_B.weight`, [10, 2], 91);
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [2, 5], 92);
    const b = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 2], 93);
    const mag = tensor(`${PEFT}${Q}.lora_magnitude_vector`, [6], 94);
    const head = tensor(`${PEFT}classifier.weight`, [2, 4], 95);
    const res = loraFactors(file([ea, eb, a, b, mag, head]), config({ modules_to_save: ['classifier'] }), base);
    expect(res.factors).toEqual([]);
    const reasons = Object.fromEntries(res.unmapped.map((u) => [u.module, u.reason]));
    expect(reasons.embed).toMatch(/embed\.weight is F64/);
    expect(reasons[Q]).toMatch(/DoRA/);
    // The saved classifier is a whole tensor with no base tensor to update.
    expect(res.whole).toEqual([]);
    expect(res.unmapped.filter((u) => u.module === 'classifier')).toEqual([{ module: 'classifier', reason: expect.stringContaining(`${PEFT}classifier.weight [2, 4] is a whole tensor`) as unknown as string }]);
    expect(reasons.classifier).toContain('tried classifier.weight, model.classifier.weight');
  });

  it('embedding adapters: ΔW = (B·A)ᵀ·scaling', () => {
    const emb = tensor('tok.weight', [10, 4], 6);
    const b2 = readSafetensors(file([emb])).header;
    const a = tensor(`${PEFT}tok.lora_embedding_A`, [2, 10], 100);
    const b = tensor(`${PEFT}tok.lora_embedding_B`, [4, 2], 101);
    const f = only(loraFactors(file([a, b]), config(), b2), 'tok.weight');
    expectClose(mergedFactor(emb, f), mergedDirect(emb, a, b, 2, true));
  });

  it('a truncated adapter file is a malformed-adapter LoraError', () => {
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [2, 5], 110);
    const b = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 2], 111);
    const bytes = file([a, b]);
    for (const cut of [bytes.subarray(0, bytes.length - 3), bytes.subarray(0, 5)]) {
      let err: unknown;
      try {
        loraFactors(cut, config(), base);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(LoraError);
      expect((err as LoraError).code).toBe('malformed-adapter');
    }
  });

  it('loraTensorDelta encodes a payload delta that applies', () => {
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [2, 5], 120);
    const b = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 2], 121);
    const f = only(loraFactors(file([a, b]), config(), base), W_Q.name);
    const d = loraTensorDelta(f);
    expect(isLowRank(d)).toBe(true);
    encodePayload({ v: 1, base: '0'.repeat(64), target: '1'.repeat(64), tensors: [d] });
    const out = applyTensor({ name: W_Q.name, dtype: 'F32', shape: [6, 5] }, encodeValues(W_Q.values, 'F32'), d);
    const merged = mergedDirect(W_Q, a, b, 2);
    const got = new Float32Array(out.buffer, out.byteOffset, 30);
    for (let i = 0; i < 30; i++) expect(Math.abs(got[i] - merged[i])).toBeLessThan(1e-6);
    // A rank above min(m, n) becomes a dense delta.
    const wide = { ...f, rank: 6, u: new Float64Array(36), v: new Float64Array(30) };
    expect(isLowRank(loraTensorDelta(wide))).toBe(false);
  });
});

describe('whole tensors saved in the adapter (bias="all", modules_to_save)', () => {
  // Base: a Linear with a bias, a head (modules_to_save) with a bias, a BF16 norm weight.
  const HEAD = 'head';
  const B_Q = tensor(`${Q}.bias`, [6], 200);
  const W_HEAD = tensor(`${HEAD}.weight`, [3, 6], 201);
  const B_HEAD = tensor(`${HEAD}.bias`, [3], 202);
  const LN = tensor('ln.weight', [5], 203, 'BF16');
  const base2 = [W_Q, B_Q, W_HEAD, B_HEAD, LN];
  const base2Bytes = file(base2);
  const header2 = readSafetensors(base2Bytes).header;

  const A = tensor(`${PEFT}${Q}.lora_A.weight`, [2, 5], 210);
  const B = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 2], 211);
  const trainedBias = tensor(`${PEFT}${Q}.bias`, [6], 212);
  // The head's ΔW is exactly rank 1: trained = base + x·yᵀ (in f32).
  const x = tensor('x', [3], 213).values;
  const y = tensor('y', [6], 214).values;
  const trainedHead: T = {
    name: `${PEFT}${HEAD}.weight`,
    dtype: 'F32',
    shape: [3, 6],
    values: W_HEAD.values.map((w, i) => roundToDtype(w + x[Math.floor(i / 6)] * y[i % 6], 'F32')),
  };
  // Older PEFT versions keep the wrapper's segment in the name.
  const trainedHeadBias = tensor(`${PEFT}${HEAD}.modules_to_save.default.bias`, [3], 215);
  // Saved but not trained: equal to the base, so not part of the update.
  const savedLn: T = { ...LN, name: `${PEFT}ln.weight` };
  const adapter = file([A, B, trainedBias, trainedHead, trainedHeadBias, savedLn]);
  const configJson = JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj'], bias: 'all', modules_to_save: [HEAD] });
  const cfg = parseLoraConfig(configJson);

  async function withDir<R>(fn: (dir: string) => Promise<R>): Promise<R> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-whole-test-'));
    try {
      return await fn(dir);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  async function build(baseFile: string, mode: BuildMode): Promise<Uint8Array> {
    const res = loraFactors(adapter, cfg, header2);
    const source = await loraSource(baseFile, res.factors, res.whole);
    try {
      return (await buildUpdate({ source, mode, quant: 'f32' })).payload;
    } finally {
      await source.close();
    }
  }

  const tensorValues = (bytes: Uint8Array, name: string): Float64Array => {
    const f = readSafetensors(bytes);
    return decodeValues(f.tensor(name), f.info(name)!.dtype);
  };

  it('maps biases and modules_to_save tensors onto base tensors of the same shape and dtype (in file order)', () => {
    const res = loraFactors(adapter, cfg, header2);
    expect(res.unmapped).toEqual([]);
    expect(res.factors.map((f) => f.tensor)).toEqual([W_Q.name]);
    expect(res.whole.map((w) => [w.source, w.tensor, w.module])).toEqual([
      [trainedBias.name, B_Q.name, Q],
      [trainedHeadBias.name, B_HEAD.name, HEAD],
      [trainedHead.name, W_HEAD.name, HEAD],
      [savedLn.name, LN.name, 'ln'],
    ]);
  });

  it("the payload applied to the base gives base + B·A·scaling and the adapter's trained tensors", async () => {
    await withDir(async (dir) => {
      const baseFile = path.join(dir, 'base.safetensors');
      await fs.writeFile(baseFile, base2Bytes);
      const payload = decodePayload(await build(baseFile, { kind: 'factors' }));
      // The LoRA module stays low-rank; whole tensors are dense; the untouched norm is left out.
      expect(payload.tensors.map((d) => [d.name, isLowRank(d) ? d.rank : 'dense'])).toEqual([
        [B_Q.name, 'dense'],
        [W_Q.name, 2],
        [B_HEAD.name, 'dense'],
        [W_HEAD.name, 'dense'],
      ]);
      const applied = applyToModel(base2Bytes, payload);
      expect(applied.digest).toBe(payload.target);
      const merged = mergedDirect(W_Q, A, B, 2);
      const gotW = tensorValues(applied.bytes, W_Q.name);
      for (let i = 0; i < merged.length; i++) expect(Math.abs(gotW[i] - merged[i])).toBeLessThanOrEqual(1e-6);
      // Whole tensors: the adapter's values, to float32 rounding of base + f32(trained − base).
      for (const [want, was] of [
        [trainedBias, B_Q],
        [trainedHead, W_HEAD],
        [trainedHeadBias, B_HEAD],
      ] as const) {
        const got = tensorValues(applied.bytes, was.name);
        for (let i = 0; i < got.length; i++) {
          expect(Math.abs(got[i] - want.values[i])).toBeLessThanOrEqual(2 ** -23 * (Math.abs(want.values[i]) + Math.abs(was.values[i])));
        }
      }
      expect(tensorValues(applied.bytes, LN.name)).toEqual(LN.values);
    });
  });

  it('with --rank a whole 2-D tensor is compressed by SVD exactly as a two-model delta', async () => {
    await withDir(async (dir) => {
      const baseFile = path.join(dir, 'base.safetensors');
      const targetFile = path.join(dir, 'target.safetensors');
      await fs.writeFile(baseFile, base2Bytes);
      await fs.writeFile(targetFile, file([W_Q, B_Q, { ...trainedHead, name: W_HEAD.name }, B_HEAD, LN]));
      const fromAdapter = decodePayload(await build(baseFile, { kind: 'rank', rank: 1 }));
      const source = await twoModelSource(baseFile, targetFile);
      let fromModels: ReturnType<typeof decodePayload>;
      try {
        fromModels = decodePayload((await buildUpdate({ source, mode: { kind: 'rank', rank: 1 }, quant: 'f32' })).payload);
      } finally {
        await source.close();
      }
      const head = fromAdapter.tensors.find((d) => d.name === W_HEAD.name)!;
      expect(isLowRank(head) && head.rank).toBe(1);
      expect(fromModels.tensors).toEqual([head]);
      const got = tensorValues(applyToModel(base2Bytes, fromAdapter).bytes, W_HEAD.name);
      for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - trainedHead.values[i])).toBeLessThanOrEqual(1e-6);
    });
  });

  it('reports whole tensors whose shape or dtype differs from the base tensor, naming both', () => {
    const wide = tensor(`${PEFT}${Q}.bias`, [7], 220);
    const half = tensor(`${PEFT}${HEAD}.bias`, [3], 221, 'F16');
    const stray = tensor(`${PEFT}decoder.fc.bias`, [3], 222);
    const res = loraFactors(file([A, B, wide, half, stray]), cfg, header2);
    expect(res.factors.map((f) => f.tensor)).toEqual([W_Q.name]);
    expect(res.whole).toEqual([]);
    const reasons = Object.fromEntries(res.unmapped.map((u) => [u.module, u.reason]));
    expect(reasons[Q]).toContain(`${PEFT}${Q}.bias [7] is a whole tensor`);
    expect(reasons[Q]).toContain(`does not fit base tensor ${Q}.bias [6]`);
    expect(reasons[HEAD]).toContain(`${PEFT}${HEAD}.bias [3] is a whole tensor (bias training, modules_to_save or a saved embedding layer) of F16 but base tensor ${HEAD}.bias is F32`);
    expect(reasons['decoder.fc']).toContain('tried decoder.fc.bias, model.decoder.fc.bias');
    // A lora_B bias (PEFT's lora_bias) is still not supported.
    const lb = tensor(`${PEFT}${Q}.lora_B.bias`, [6], 223);
    const r2 = loraFactors(file([A, B, lb]), cfg, header2);
    expect(r2.unmapped.find((u) => u.module === Q)?.reason).toMatch(/lora_bias/);
  });

  it('`fleet build --lora` writes the same payload; a mismatched tensor fails the build by name unless --allow-partial', async () => {
    await withDir(async (dir) => {
      const baseFile = path.join(dir, 'base.safetensors');
      await fs.writeFile(baseFile, base2Bytes);
      await fs.writeFile(path.join(dir, 'adapter_model.safetensors'), adapter);
      await fs.writeFile(path.join(dir, 'adapter_config.json'), configJson);
      const expected = await build(baseFile, { kind: 'factors' });
      const out = path.join(dir, 'update.cbor');
      const run = (adapterFile: string, outFile: string, ...extra: string[]) =>
        execFileP(process.execPath, [FLEET_BIN, 'build', '--base', baseFile, '--lora', adapterFile, '--lora-config', path.join(dir, 'adapter_config.json'), '--out', outFile, '--json', '--yes', ...extra]);
      const ok = await run(path.join(dir, 'adapter_model.safetensors'), out);
      expect(ok.stderr).not.toMatch(/left out/);
      expect(Buffer.compare(await readUpdateFile(out), Buffer.from(expected))).toBe(0);
      const report = JSON.parse(ok.stdout.trim().split('\n').pop()!) as { tensors: Array<{ name: string; kind: string }> };
      expect(report.tensors.map((t) => [t.name, t.kind])).toEqual([
        [B_Q.name, 'dense'],
        [W_Q.name, 'low-rank'],
        [B_HEAD.name, 'dense'],
        [W_HEAD.name, 'dense'],
      ]);
      // A bias of the wrong shape fails the build, naming it; with --allow-partial it is left out and the rest is built.
      await fs.writeFile(path.join(dir, 'bad.safetensors'), file([A, B, tensor(`${PEFT}${Q}.bias`, [7], 230), trainedHead]));
      const refused = await run(path.join(dir, 'bad.safetensors'), path.join(dir, 'bad.cbor')).then(
        () => undefined,
        (e: { code: number; stderr: string }) => e,
      );
      expect(refused?.code).toBe(1);
      expect(refused?.stderr).toMatch(new RegExp(`^fleet: 1 part\\(s\\) of the adapter cannot be merged as PEFT would: ${Q}: .*--allow-partial.*\\n$`));
      await expect(fs.stat(path.join(dir, 'bad.cbor'))).rejects.toThrow();
      const bad = await run(path.join(dir, 'bad.safetensors'), path.join(dir, 'bad.cbor'), '--allow-partial');
      expect(bad.stderr).toContain(`left out (--allow-partial): adapter module ${Q}: ${PEFT}${Q}.bias [7] is a whole tensor`);
      expect(bad.stderr).toContain(`does not fit base tensor ${Q}.bias [6]`);
      expect(decodePayload(await readUpdateFile(path.join(dir, 'bad.cbor'))).tensors.map((d) => d.name)).toEqual([W_Q.name, W_HEAD.name]);
    });
  });
});

describe('PEFT variants read in process (DoRA on conv and embeddings, trainable tokens, saved copies)', () => {
  const positive = (t: T): T => ({ ...t, values: t.values.map((x) => Math.fround(Math.abs(x) + 0.25)) });
  /** m_o · (W + ΔW)_o / ‖(W + ΔW)_o‖ over the outputs: rows, or columns when perColumn. */
  function dora(merged: Float64Array, m: number, n: number, mag: Float64Array, perColumn: boolean): Float64Array {
    const out = merged.slice();
    const outputs = perColumn ? n : m;
    for (let o = 0; o < outputs; o++) {
      let n2 = 0;
      for (let k = 0; k < (perColumn ? m : n); k++) n2 += merged[perColumn ? k * n + o : o * n + k] ** 2;
      for (let k = 0; k < (perColumn ? m : n); k++) out[perColumn ? k * n + o : o * n + k] *= mag[o] / Math.sqrt(n2);
    }
    return out;
  }

  it('DoRA on a Conv2d: one magnitude per output channel ([1, out, 1, 1]), norm over the kernel', () => {
    const ca = tensor(`${PEFT}${CONV}.lora_A.weight`, [2, 3, 3, 3], 300);
    const cb = tensor(`${PEFT}${CONV}.lora_B.weight`, [4, 2, 1, 1], 301);
    const mag = positive(tensor(`${PEFT}${CONV}.lora_magnitude_vector`, [1, 4, 1, 1], 302));
    const res = loraFactors(file([ca, cb, mag]), config({ use_dora: true }), base);
    expect(res.unmapped).toEqual([]);
    expect(res.factors).toEqual([]);
    const d = res.computed[0].delta(W_CONV.values, 'F32');
    if (typeof d === 'string') throw new Error(d);
    const want = dora(mergedDirect(W_CONV, ca, cb, 2), 4, 27, mag.values, false);
    expectClose(
      W_CONV.values.map((w, i) => w + d.delta[i]),
      want,
    );
  });

  it('DoRA on an embedding: one magnitude per embedding dimension, norm over the vocabulary (columns)', () => {
    const emb = tensor('tok.weight', [10, 4], 6);
    const a = tensor(`${PEFT}tok.lora_embedding_A`, [2, 10], 310);
    const b = tensor(`${PEFT}tok.lora_embedding_B`, [4, 2], 311);
    const mag = positive(tensor(`${PEFT}tok.lora_magnitude_vector`, [4], 312));
    const res = loraFactors(file([a, b, mag]), config({ use_dora: true }), readSafetensors(file([emb])).header);
    expect(res.unmapped).toEqual([]);
    const d = res.computed[0].delta(emb.values, 'F32');
    if (typeof d === 'string') throw new Error(d);
    expectClose(
      emb.values.map((w, i) => w + d.delta[i]),
      dora(mergedDirect(emb, a, b, 2, true), 10, 4, mag.values, true),
    );
    // A magnitude of the wrong length is reported, not guessed.
    const bad = loraFactors(file([a, b, { ...mag, shape: [10], values: new Float64Array(10).fill(1) }]), config({ use_dora: true }), readSafetensors(file([emb])).header);
    expect(bad.unmapped[0].reason).toMatch(/one magnitude per output \(4\)/);
  });

  it('trainable tokens: a list of indices for the one token adapter; repeated or out-of-range rows are refused', () => {
    const emb = tensor('model.embed_tokens.weight', [10, 4], 6);
    const header = readSafetensors(file([emb])).header;
    const rows = tensor(`${PEFT}model.embed_tokens.token_adapter.trainable_tokens_delta`, [2, 4], 320);
    const res = loraFactors(file([rows]), config({ trainable_token_indices: [3, 8] }), header);
    expect(res.unmapped).toEqual([]);
    const d = res.computed[0].delta(emb.values, 'F32');
    if (typeof d === 'string') throw new Error(d);
    expect(d.factors?.rank).toBe(2);
    const want = emb.values.slice();
    want.set(rows.values.subarray(0, 4), 12);
    want.set(rows.values.subarray(4, 8), 32);
    expectClose(
      emb.values.map((w, i) => w + d.delta[i]),
      want,
    );
    expect(loraFactors(file([rows]), config({ trainable_token_indices: [3, 3] }), header).unmapped[0].reason).toMatch(/row 3 twice/);
    expect(loraFactors(file([rows]), config({ trainable_token_indices: [3, 10] }), header).unmapped[0].reason).toMatch(/row 10, beyond the 10 rows/);
    expect(loraFactors(file([rows]), config({ trainable_token_indices: { lm_head: [1, 2] } }), header).unmapped[0].reason).toMatch(/does not name its rows/);
  });

  it('bias="all" with modules_to_save: the wrapper\'s copies of one bias count once, the original module\'s copy is not merged', () => {
    const head = tensor('head.bias', [3], 330);
    const header = readSafetensors(file([head])).header;
    const trained = tensor(`${PEFT}head.bias`, [3], 331);
    const res = loraFactors(file([trained, { ...trained, name: `${PEFT}head.modules_to_save.bias` }, { ...head, name: `${PEFT}head.original_module.bias` }]), config({ bias: 'all', modules_to_save: ['head'] }), header);
    expect(res.unmapped).toEqual([]);
    expect(res.whole.map((w) => [w.source, w.tensor])).toEqual([[trained.name, 'head.bias']]);
    // Two different values for one bias: refused.
    const clash = loraFactors(file([trained, { ...tensor('x', [3], 332), name: `${PEFT}head.modules_to_save.bias` }]), config({ bias: 'all' }), header);
    expect(clash.unmapped[0].reason).toMatch(/already targeted/);
  });

  it('a KaSA diagonal without kasa_config is not merged without it: the module is reported', () => {
    const a = tensor(`${PEFT}${Q}.lora_A.weight`, [2, 5], 341);
    const b = tensor(`${PEFT}${Q}.lora_B.weight`, [6, 2], 342);
    const res = loraFactors(file([a, b, tensor(`${PEFT}${Q}.lora_diag`, [2], 343)]), config(), base);
    expect(res.unmapped).toEqual([{ module: Q, reason: expect.stringMatching(/KaSA diagonal, but KaSA is refused/) }]);
    expect(() => parseLoraConfig(JSON.stringify({ r: 2, lora_alpha: 4, kasa_config: { beta: 1e-4 } }))).toThrow(/kasa_config is set/);
  });

  it('a tensor name with control characters is a malformed adapter', () => {
    expect(() => loraFactors(file([tensor(`${PEFT}q\nproj.lora_A.weight`, [2, 5], 340)]), config(), base)).toThrow(/control characters/);
  });
});

describe('an adapted embedding saved with the adapter (save_embedding_layers)', () => {
  it('is merged when it equals the base, refused when it does not', async () => {
    const emb = tensor('model.embed_tokens.weight', [10, 4], 6);
    const baseBytes2 = file([emb]);
    const a = tensor(`${PEFT}model.embed_tokens.lora_embedding_A`, [2, 10], 350);
    const b = tensor(`${PEFT}model.embed_tokens.lora_embedding_B`, [4, 2], 351);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-emb-test-'));
    try {
      const baseFile = path.join(dir, 'base.safetensors');
      await fs.writeFile(baseFile, baseBytes2);
      const header = readSafetensors(baseBytes2).header;
      const run = async (saved: T) => {
        const res = loraFactors(file([a, b, { ...saved, name: `${PEFT}model.embed_tokens.base_layer.weight` }]), config({ target_modules: ['embed_tokens'] }), header);
        expect(res.unmapped).toEqual([]);
        const source = await loraSource(baseFile, res.factors, res.whole, res.computed);
        try {
          return decodePayload((await buildUpdate({ source, mode: { kind: 'factors' }, quant: 'f32' })).payload);
        } finally {
          await source.close();
        }
      };
      const payload = await run(emb);
      expect(payload.tensors.map((d) => [d.name, isLowRank(d) ? d.rank : 'dense'])).toEqual([['model.embed_tokens.weight', 2]]);
      const got = decodeValues(readSafetensors(applyToModel(baseBytes2, payload).bytes).tensor('model.embed_tokens.weight'), 'F32');
      const want = mergedDirect(emb, a, b, 2, true);
      for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i])).toBeLessThanOrEqual(1e-6);
      await expect(run(tensor('x', [10, 4], 352))).rejects.toThrow(/saved base weight of module model\.embed_tokens, but it differs/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
