import { describe, it, expect } from 'vitest';
import { decodePayload, encodePayload, type MixedDelta, type Payload, type SignDelta, type TensorDelta } from '../../protocol/lowrank.ts';
import { applyTensor } from '../../protocol/delta-apply.ts';
import { packSigned } from '../../protocol/compact.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { encodeValues } from '../../protocol/dtypes.ts';
import { mulberry32 } from '../../util/random.ts';
import { expectCode } from '../support/expect-code.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { refRoundTo, refValues, type FloatDtype } from '../support/ref-float.ts';

const f32 = (v: number[]) => encodeValues(v, 'F32');
const hex64 = 'a'.repeat(64);
const rand = mulberry32(77);
const pick = (n: number, f: () => number) => Array.from({ length: n }, f);

/** Bits LSB-first, written out by hand (not with the code under test). */
function packBitsRef(bits: number[]): Uint8Array {
  const out = new Uint8Array(Math.ceil(bits.length / 8));
  bits.forEach((b, e) => {
    if (b) out[Math.floor(e / 8)] += 2 ** (e % 8);
  });
  return out;
}

const payload = (d: TensorDelta): Payload => ({ v: 1, base: hex64, target: hex64, tensors: [d] });
const roundTrip = (d: TensorDelta): TensorDelta => decodePayload(encodePayload(payload(d))).tensors[0];

describe('sign + scales delta (BitDelta)', () => {
  const m = 3;
  const n = 5; // 15 bits: two bytes, one padding bit
  const bits = [1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0];
  const scales = [0.25, 2 ** -20, Math.fround(0.0137)];
  const d: SignDelta = { name: 'w', shape: [m, n], sign: packBitsRef(bits), scales: f32(scales) };

  it('packs bit e of byte ⌊e/8⌋ least significant first', () => {
    expect(Array.from(d.sign)).toEqual([0b01011001, 0b0001111]);
  });

  for (const dtype of ['F32', 'F16', 'BF16'] as FloatDtype[]) {
    it(`applies to ${dtype} as round(W + (bit ? +s_i : −s_i)) with one rounding, bit for bit`, () => {
      const w = pick(m * n, () => (rand() * 2 - 1) * 3);
      w[0] = 1; // 1 + 0.25
      const base = encodeValues(w, dtype);
      const wv = refValues(base, dtype);
      const out = applyTensor({ name: 'w', dtype, shape: [m, n] }, base, roundTrip(d));
      const want = wv.map((x, e) => refRoundTo(x + (bits[e] ? 1 : -1) * scales[Math.floor(e / n)], dtype));
      expect(refValues(out, dtype)).toEqual(want);
    });
  }

  it('a 3-D tensor: rows are shape[0], n the product of the rest', () => {
    const shape = [2, 2, 3];
    const b = [0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0];
    const s = [0.5, 0.125];
    const base = encodeValues(new Array(12).fill(1), 'F32');
    const out = refValues(applyTensor({ name: 'c', dtype: 'F32', shape }, base, { name: 'c', shape, sign: packBitsRef(b), scales: f32(s) }), 'F32');
    expect(out).toEqual(b.map((x, e) => 1 + (x ? 1 : -1) * s[Math.floor(e / 6)]));
  });

  it('refuses malformed ones', () => {
    const raw = (o: Record<string, unknown>) => cborEncode({ v: 1, base: hex64, target: hex64, tensors: [{ name: 'w', shape: [m, n], sign: d.sign, scales: d.scales, ...o }] });
    expect(decodePayload(raw({})).tensors[0]).toEqual(d); // the control
    expectCode(() => decodePayload(raw({ sign: d.sign.subarray(0, 1) })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ sign: Uint8Array.of(...d.sign, 0) })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ sign: Uint8Array.of(d.sign[0], d.sign[1] | 0x80) })), 'malformed-payload'); // padding bit set
    expectCode(() => decodePayload(raw({ scales: f32([1, 2]) })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ scales: f32([1, -2, 3]) })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ scales: f32([1, NaN, 3]) })), 'non-finite');
    expectCode(() => decodePayload(raw({ scales: f32([1, 2, Infinity]) })), 'non-finite');
    expectCode(() => decodePayload(raw({ rank: 1 })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ dense: f32(new Array(15).fill(0)) })), 'malformed-payload');
    expectCode(() => decodePayload(cborEncode({ v: 1, base: hex64, target: hex64, tensors: [{ name: 'b', shape: [8], sign: Uint8Array.of(0), scales: f32(new Array(8).fill(1)) }] })), 'malformed-payload');
  });
});

describe('mixed-precision low-rank delta', () => {
  const m = 4;
  const n = 6;
  // Group 0: 8 bits, rank 1; group 1: 4 bits, rank 2; group 2: 2 bits, rank 1. r = 4.
  const spec = [
    { bits: 8 as const, rank: 1, lim: 127 },
    { bits: 4 as const, rank: 2, lim: 7 },
    { bits: 2 as const, rank: 1, lim: 1 },
  ];
  const groups = spec.map((g) => {
    const qu = pick(m * g.rank, () => Math.round((rand() * 2 - 1) * g.lim));
    const qv = pick(g.rank * n, () => Math.round((rand() * 2 - 1) * g.lim));
    qu[0] = g.lim;
    qv[0] = -g.lim; // the extremes
    const su = pick(g.rank, () => Math.fround(rand() * 0.1));
    const sv = pick(g.rank, () => Math.fround(rand() * 0.1));
    return { ...g, qu, qv, su, sv };
  });
  const d: MixedDelta = {
    name: 'w',
    shape: [m, n],
    mixed: groups.map((g) => ({ rank: g.rank, bits: g.bits, u: packSigned(g.qu, g.bits), v: packSigned(g.qv, g.bits), su: f32(g.su), sv: f32(g.sv) })),
  };
  // The reference U (m×4) and V (4×n), built from the integers, not from the packed bytes.
  const r = 4;
  const U: number[] = new Array(m * r).fill(0);
  const V: number[] = new Array(r * n).fill(0);
  let k0 = 0;
  for (const g of groups) {
    for (let i = 0; i < m; i++) for (let k = 0; k < g.rank; k++) U[i * r + k0 + k] = g.qu[i * g.rank + k] * g.su[k];
    for (let k = 0; k < g.rank; k++) for (let j = 0; j < n; j++) V[(k0 + k) * n + j] = g.qv[k * n + j] * g.sv[k];
    k0 += g.rank;
  }

  it("packs 4-bit and 2-bit values two's complement, least significant bits first", () => {
    expect(Array.from(packSigned([1, -1, 7, -7], 4))).toEqual([0xf1, 0x97]);
    expect(Array.from(packSigned([1, -1, 0, 1, -1], 2))).toEqual([0b01001101, 0b11]);
    expect(() => packSigned([-8], 4)).toThrow(RangeError);
  });

  for (const dtype of ['F32', 'F16', 'BF16'] as FloatDtype[]) {
    it(`applies to ${dtype} as round(W + Σ_k U[i,k]·V[k,j] in k order), bit for bit`, () => {
      const base = encodeValues(
        pick(m * n, () => rand() * 2 - 1),
        dtype,
      );
      const wv = refValues(base, dtype);
      const out = applyTensor({ name: 'w', dtype, shape: [m, n] }, base, roundTrip(d));
      const want = wv.map((x, e) => {
        const i = Math.floor(e / n);
        const j = e % n;
        let s = 0;
        for (let k = 0; k < r; k++) s += U[i * r + k] * V[k * n + j];
        return refRoundTo(x + s, dtype);
      });
      expect(refValues(out, dtype)).toEqual(want);
    });
  }

  it('refuses malformed ones', () => {
    const g0 = d.mixed[0];
    const raw = (o: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
      cborEncode({ v: 1, base: hex64, target: hex64, tensors: [{ name: 'w', shape: [m, n], mixed: [{ rank: g0.rank, bits: g0.bits, u: g0.u, v: g0.v, su: g0.su, sv: g0.sv, ...o }], ...extra }] });
    expect(decodePayload(raw({})).tensors[0]).toEqual({ ...d, mixed: [g0] }); // the control
    expectCode(() => decodePayload(raw({ bits: 3 })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ bits: 1 })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ bits: 16 })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ rank: 0 })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ rank: 2 })), 'malformed-payload'); // lengths no longer match
    expectCode(() => decodePayload(raw({ u: g0.u.subarray(1) })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ sv: f32([1, 2]) })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ su: f32([NaN]) })), 'non-finite');
    expectCode(() => decodePayload(raw({ sv: f32([-Infinity]) })), 'non-finite');
    expectCode(() => decodePayload(raw({ su: f32([-1]) })), 'malformed-payload');
    expectCode(() => decodePayload(raw({ u: Uint8Array.of(0x80, 0, 0, 0) })), 'malformed-payload'); // −128
    expectCode(() => decodePayload(raw({ extra: 1 })), 'malformed-payload');
    expectCode(() => decodePayload(raw({}, { rank: 1 })), 'malformed-payload');
    expectCode(() => decodePayload(cborEncode({ v: 1, base: hex64, target: hex64, tensors: [{ name: 'w', shape: [m, n], mixed: [] }] })), 'malformed-payload');
    // 4-bit: −8 is outside ±7; a set padding bit in 2-bit storage.
    const g1 = d.mixed[1];
    const four = (u: Uint8Array) => cborEncode({ v: 1, base: hex64, target: hex64, tensors: [{ name: 'w', shape: [m, n], mixed: [{ ...g1, u }] }] });
    expect(decodePayload(four(g1.u)).tensors).toHaveLength(1);
    expectCode(() => decodePayload(four(Uint8Array.of(0x08, ...g1.u.subarray(1)))), 'malformed-payload');
    const g2 = d.mixed[2];
    const two = (u: Uint8Array, v = g2.v) => cborEncode({ v: 1, base: hex64, target: hex64, tensors: [{ name: 'w', shape: [m, n], mixed: [{ ...g2, u, v }] }] });
    expect(decodePayload(two(g2.u)).tensors).toHaveLength(1);
    expectCode(() => decodePayload(two(Uint8Array.of((g2.u[0] & ~0x03) | 0x02))), 'malformed-payload'); // element 0 = −2
    expect(g2.v).toHaveLength(2); // 6 values × 2 bits: 4 padding bits
    expectCode(() => decodePayload(two(g2.u, Uint8Array.of(g2.v[0], g2.v[1] | 0x40))), 'malformed-payload');
    // Total rank above min(m, n).
    const many = Array.from({ length: 5 }, () => ({ rank: 1, bits: 8, u: new Uint8Array(m), v: new Uint8Array(n), su: f32([0]), sv: f32([0]) }));
    expectCode(() => decodePayload(cborEncode({ v: 1, base: hex64, target: hex64, tensors: [{ name: 'w', shape: [m, n], mixed: many }] })), 'malformed-payload');
  });
});

describe('compact kinds under corruption', () => {
  it('flipped bytes and truncations of a sign + mixed payload throw only ProtocolError, and applies of what decodes stay finite or refuse', () => {
    const m = 6;
    const n = 10;
    const sign: SignDelta = { name: 's', shape: [m, n], sign: Uint8Array.from({ length: 8 }, (_, i) => (i * 37) & 0xff).map((x, i) => (i === 7 ? x & 0x0f : x)), scales: f32([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) };
    const mixed: MixedDelta = {
      name: 'x',
      shape: [m, n],
      mixed: [
        {
          rank: 2,
          bits: 4,
          u: packSigned(
            pick(12, () => Math.round(rand() * 14) - 7),
            4,
          ),
          v: packSigned(
            pick(20, () => Math.round(rand() * 14) - 7),
            4,
          ),
          su: f32([0.1, 0.2]),
          sv: f32([0.3, 0.4]),
        },
      ],
    };
    const valid = encodePayload({ v: 1, base: hex64, target: hex64, tensors: [sign, mixed] });
    const r = mulberry32(9);
    const codes = new Set<string>();
    let decoded = 0;
    for (let i = 0; i < 3000; i++) {
      const b = i % 2 === 0 ? valid.subarray(0, Math.floor(r() * valid.length)) : valid.slice();
      if (i % 2 === 1) for (let k = 1 + Math.floor(r() * 3); k > 0; k--) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
      try {
        const p = decodePayload(b);
        decoded++;
        for (const d of p.tensors) {
          const out = applyTensor({ name: d.name, dtype: 'F32', shape: d.shape }, new Uint8Array(4 * d.shape.reduce((a, c) => a * c, 1)), d);
          expect(refValues(out, 'F32').every(Number.isFinite)).toBe(true);
        }
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        codes.add(e.code);
      }
    }
    expect(codes.has('malformed-payload')).toBe(true);
    expect(decoded).toBeGreaterThan(0);
    for (const c of codes) expect(['malformed-payload', 'non-finite', 'shape-mismatch']).toContain(c);
  });
});
