import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProtocolError } from '../../protocol/errors.ts';
import { decodePayload, type Payload } from '../../protocol/lowrank.ts';
import { applyTensor } from '../../protocol/delta-apply.ts';
import { encodeValues } from '../../protocol/dtypes.ts';
import { onnxDigest, onnxGraphDifference, readOnnx, writeOnnx } from '../../protocol/onnx.ts';
import { buildUpdate } from '../../publisher/build.ts';
import { twoModelSource } from '../../publisher/delta-source.ts';
import { buildOnnxModel } from '../../publisher/onnx-build.ts';
import { applyToOnnxFile, digestOnnxFile } from '../../util/onnx-file.ts';
import { NET_SHAPES, netModel, netWeights, plusRankOne, typedSpec, values } from '../support/onnx-models.ts';

const { onnx } = onnxProto;

/** Protobuf wire format by hand: a varint, and a LEN field. */
function varint(n: number): Buffer {
  const out: number[] = [];
  for (; n >= 0x80; n = Math.floor(n / 128)) out.push((n % 128) | 0x80);
  out.push(n);
  return Buffer.from(out);
}
const len = (field: number, payload: Uint8Array): Buffer => Buffer.concat([varint(field * 8 + 2), varint(payload.byteLength), payload]);
/** A StringStringEntryProto (key 1, value 2). */
const entry = (key: string, value: string): Buffer => Buffer.concat([len(1, Buffer.from(key)), len(2, Buffer.from(value))]);

/**
 * The model as a newer ONNX exporter writes it: fields onnx-proto's schema (ONNX 1.10) does not
 * define, hand-encoded. metadata_props on the first node (NodeProto field 9) and on every
 * initializer, after its data (TensorProto field 16), a GraphProto field 16, and a ModelProto
 * field 99 (a varint).
 */
function withNewerFields(bytes: Uint8Array, tag: string): Buffer {
  const p = onnx.ModelProto.decode(bytes);
  const g = p.graph!;
  const nodes = g.node!.map((n, i) => len(1, Buffer.concat([onnx.NodeProto.encode(n).finish(), i === 0 ? len(9, entry('source', tag)) : Buffer.alloc(0)])));
  const inits = g.initializer!.map((t) => len(5, Buffer.concat([onnx.TensorProto.encode(t).finish(), len(16, entry('origin', `${tag}:${t.name}`))])));
  const rest = onnx.GraphProto.encode(Object.assign(new onnx.GraphProto(), g, { node: [], initializer: [] })).finish();
  const graph = Buffer.concat([...nodes, ...inits, rest, len(16, entry('graph', tag))]);
  const model = onnx.ModelProto.encode(Object.assign(new onnx.ModelProto(), p, { graph: undefined })).finish();
  return Buffer.concat([model, len(7, graph), varint(99 * 8), varint(1)]);
}

/** Every initializer's data put back from `from`: what remains is the file outside the initializer data. */
function withDataOf(bytes: Uint8Array, from: Uint8Array): Uint8Array {
  return writeOnnx(bytes, new Map(readOnnx(from).tensors.map((t) => [t.name, t.data])));
}

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-onnx-splice-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function updateBetween(name: string, base: Uint8Array, target: Uint8Array, rank: number): Promise<{ baseFile: string; payload: Payload }> {
  const baseFile = path.join(dir, `${name}-a.onnx`);
  const targetFile = path.join(dir, `${name}-b.onnx`);
  await fs.writeFile(baseFile, base);
  await fs.writeFile(targetFile, target);
  const source = await twoModelSource(baseFile, targetFile);
  try {
    const { payload } = await buildUpdate({ source, mode: { kind: 'rank', rank }, quant: 'f32', method: 'lowrank' });
    return { baseFile, payload: decodePayload(payload) };
  } finally {
    await source.close();
  }
}

describe('ONNX splice writer: fields a newer ONNX added', () => {
  it('an apply keeps them byte for byte: the written file is the base outside the initializer data', async () => {
    const w = netWeights(31);
    const t = { ...w, fc_w: plusRankOne(w.fc_w, NET_SHAPES.fc_w[0], 5), mm_w: plusRankOne(w.mm_w, NET_SHAPES.mm_w[0], 7) };
    const base = withNewerFields(netModel(w), 'exporter-2.1');
    const { baseFile, payload } = await updateBetween('newer', base, withNewerFields(netModel(t), 'exporter-2.1'), 1);
    expect(payload.tensors.map((d) => d.name)).toEqual(['fc_w', 'mm_w']);
    const out = path.join(dir, 'newer-c.onnx');
    const digest = await applyToOnnxFile(baseFile, payload, out);
    expect(digest).toBe(payload.target);
    expect(await digestOnnxFile(out)).toBe(digest);
    const written = new Uint8Array(await fs.readFile(out));
    // The newer fields are in the file ONNX Runtime will load.
    for (const field of [len(9, entry('source', 'exporter-2.1')), len(16, entry('origin', 'exporter-2.1:fc_w')), len(16, entry('graph', 'exporter-2.1'))]) {
      expect(Buffer.from(written).includes(field)).toBe(true);
    }
    // Outside the data of the initializers the update changed, every byte is the base's.
    expect(Buffer.from(written).equals(base)).toBe(false);
    expect(Buffer.from(withDataOf(written, base)).equals(base)).toBe(true);
    // And the changed data is the per-tensor apply's, bit for bit.
    const before = readOnnx(base);
    const after = readOnnx(written);
    for (const bt of before.tensors) {
      const delta = payload.tensors.find((d) => d.name === bt.name);
      const want = delta ? applyTensor(bt, bt.data, delta) : bt.data;
      expect(Buffer.from(after.tensors.find((x) => x.name === bt.name)!.data).equals(Buffer.from(want)), bt.name).toBe(true);
    }
  });

  it('they enter the digest, and two models differing only in them are named as differing', () => {
    const plain = netModel(netWeights(32));
    const a = withNewerFields(plain, 'a');
    const b = withNewerFields(plain, 'b');
    expect(new Set([onnxDigest(plain), onnxDigest(a), onnxDigest(b)]).size).toBe(3);
    expect(onnxGraphDifference(readOnnx(a), readOnnx(b))).toMatch(/^byte \d+ of the skeletons .*a field that schema does not define/);
    // The weights do not change the skeleton: the same fields with other weights have the same graph hash.
    expect(readOnnx(withNewerFields(netModel(netWeights(33)), 'a')).graphHash).toBe(readOnnx(a).graphHash);
  });

  it('a canonically encoded file keeps the skeleton hash of the earlier definition (onnx-proto re-encoding without the data)', () => {
    for (const bytes of [netModel(netWeights(39), { metadata: { k: 'v' } }), netModel(netWeights(40), { fcStorage: 'float_data' }), buildOnnxModel(typedSpec())]) {
      const p = onnx.ModelProto.decode(bytes);
      for (const t of p.graph!.initializer!) {
        delete (t as { rawData?: Uint8Array }).rawData;
        Object.assign(t, { floatData: [], int32Data: [], int64Data: [], doubleData: [], uint64Data: [] });
      }
      expect(readOnnx(bytes).graphHash).toBe(createHash('sha256').update(onnx.ModelProto.encode(p).finish()).digest('hex'));
    }
  });

  it('writing the data a file already holds gives the file back, byte for byte', () => {
    for (const bytes of [withNewerFields(netModel(netWeights(34)), 'x'), buildOnnxModel(typedSpec()), netModel(netWeights(35), { fcStorage: 'float_data' })]) {
      expect(Buffer.from(withDataOf(bytes, bytes)).equals(Buffer.from(bytes))).toBe(true);
    }
  });
});

describe('ONNX splice writer: each initializer kind', () => {
  it('applies bit-exactly to F32, F16 and BF16 in raw_data and in their typed fields, rewriting length prefixes when int32_data varints change size; INT8 stays as it was', async () => {
    const base = buildOnnxModel(typedSpec());
    const spec = typedSpec();
    // New values for the float initializers; the F16 ones change sign, so the int32_data varints of
    // their bit patterns change length (a positive F16 below 2 is under 2^14: 2 bytes; a negative one 3 bytes).
    for (const init of spec.initializers) {
      if (init.dtype === 'I8') continue;
      const v = values(init.name.length * 7 + 1, 6).map((x) => (init.dtype === 'F16' ? -Math.abs(x) - 0.25 : x * 0.9));
      init.data = init.dtype === 'F32' ? new Uint8Array(Float32Array.from(v).buffer) : encodeValues(Float64Array.from(v), init.dtype as 'F16' | 'BF16');
    }
    const { baseFile, payload } = await updateBetween('typed', base, buildOnnxModel(spec), 2);
    expect(payload.tensors.map((d) => d.name)).toEqual(['bf16_raw', 'bf16_typed', 'f16_raw', 'f16_typed', 'f32_raw', 'f32_typed']);
    const out = path.join(dir, 'typed-c.onnx');
    expect(await applyToOnnxFile(baseFile, payload, out)).toBe(payload.target);
    const written = new Uint8Array(await fs.readFile(out));
    // The int32_data records grew: the graph's and those tensors' length prefixes were rewritten.
    expect(written.byteLength).toBeGreaterThan(base.byteLength);
    const before = readOnnx(base);
    const after = readOnnx(written);
    expect(after.graphHash).toBe(before.graphHash);
    const replaced = new Map<string, Uint8Array>();
    for (const bt of before.tensors) {
      const at = after.tensors.find((x) => x.name === bt.name)!;
      expect(at.storage, bt.name).toBe(bt.storage);
      const delta = payload.tensors.find((d) => d.name === bt.name);
      const want = delta ? applyTensor(bt, bt.data, delta) : bt.data;
      if (delta) replaced.set(bt.name, want);
      expect(Buffer.from(at.data).equals(Buffer.from(want)), bt.name).toBe(true);
      if (bt.dtype === 'I8') expect(Array.from(new Int8Array(at.data.slice().buffer))).toEqual([-128, -1, 0, 1, 7, 127]);
    }
    // The streamed writer and the in-memory one write the same bytes; back to the base data gives the base.
    expect(Buffer.from(writeOnnx(base, replaced)).equals(Buffer.from(written))).toBe(true);
    expect(Buffer.from(withDataOf(written, base)).equals(Buffer.from(base))).toBe(true);
  });

  it('reads float_data written unpacked (one field per value) as the packed form, and writes it back packed', () => {
    const packed = netModel(netWeights(36), { fcStorage: 'float_data' });
    const p = onnx.ModelProto.decode(packed);
    const fc = p.graph!.initializer!.find((t) => t.name === 'fc_w')!;
    // float_data = 4, wire type 5 (fixed32) per value: what a writer that ignores [packed = true] writes.
    const unpackedData = Buffer.concat(Array.from(Float32Array.from(fc.floatData!), (v) => Buffer.concat([varint(4 * 8 + 5), Buffer.from(new Float32Array([v]).buffer)])));
    const tensor = Buffer.concat([onnx.TensorProto.encode(Object.assign(new onnx.TensorProto(), fc, { floatData: [] })).finish(), unpackedData]);
    const g = p.graph!;
    const graph = Buffer.concat([
      ...g.initializer!.map((t) => len(5, t === fc ? tensor : onnx.TensorProto.encode(t).finish())),
      onnx.GraphProto.encode(Object.assign(new onnx.GraphProto(), g, { initializer: [] })).finish(),
    ]);
    const unpacked = Buffer.concat([onnx.ModelProto.encode(Object.assign(new onnx.ModelProto(), p, { graph: undefined })).finish(), len(7, graph)]);
    const m = readOnnx(unpacked);
    const want = readOnnx(packed).tensors.find((t) => t.name === 'fc_w')!;
    expect(Buffer.from(m.tensors.find((t) => t.name === 'fc_w')!.data).equals(Buffer.from(want.data))).toBe(true);
    expect(m.graphHash).not.toBe(readOnnx(packed).graphHash); // the other initializers' order in the graph differs
    const rewritten = writeOnnx(unpacked, new Map([['fc_w', want.data]]));
    expect(rewritten.byteLength).toBeLessThan(unpacked.byteLength);
    expect(readOnnx(rewritten).graphHash).toBe(m.graphHash);
    expect(Buffer.from(readOnnx(rewritten).tensors.find((t) => t.name === 'fc_w')!.data).equals(Buffer.from(want.data))).toBe(true);
  });
});

describe('ONNX wire scan: hostile bytes', () => {
  /** Either a model or a malformed-model refusal: never another error, never a hang. */
  function readOrRefuse(bytes: Uint8Array): 'read' | 'refused' {
    try {
      readOnnx(bytes);
      return 'read';
    } catch (e) {
      expect(e, String(e)).toBeInstanceOf(ProtocolError);
      expect((e as ProtocolError).code).toBe('malformed-model');
      return 'refused';
    }
  }

  it('every truncation and every single-byte change of a model is read or refused as malformed-model', () => {
    const bytes = withNewerFields(netModel(netWeights(37)), 'h');
    const seen = { read: 0, refused: 0 };
    for (let cut = 0; cut < bytes.byteLength; cut++) seen[readOrRefuse(bytes.subarray(0, cut))]++;
    for (let at = 0; at < bytes.byteLength; at += 3) {
      for (const v of [0x00, 0xff, bytes[at] ^ 0x80]) {
        const changed = Buffer.from(bytes);
        changed[at] = v;
        seen[readOrRefuse(changed)]++;
      }
    }
    expect(seen.refused).toBeGreaterThan(0);
    expect(seen.read).toBeGreaterThan(0);
  });

  it('refuses a length past the end, two graphs, and a group that does not end', () => {
    const model = Buffer.from(netModel(netWeights(38)));
    expect(() => readOnnx(Buffer.concat([model, varint(7 * 8 + 2), varint(2 ** 40)]))).toThrow(/runs past its message/);
    expect(() => readOnnx(Buffer.concat([model, len(7, Buffer.alloc(0))]))).toThrow(/two graph fields/);
    expect(() => readOnnx(Buffer.concat([model, varint(50 * 8 + 3), varint(51 * 8 + 0), varint(1)]))).toThrow(/group at byte \d+ does not end/);
    // A shape that claims far more than the file holds is refused before anything that size is allocated.
    const p = onnx.ModelProto.decode(model);
    p.graph!.initializer![0].dims = [1 << 20, 1 << 20];
    expect(() => readOnnx(onnx.ModelProto.encode(p).finish())).toThrow(/initializer "conv_w": its shape \[1048576,1048576\] needs 4398046511104 bytes, raw_data holds \d+/);
  });
});
