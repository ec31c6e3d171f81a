import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodePayload } from '../../protocol/lowrank.ts';
import { applyTensor } from '../../protocol/delta-apply.ts';
import { encodeOnnx, onnxDigest, onnxGraphDifference, readOnnx, writeOnnx } from '../../protocol/onnx.ts';
import { safetensorsDigest } from '../../protocol/digest.ts';
import { writeSafetensors } from '../../protocol/safetensors.ts';
import { buildUpdate } from '../../publisher/build.ts';
import { twoModelSource } from '../../publisher/delta-source.ts';
import { buildOnnxModel } from '../../publisher/onnx-build.ts';
import { applyToOnnxFile, digestOnnxFile } from '../../util/onnx-file.ts';
import { NET_SHAPES, netModel, netSpec, netWeights, plusRankOne, typedSpec, values } from '../support/onnx-models.ts';

const { onnx } = onnxProto;

describe('ONNX models: reader and writer', () => {
  it('reads every initializer kind, from raw_data and from the typed fields alike', () => {
    const m = readOnnx(buildOnnxModel(typedSpec()));
    expect(m.tensors.map((t) => t.name)).toEqual(['bf16_raw', 'bf16_typed', 'f16_raw', 'f16_typed', 'f32_raw', 'f32_typed', 'i8_raw', 'i8_typed']);
    const by = new Map(m.tensors.map((t) => [t.name, t]));
    for (const [kind, dtype] of [
      ['f16', 'F16'],
      ['bf16', 'BF16'],
      ['i8', 'I8'],
    ] as const) {
      expect(by.get(`${kind}_raw`)!.dtype).toBe(dtype);
      expect(by.get(`${kind}_raw`)!.storage).toBe('raw_data');
      expect(by.get(`${kind}_typed`)!.storage).toBe('int32_data');
      expect(Buffer.from(by.get(`${kind}_typed`)!.data).equals(Buffer.from(by.get(`${kind}_raw`)!.data))).toBe(true);
    }
    expect(Array.from(new Int8Array(by.get('i8_typed')!.data.slice().buffer))).toEqual([-128, -1, 0, 1, 7, 127]);
    expect(by.get('f32_typed')!.storage).toBe('float_data');
    expect(Array.from(new Float32Array(by.get('f32_typed')!.data.slice().buffer))).toEqual(Array.from(Float32Array.from(values(2, 6))));
    expect(by.get('bf16_raw')!.shape).toEqual([3, 2]);
  });

  it('writes back byte-identical bytes when nothing changes', () => {
    for (const bytes of [buildOnnxModel(typedSpec()), netModel(netWeights(1), { metadata: { author: 'test' } })]) {
      expect(Buffer.from(writeOnnx(bytes, new Map())).equals(Buffer.from(bytes))).toBe(true);
    }
  });

  it('has a digest that re-serialising does not change, and that the graph, opset and metadata enter', () => {
    const w = netWeights(2);
    const base = netModel(w);
    const d = onnxDigest(base);
    // The same model, fc_w now in float_data instead of raw_data: other bytes, same model.
    const typed = netModel(w, { fcStorage: 'float_data' });
    expect(Buffer.from(typed).equals(Buffer.from(base))).toBe(false);
    expect(onnxDigest(typed)).toBe(d);
    // Re-encoded from the decoded message (and through a plain-object round trip).
    expect(onnxDigest(encodeOnnx(onnx.ModelProto.decode(base)))).toBe(d);
    expect(onnxDigest(onnx.ModelProto.encode(onnx.ModelProto.fromObject(onnx.ModelProto.toObject(onnx.ModelProto.decode(base)))).finish())).toBe(d);
    // Everything else in the file enters it.
    const others = [
      netModel(w, { activation: 'Sigmoid' }),
      netModel(w, { transB: 0 }),
      netModel(w, { metadata: { k: 'v' } }),
      buildOnnxModel({ ...netSpec(w), opset: 14 }),
      netModel({ ...w, conv_b: Float64Array.from(w.conv_b, (x, i) => (i === 0 ? x + 1 : x)) }),
    ];
    const digests = new Set([d, ...others.map(onnxDigest)]);
    expect(digests.size).toBe(others.length + 1);
    // Not the safetensors digest of the same tensors: one digest never names two different files.
    const st = writeSafetensors(readOnnx(base).tensors);
    expect(safetensorsDigest(st)).not.toBe(d);
  });

  it('names the first difference of two graphs', () => {
    const w = netWeights(3);
    const a = readOnnx(netModel(w));
    expect(onnxGraphDifference(a, readOnnx(netModel(netWeights(4))))).toBeUndefined();
    expect(onnxGraphDifference(a, readOnnx(netModel(w, { activation: 'Sigmoid' })))).toBe('model.graph.node[1] ("act").opType: "Relu" in the base, "Sigmoid" in the target');
    expect(onnxGraphDifference(a, readOnnx(netModel(w, { transB: 0 })))).toMatch(/^model\.graph\.node\[3\] \("fc"\)\.attribute\[0\] \("transB"\)\.i: "1" in the base, "0" in the target$/);
  });

  it('refuses external data with what to do', () => {
    const p = onnx.ModelProto.decode(netModel(netWeights(1)));
    const t = p.graph!.initializer![2];
    delete (t as { rawData?: Uint8Array }).rawData;
    t.dataLocation = 1;
    t.externalData = [
      { key: 'location', value: 'weights.bin' },
      { key: 'offset', value: '0' },
    ];
    expect(() => readOnnx(encodeOnnx(p))).toThrow(/initializer "fc_w" keeps its data in an external file \(location "weights.bin"\).*save_as_external_data=False/);
  });

  it('refuses bytes that are not an ONNX model', () => {
    expect(() => readOnnx(new Uint8Array([1, 2, 3, 4]))).toThrow(/ONNX/);
    expect(() => readOnnx(new Uint8Array(0))).toThrow(/ONNX/);
  });
});

describe('ONNX models: build and apply', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-onnx-'));
  });
  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('updates a Conv weight, a Gemm (transB) weight, a MatMul weight and a shared initializer bit-exactly, and only those bytes', async () => {
    const w = netWeights(7);
    const t = {
      ...w,
      conv_w: plusRankOne(w.conv_w, NET_SHAPES.conv_w[0], 11),
      fc_w: plusRankOne(w.fc_w, NET_SHAPES.fc_w[0], 13),
      mm_w: plusRankOne(w.mm_w, NET_SHAPES.mm_w[0], 17),
      shared_bias: Float64Array.from(w.shared_bias, (x, i) => x + 0.01 * (i + 1)),
    };
    const baseFile = path.join(dir, 'a.onnx');
    const targetFile = path.join(dir, 'b.onnx');
    await fs.writeFile(baseFile, netModel(w));
    await fs.writeFile(targetFile, netModel(t));
    const source = await twoModelSource(baseFile, targetFile);
    expect(source.changed.map((c) => [c.info.name, c.m, c.n])).toEqual([
      ['conv_w', 3, 18],
      ['fc_w', 6, 27],
      ['mm_w', 6, 4],
      ['shared_bias', 1, 4],
    ]);
    const { payload: bytes } = await buildUpdate({ source, mode: { kind: 'rank', rank: 1 }, quant: 'f32', method: 'lowrank' });
    await source.close();
    const payload = decodePayload(bytes);
    expect(payload.base).toBe(await digestOnnxFile(baseFile));

    const out = path.join(dir, 'c.onnx');
    const digest = await applyToOnnxFile(baseFile, payload, out);
    expect(digest).toBe(payload.target);
    expect(await digestOnnxFile(out)).toBe(digest);
    // Deterministic: the same bytes again.
    await applyToOnnxFile(baseFile, payload, path.join(dir, 'c2.onnx'));
    expect(Buffer.compare(await fs.readFile(out), await fs.readFile(path.join(dir, 'c2.onnx')))).toBe(0);

    const before = readOnnx(new Uint8Array(await fs.readFile(baseFile)));
    const after = readOnnx(new Uint8Array(await fs.readFile(out)));
    expect(onnxGraphDifference(before, after)).toBeUndefined();
    for (const bt of before.tensors) {
      const at = after.tensors.find((x) => x.name === bt.name)!;
      const delta = payload.tensors.find((d) => d.name === bt.name);
      // The very bytes of the safetensors path's per-tensor apply, or untouched.
      const want = delta ? applyTensor(bt, bt.data, delta) : bt.data;
      expect(Buffer.from(at.data).equals(Buffer.from(want)), bt.name).toBe(true);
      if (delta) expect(Buffer.from(at.data).equals(Buffer.from(bt.data)), bt.name).toBe(false);
    }
    // Rank-1 changes are carried exactly up to float32 rounding.
    const got = new Float32Array(after.tensors.find((x) => x.name === 'fc_w')!.data.slice().buffer);
    let worst = 0;
    got.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - t.fc_w[i]))));
    expect(worst).toBeLessThan(1e-5);
  });

  it('keeps a typed-field initializer in its field when it is updated', async () => {
    const w = netWeights(8);
    const baseFile = path.join(dir, 'typed-a.onnx');
    const targetFile = path.join(dir, 'typed-b.onnx');
    await fs.writeFile(baseFile, netModel(w, { fcStorage: 'float_data' }));
    await fs.writeFile(targetFile, netModel({ ...w, fc_w: plusRankOne(w.fc_w, 6, 3) }, { fcStorage: 'float_data' }));
    const source = await twoModelSource(baseFile, targetFile);
    const { payload } = await buildUpdate({ source, mode: { kind: 'rank', rank: 1 }, quant: 'f32', method: 'lowrank' });
    await source.close();
    const out = path.join(dir, 'typed-c.onnx');
    expect(await applyToOnnxFile(baseFile, decodePayload(payload), out)).toBe(decodePayload(payload).target);
    const fc = readOnnx(new Uint8Array(await fs.readFile(out))).tensors.find((x) => x.name === 'fc_w')!;
    expect(fc.storage).toBe('float_data');
  });

  it('refuses to build an update between two different graphs, naming the first difference', async () => {
    const w = netWeights(9);
    await fs.writeFile(path.join(dir, 'g-a.onnx'), netModel(w));
    await fs.writeFile(path.join(dir, 'g-b.onnx'), netModel(w, { activation: 'Sigmoid' }));
    await expect(twoModelSource(path.join(dir, 'g-a.onnx'), path.join(dir, 'g-b.onnx'))).rejects.toThrow(
      /differ outside their weights, first at model\.graph\.node\[1\] \("act"\)\.opType: "Relu" in the base, "Sigmoid" in the target/,
    );
  });
});
