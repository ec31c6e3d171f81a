import { describe, it, expect } from 'vitest';
import { decodePayload, encodePayload, isLowRank, quantizeRowsI8, type FactorDtype, type LowRankDelta, type Payload, type TensorDelta } from '../../protocol/lowrank.ts';
import { applyTensor, applyToModel } from '../../protocol/delta-apply.ts';
import { payloadStats } from '../../protocol/delta-info.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { modelDigest } from '../../protocol/digest.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { mulberry32 } from '../../util/random.ts';
import { expectCode } from '../support/expect-code.ts';

import { refF16, refRound, refRoundTo, refValues, type FloatDtype } from '../support/ref-float.ts';

function refFactor(bytes: Uint8Array, dtype: FactorDtype, scales: Uint8Array | undefined, cols: number): number[] {
  if (dtype !== 'i8') return refValues(bytes, dtype);
  const s = refValues(scales!, 'f32');
  return Array.from(new Int8Array(bytes.slice().buffer), (q, j) => q * s[Math.floor(j / cols)]);
}

/** Naive reference: per element, Σ_k U[i,k]·V[k,j] in k order, then W + Σ rounded once. */
function refApply(dtype: FloatDtype, shape: number[], base: Uint8Array, d: TensorDelta): number[] {
  const w = refValues(base, dtype);
  if ('dense' in d) {
    const dv = refValues(d.dense, 'f32');
    return w.map((x, e) => refRoundTo(x + dv[e], dtype));
  }
  if (!isLowRank(d)) throw new Error('refApply: low-rank and dense deltas only');
  const m = shape[0];
  const n = shape.slice(1).reduce((a, b) => a * b, 1);
  const r = d.rank;
  const U = refFactor(d.u, d.dtype, d.scales?.u, r);
  const V = refFactor(d.v, d.dtype, d.scales?.v, n);
  const out: number[] = [];
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += U[i * r + k] * V[k * n + j];
      out.push(refRoundTo(w[i * n + j] + s, dtype));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Builders.

const f32Bytes = (vals: number[]) => new Uint8Array(new Float32Array(vals).buffer);
function f16Bytes(vals: number[]): Uint8Array {
  // Encode via the reference rounding and a bits search over the decoded table.
  const table = new Map<number, number>();
  for (let h = 0; h < 0x7c00; h++) table.set(refF16(h), h);
  const out = new Uint8Array(vals.length * 2);
  vals.forEach((v, i) => {
    const r = refRound(Math.abs(v), 10, -14, 65504);
    const h = table.get(r)! | (v < 0 ? 0x8000 : 0);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >> 8;
  });
  return out;
}
function bf16Bytes(vals: number[]): Uint8Array {
  const u32 = new Uint32Array(new Float32Array(vals.map((v) => refRound(v, 7, -126, 3.4e38))).buffer);
  return new Uint8Array(new Uint16Array(Array.from(u32, (x) => x >>> 16)).buffer);
}
function tensorBytes(dtype: FloatDtype, vals: number[]): Uint8Array {
  return dtype === 'F32' ? f32Bytes(vals) : dtype === 'F16' ? f16Bytes(vals) : bf16Bytes(vals);
}
function uniform(rand: () => number, n: number, scale: number): number[] {
  return Array.from({ length: n }, () => (rand() * 2 - 1) * scale);
}
function lowRank(rand: () => number, name: string, shape: number[], r: number, dtype: FactorDtype, scale = 0.3): LowRankDelta {
  const m = shape[0];
  const n = shape.slice(1).reduce((a, b) => a * b, 1);
  const u = uniform(rand, m * r, scale);
  const v = uniform(rand, r * n, scale);
  if (dtype === 'f32') return { name, shape, rank: r, dtype, u: f32Bytes(u), v: f32Bytes(v) };
  if (dtype === 'f16') return { name, shape, rank: r, dtype, u: f16Bytes(u), v: f16Bytes(v) };
  const qu = quantizeRowsI8(u, m, r);
  const qv = quantizeRowsI8(v, r, n);
  return { name, shape, rank: r, dtype, u: qu.q, v: qv.q, scales: { u: qu.scales, v: qv.scales } };
}
const D0 = 'a'.repeat(64);
const D1 = 'b'.repeat(64);

function samplePayload(): Payload {
  const rand = mulberry32(7);
  return {
    v: 1,
    base: D0,
    target: D1,
    tensors: [lowRank(rand, 'a', [4, 3], 2, 'f32'), lowRank(rand, 'b', [2, 3, 2, 2], 2, 'f16'), lowRank(rand, 'c', [5, 6], 3, 'i8'), { name: 'd', shape: [3], dense: f32Bytes([0.5, -1, 2]) }],
  };
}

// ---------------------------------------------------------------------------

describe('payload codec', () => {
  it('round-trips', () => {
    const p = samplePayload();
    const bytes = encodePayload(p);
    const q = decodePayload(bytes);
    expect(q).toEqual(p);
    expect(Buffer.from(encodePayload(q)).equals(Buffer.from(bytes))).toBe(true);
    const stats = payloadStats(p);
    expect(stats.params).toBe(2 * (4 + 3) + 2 * (2 + 12) + 3 * (5 + 6) + 3);
    expect(stats.bytes).toBe(bytes.length);
  });

  const raw = (mutate: (p: Record<string, any>) => void): Uint8Array => {
    const p = JSON.parse(JSON.stringify({ v: 1, base: D0, target: D1 })) as Record<string, any>;
    p.tensors = samplePayload().tensors.map((t) => ({ ...t, ...('scales' in t && t.scales ? { scales: { ...t.scales } } : {}) }));
    mutate(p);
    return cborEncode(p);
  };
  const nan32 = f32Bytes([NaN]);

  it('accepts the unmutated raw encoding (control)', () => {
    expect(decodePayload(raw(() => {})).tensors.length).toBe(4);
  });

  const malformed: Array<[string, (p: Record<string, any>) => void]> = [
    [
      'wrong version',
      (p) => {
        p.v = 2;
      },
    ],
    [
      'missing version',
      (p) => {
        delete p.v;
      },
    ],
    [
      'uppercase digest',
      (p) => {
        p.base = 'A'.repeat(64);
      },
    ],
    [
      'short digest',
      (p) => {
        p.target = 'b'.repeat(63);
      },
    ],
    [
      'tensors not an array',
      (p) => {
        p.tensors = {};
      },
    ],
    [
      'extra top-level field',
      (p) => {
        p.extra = 1;
      },
    ],
    [
      'extra tensor field',
      (p) => {
        p.tensors[0].note = 'x';
      },
    ],
    [
      'u too short',
      (p) => {
        p.tensors[0].u = p.tensors[0].u.subarray(4);
      },
    ],
    [
      'v too long',
      (p) => {
        p.tensors[1].v = new Uint8Array(p.tensors[1].v.length + 2);
      },
    ],
    [
      'u not bytes',
      (p) => {
        p.tensors[0].u = Array.from(p.tensors[0].u);
      },
    ],
    [
      'rank 0',
      (p) => {
        p.tensors[0].rank = 0;
        p.tensors[0].u = new Uint8Array(0);
        p.tensors[0].v = new Uint8Array(0);
      },
    ],
    [
      'rank above min(m, n)',
      (p) => {
        p.tensors[0].rank = 4;
        p.tensors[0].u = new Uint8Array(64);
        p.tensors[0].v = new Uint8Array(48);
      },
    ],
    [
      'fractional rank',
      (p) => {
        p.tensors[0].rank = 1.5;
      },
    ],
    [
      'unknown factor dtype',
      (p) => {
        p.tensors[0].dtype = 'f64';
      },
    ],
    [
      'i8 without scales',
      (p) => {
        delete p.tensors[2].scales;
      },
    ],
    [
      'scales wrong length',
      (p) => {
        p.tensors[2].scales.v = new Uint8Array(4);
      },
    ],
    [
      'scales on f32',
      (p) => {
        p.tensors[0].scales = { u: new Uint8Array(16), v: new Uint8Array(8) };
      },
    ],
    [
      'duplicate names',
      (p) => {
        p.tensors[1].name = 'a';
      },
    ],
    [
      'empty name',
      (p) => {
        p.tensors[0].name = '';
      },
    ],
    [
      'low-rank of a 1-D shape',
      (p) => {
        p.tensors[0].shape = [12];
      },
    ],
    [
      'negative dim',
      (p) => {
        p.tensors[3].shape = [-3];
      },
    ],
    [
      'dense wrong length',
      (p) => {
        p.tensors[3].dense = new Uint8Array(8);
      },
    ],
    [
      'dense and low-rank mixed',
      (p) => {
        p.tensors[3].rank = 1;
      },
    ],
    [
      'not a map',
      (p) => {
        p.tensors[0] = [1, 2];
      },
    ],
  ];
  for (const [name, mutate] of malformed) {
    it(`refuses: ${name}`, () => expectCode(() => decodePayload(raw(mutate)), 'malformed-payload'));
  }

  it('refuses non-finite factor values', () => {
    expectCode(
      () =>
        decodePayload(
          raw((p) => {
            p.tensors[0].u = Uint8Array.from([...nan32, ...p.tensors[0].u.subarray(4)]);
          }),
        ),
      'non-finite',
    );
    expectCode(
      () =>
        decodePayload(
          raw((p) => {
            p.tensors[1].u = Uint8Array.from([0x00, 0x7c, ...p.tensors[1].u.subarray(2)]);
          }),
        ),
      'non-finite',
    );
    expectCode(
      () =>
        decodePayload(
          raw((p) => {
            p.tensors[2].scales.u = Uint8Array.from([...f32Bytes([Infinity]), ...p.tensors[2].scales.u.subarray(4)]);
          }),
        ),
      'non-finite',
    );
    expectCode(
      () =>
        decodePayload(
          raw((p) => {
            p.tensors[3].dense = f32Bytes([0, NaN, 0]);
          }),
        ),
      'non-finite',
    );
  });

  it('enforces limits', () => {
    const bytes = encodePayload(samplePayload());
    expectCode(() => decodePayload(bytes, { maxTensors: 3 }), 'payload-too-large');
    expect(decodePayload(bytes, { maxTensors: 4 }).tensors.length).toBe(4);
    expectCode(() => decodePayload(bytes, { maxBytes: bytes.length - 1 }), 'payload-too-large');
  });

  it('encodePayload refuses what decodePayload would refuse', () => {
    const p = samplePayload();
    (p.tensors[0] as LowRankDelta).rank = 3;
    expectCode(() => encodePayload(p), 'malformed-payload');
  });

  it('random bytes and truncations throw only ProtocolError', () => {
    const rand = mulberry32(3);
    const valid = encodePayload(samplePayload());
    const codes = new Set<string>();
    for (let i = 0; i < 3000; i++) {
      let b: Uint8Array;
      if (i % 3 === 0) b = Uint8Array.from({ length: Math.floor(rand() * 64) }, () => Math.floor(rand() * 256));
      else if (i % 3 === 1) b = valid.subarray(0, Math.floor(rand() * valid.length));
      else {
        b = valid.slice();
        for (let n = 1 + Math.floor(rand() * 3); n > 0; n--) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
      }
      try {
        decodePayload(b);
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        codes.add(e.code);
      }
    }
    expect(codes.has('malformed-payload')).toBe(true);
    for (const c of codes) expect(['malformed-payload', 'non-finite']).toContain(c);
  });
});

describe('applyTensor', () => {
  const cases: Array<[FloatDtype, number[], number, FactorDtype]> = [
    ['F32', [1, 1], 1, 'f32'],
    ['F32', [7, 5], 2, 'f32'],
    ['F32', [64, 33], 5, 'f32'],
    ['F32', [8, 3, 3, 3], 3, 'f32'],
    ['F32', [6, 10], 4, 'i8'],
    ['F16', [7, 5], 2, 'f32'],
    ['F16', [16, 9], 3, 'f16'],
    ['F16', [4, 2, 3, 3], 2, 'i8'],
    ['BF16', [7, 5], 2, 'f32'],
    ['BF16', [33, 12], 4, 'f16'],
    ['BF16', [9, 11], 3, 'i8'],
  ];
  for (const [dtype, shape, r, fdt] of cases) {
    it(`${dtype} [${shape.join('×')}] rank ${r} ${fdt} factors equals the naive reference bit for bit`, () => {
      const rand = mulberry32(shape.reduce((a, b) => a * 31 + b, r));
      const count = shape.reduce((a, b) => a * b, 1);
      const base = tensorBytes(dtype, uniform(rand, count, 1));
      const delta = lowRank(rand, 't', shape, r, fdt, 0.4);
      const out = applyTensor({ name: 't', dtype, shape }, base, delta);
      expect(out.length).toBe(base.length);
      const got = refValues(out, dtype);
      const want = refApply(dtype, shape, base, delta);
      const before = refValues(base, dtype);
      let changed = 0;
      for (let e = 0; e < count; e++) {
        if (!Object.is(got[e], want[e])) expect.fail(`element ${e}: got ${got[e]}, want ${want[e]}`);
        if (got[e] !== before[e]) changed++;
      }
      expect(changed).toBeGreaterThan(0);
    });
  }

  it('F32: the Float32Array path (aligned buffers) and the DataView path (unaligned) give the same bytes', () => {
    const rand = mulberry32(23);
    const unaligned = (b: Uint8Array): Uint8Array => {
      const u = new Uint8Array(b.byteLength + 1).subarray(1);
      u.set(b);
      return u;
    };
    for (const [shape, r, fdt] of [
      [[300, 8], 4, 'f32'],
      [[17, 33], 5, 'f16'],
      [[9, 2, 3], 2, 'i8'],
    ] as Array<[number[], number, FactorDtype]>) {
      const count = shape.reduce((a, b) => a * b, 1);
      const base = tensorBytes('F32', uniform(rand, count, 1));
      const delta = lowRank(rand, 't', shape, r, fdt, 0.4);
      const info = { name: 't', dtype: 'F32' as const, shape };
      const fast = applyTensor(info, base, delta);
      const slow = applyTensor(info, unaligned(base), delta, unaligned(new Uint8Array(base.byteLength)));
      expect(slow.byteOffset % 4).toBe(1);
      expect(Buffer.from(slow).equals(Buffer.from(fast))).toBe(true);
      expect(Buffer.from(fast).equals(Buffer.from(base))).toBe(false);
    }
  });

  it('rounds W + Σ once, not Σ first', () => {
    // W = 1, U·V = 2^-24 + 2^-48: 1 + 2^-24 + 2^-48 rounds up in F32, but fround(2^-24 + 2^-48) + 1 ties to 1.
    const d: LowRankDelta = { name: 't', shape: [2, 2], rank: 2, dtype: 'f32', u: f32Bytes([2 ** -12, 2 ** -24, 0, 0]), v: f32Bytes([2 ** -12, 0, 2 ** -24, 0]) };
    const out = applyTensor({ name: 't', dtype: 'F32', shape: [2, 2] }, f32Bytes([1, 1, 1, 1]), d);
    expect(Array.from(new Float32Array(out.slice().buffer))).toEqual([1 + 2 ** -23, 1, 1, 1]);
    // Sums in k order: (-2^30 + 2^30) + (2^-24 + 2^-40) = 2^-24 + 2^-40, so 1 + Σ rounds up to 1 + 2^-23.
    // In reverse order 2^-24 + 2^-40 would be lost next to 2^30 and the result would be 1.
    const o: LowRankDelta = {
      name: 'o',
      shape: [3, 3],
      rank: 3,
      dtype: 'f32',
      u: f32Bytes([2 ** 15, 2 ** 15, 1, 0, 0, 0, 0, 0, 0]),
      v: f32Bytes([-(2 ** 15), 0, 0, 2 ** 15, 0, 0, 2 ** -24 + 2 ** -40, 0, 0]),
    };
    const ob = applyTensor({ name: 'o', dtype: 'F32', shape: [3, 3] }, f32Bytes(new Array(9).fill(1)), o);
    expect(Array.from(new Float32Array(ob.slice().buffer))).toEqual([1 + 2 ** -23, 1, 1, 1, 1, 1, 1, 1, 1]);
    // F16: 1 + 2^-11 + 2^-29 goes up once, would tie down through f32.
    const h = applyTensor({ name: 'h', dtype: 'F16', shape: [1] }, f16Bytes([1]), { name: 'h', shape: [1], dense: f32Bytes([2 ** -11 + 2 ** -29]) });
    expect(Array.from(h)).toEqual([0x01, 0x3c]);
  });

  it('applies dense deltas to F32, F16 and BF16 with one rounding', () => {
    const rand = mulberry32(11);
    for (const dtype of ['F32', 'F16', 'BF16'] as FloatDtype[]) {
      const base = tensorBytes(dtype, uniform(rand, 13, 2));
      const d: TensorDelta = { name: 'x', shape: [13], dense: f32Bytes(uniform(rand, 13, 0.05)) };
      const got = refValues(applyTensor({ name: 'x', dtype, shape: [13] }, base, d), dtype);
      expect(got).toEqual(refApply(dtype, [13], base, d));
    }
  });

  it('refuses a shape that does not match', () => {
    const d = lowRank(mulberry32(1), 't', [5, 7], 2, 'f32');
    expectCode(() => applyTensor({ name: 't', dtype: 'F32', shape: [7, 5] }, new Uint8Array(140), d), 'shape-mismatch');
    expectCode(() => applyTensor({ name: 't', dtype: 'F32', shape: [5, 7, 1] }, new Uint8Array(140), d), 'shape-mismatch');
  });

  it('refuses integer tensors', () => {
    const d = lowRank(mulberry32(1), 't', [2, 2], 1, 'f32');
    expectCode(() => applyTensor({ name: 't', dtype: 'I8', shape: [2, 2] }, new Uint8Array(4), d), 'unsupported-dtype');
  });

  it('refuses an update that overflows to infinity', () => {
    const d: LowRankDelta = { name: 't', shape: [1, 1], rank: 1, dtype: 'f32', u: f32Bytes([1e19]), v: f32Bytes([1e19]) };
    expectCode(() => applyTensor({ name: 't', dtype: 'F32', shape: [1, 1] }, f32Bytes([3e38]), d), 'non-finite');
    expectCode(() => applyTensor({ name: 'h', dtype: 'F16', shape: [2] }, f16Bytes([0, 65504]), { name: 'h', shape: [2], dense: f32Bytes([0, 16]) }), 'non-finite');
    // Just below the F16 overflow threshold stays finite.
    const ok = applyTensor({ name: 'h', dtype: 'F16', shape: [1] }, f16Bytes([65504]), { name: 'h', shape: [1], dense: f32Bytes([15.5]) });
    expect(Array.from(ok)).toEqual([0xff, 0x7b]);
    expectCode(() => applyTensor({ name: 'b', dtype: 'BF16', shape: [1] }, bf16Bytes([3e38]), { name: 'b', shape: [1], dense: f32Bytes([3e38]) }), 'non-finite');
  });
});

describe('applyToModel', () => {
  const model = (): TensorInput[] => {
    const rand = mulberry32(5);
    return [
      { name: 'w1', dtype: 'F32', shape: [6, 4], data: f32Bytes(uniform(rand, 24, 1)) },
      { name: 'w2', dtype: 'BF16', shape: [3, 5], data: bf16Bytes(uniform(rand, 15, 1)) },
      { name: 'b', dtype: 'F16', shape: [4], data: f16Bytes(uniform(rand, 4, 1)) },
      { name: 'idx', dtype: 'I8', shape: [3], data: Uint8Array.from([1, 2, 3]) },
    ];
  };

  it('applies, keeps metadata and untouched tensors, and returns the digest of the output', () => {
    const rand = mulberry32(6);
    const base = writeSafetensors(model(), { format: 'pt' });
    const payload: Payload = {
      v: 1,
      base: D0,
      target: D1,
      tensors: [lowRank(rand, 'w1', [6, 4], 2, 'f32'), lowRank(rand, 'w2', [3, 5], 2, 'i8'), { name: 'b', shape: [4], dense: f32Bytes([0.25, 0, -0.5, 1]) }],
    };
    const { bytes, digest } = applyToModel(base, decodePayload(encodePayload(payload)));
    const out = readSafetensors(bytes);
    expect(digest).toBe(modelDigest(out.tensors));
    expect(digest).not.toBe(modelDigest(readSafetensors(base).tensors));
    expect(out.header.metadata).toEqual({ format: 'pt' });
    expect(Array.from(out.tensor('idx'))).toEqual([1, 2, 3]);
    const src = readSafetensors(base);
    for (const d of payload.tensors) {
      const info = src.info(d.name)!;
      expect(refValues(out.tensor(d.name), info.dtype as FloatDtype)).toEqual(refApply(info.dtype as FloatDtype, info.shape, src.tensor(d.name), d));
    }
  });

  it('refuses a delta for a tensor the model does not have', () => {
    const base = writeSafetensors(model());
    const p: Payload = { v: 1, base: D0, target: D1, tensors: [{ name: 'nope', shape: [4], dense: f32Bytes([0, 0, 0, 0]) }] };
    expectCode(() => applyToModel(base, p), 'shape-mismatch');
    const q: Payload = { v: 1, base: D0, target: D1, tensors: [{ name: 'b', shape: [2, 2], dense: f32Bytes([0, 0, 0, 0]) }] };
    expectCode(() => applyToModel(base, q), 'shape-mismatch');
  });
});
