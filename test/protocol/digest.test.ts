import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { ModelDigest, modelDigest, safetensorsDigest, tensorDigestPrefix } from '../../protocol/digest.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { ProtocolError } from '../../protocol/errors.ts';

/** A file assembled by hand (header JSON as given, data as given). */
function handMade(json: string, data: number[]): Uint8Array {
  const jsonBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + jsonBytes.length + data.length);
  new DataView(out.buffer).setUint32(0, jsonBytes.length, true);
  out.set(jsonBytes, 8);
  out.set(data, 8 + jsonBytes.length);
  return out;
}

const model = (): TensorInput[] => [
  { name: 'layer.1.weight', dtype: 'F32', shape: [2, 2], data: new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer) },
  { name: 'layer.0.weight', dtype: 'F16', shape: [3], data: Uint8Array.from([0, 0x3c, 0, 0x40, 0, 0x42]) },
  { name: 'bias', dtype: 'BF16', shape: [1, 1, 1], data: Uint8Array.from([0x80, 0x3f]) },
  { name: 'scalar', dtype: 'I8', shape: [], data: Uint8Array.from([5]) },
];

describe('model digest', () => {
  it('matches a digest computed by hand for one tensor', () => {
    // Tensor "w", F32, shape [2, 1], values 1.0 and -2.0.
    const data = [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0];
    const hashed = Uint8Array.from([
      1,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      0x77, // len("w") = 1, "w"
      3,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      0x46,
      0x33,
      0x32, // len("F32") = 3, "F32"
      2,
      0,
      0,
      0,
      0,
      0,
      0,
      0, // rank 2
      2,
      0,
      0,
      0,
      0,
      0,
      0,
      0, // dim 2
      1,
      0,
      0,
      0,
      0,
      0,
      0,
      0, // dim 1
      ...data,
    ]);
    const expected = createHash('sha256').update(hashed).digest('hex');
    const file = handMade('{"w":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}}', data);
    expect(safetensorsDigest(file)).toBe(expected);
    expect(modelDigest([{ name: 'w', dtype: 'F32', shape: [2, 1], data: Uint8Array.from(data) }])).toBe(expected);
    expect(Array.from(tensorDigestPrefix({ name: 'w', dtype: 'F32', shape: [2, 1] }))).toEqual(Array.from(hashed.subarray(0, hashed.length - 8)));
    expect(expected).toMatch(/^[0-9a-f]{64}$/);
  });

  it('hashes two tensors in UTF-8 name order with multi-byte names', () => {
    // "b" < "é" (0xC3 0xA9) by bytes; "é" has 2 UTF-8 bytes.
    const hashed = Uint8Array.from([2, 0, 0, 0, 0, 0, 0, 0, 0xc3, 0xa9, 2, 0, 0, 0, 0, 0, 0, 0, 0x55, 0x38, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    const bPart = Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0, 0x62, 2, 0, 0, 0, 0, 0, 0, 0, 0x55, 0x38, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]);
    const expected = createHash('sha256').update(bPart).update(hashed).digest('hex');
    const got = modelDigest([
      { name: 'é', dtype: 'U8', shape: [], data: Uint8Array.from([7]) },
      { name: 'b', dtype: 'U8', shape: [1], data: Uint8Array.from([9]) },
    ]);
    expect(got).toBe(expected);
  });

  it('sorts by UTF-8 bytes, not UTF-16 code units', () => {
    // U+FF01 is EF BC 81 in UTF-8, U+1F600 is F0 9F 98 80; in UTF-16 the order is the other way round.
    const a = { name: '\u{1F600}', dtype: 'U8' as const, shape: [1], data: Uint8Array.from([1]) };
    const b = { name: '\uFF01', dtype: 'U8' as const, shape: [1], data: Uint8Array.from([2]) };
    expect(a.name < b.name).toBe(true);
    const expected = createHash('sha256').update(tensorDigestPrefix(b)).update(b.data).update(tensorDigestPrefix(a)).update(a.data).digest('hex');
    expect(modelDigest([a, b])).toBe(expected);
    expect(safetensorsDigest(writeSafetensors([a, b]))).toBe(expected);
    const d = new ModelDigest();
    d.addTensor(b, b.data);
    d.addTensor(a, a.data);
    expect(d.digest()).toBe(expected);
    expect(() => {
      const e = new ModelDigest();
      e.addTensor(a, a.data);
      e.addTensor(b, b.data);
    }).toThrow(ProtocolError);
  });

  it('does not depend on header order, layout, whitespace or metadata', () => {
    const d0 = modelDigest(model());
    expect(safetensorsDigest(writeSafetensors(model()))).toBe(d0);
    expect(safetensorsDigest(writeSafetensors(model(), { producer: 'x', format: 'pt' }))).toBe(d0);
    // Hand-made: other key order, other data order, whitespace and metadata.
    const m = model();
    const [l1, l0, bias, scalar] = m;
    const json = `{ "scalar": {"dtype":"I8","shape":[],"data_offsets":[0,1]},
      "__metadata__": {"note": "reordered"},
      "layer.1.weight": {"data_offsets":[1,17],"shape":[2,2],"dtype":"F32"},
      "bias": {"dtype":"BF16","shape":[1,1,1],"data_offsets":[23,25]},
      "layer.0.weight": {"dtype":"F16","shape":[3],"data_offsets":[17,23]} }   `;
    const file = handMade(json, [...scalar.data, ...l1.data, ...l0.data, ...bias.data]);
    expect(readSafetensors(file).tensors.length).toBe(4);
    expect(safetensorsDigest(file)).toBe(d0);
  });

  it('changes with one data byte, a name, a dtype or a shape', () => {
    const d0 = modelDigest(model());
    const variants: Array<(m: TensorInput[]) => void> = [
      (m) => {
        m[0].data = m[0].data.slice();
        m[0].data[5] ^= 1;
      },
      (m) => {
        m[3].data = Uint8Array.from([6]);
      },
      (m) => {
        m[0].name = 'layer.1.Weight';
      },
      (m) => {
        m[3].dtype = 'U8';
      },
      (m) => {
        m[2].dtype = 'F16';
      },
      (m) => {
        m[0].shape = [4, 1];
      },
      (m) => {
        m[0].shape = [4];
      },
      (m) => {
        m[2].shape = [1, 1];
      },
      (m) => {
        m.pop();
      },
    ];
    const seen = new Set([d0]);
    for (const change of variants) {
      const m = model();
      change(m);
      const d = modelDigest(m);
      expect(seen.has(d)).toBe(false);
      seen.add(d);
    }
  });

  it('streaming ModelDigest equals modelDigest and refuses out-of-order tensors', () => {
    const sorted = readSafetensors(writeSafetensors(model())).tensors;
    const d = new ModelDigest();
    for (const t of sorted) d.addTensor(t, t.data);
    expect(d.digest()).toBe(modelDigest(model()));
    expect(d.digest()).toBe(modelDigest(model())); // idempotent

    // Pieces via beginTensor/update give the same.
    const p = new ModelDigest();
    for (const t of sorted) {
      p.beginTensor(t);
      for (let i = 0; i < t.data.length; i += 3) p.update(t.data.subarray(i, i + 3));
    }
    expect(p.digest()).toBe(d.digest());

    const o = new ModelDigest();
    o.addTensor(sorted[1], sorted[1].data);
    expect(() => o.addTensor(sorted[0], sorted[0].data)).toThrow(ProtocolError);
    const r = new ModelDigest();
    r.addTensor(sorted[0], sorted[0].data);
    expect(() => r.addTensor(sorted[0], sorted[0].data)).toThrow(ProtocolError);
    expect(() => new ModelDigest().addTensor(sorted[0], sorted[0].data.subarray(1))).toThrow(ProtocolError);
    const f = new ModelDigest();
    f.digest();
    expect(() => f.addTensor(sorted[0], sorted[0].data)).toThrow(ProtocolError);
  });
});
