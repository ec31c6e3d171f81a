import { describe, it, expect } from 'vitest';
import { bf16BitsToNumber, decodeValues, dtypeSize, elementReader, encodeValues, f16BitsToNumber, isDtype, numberToBf16Bits, numberToF16Bits, readElement, roundToDtype, writeElement } from '../../protocol/dtypes.ts';
import { ProtocolError } from '../../protocol/errors.ts';

function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

/** A double from its bit pattern. */
function fromBits(hi: number, lo: number): number {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setUint32(0, hi >>> 0);
  dv.setUint32(4, lo >>> 0);
  return dv.getFloat64(0);
}

/** The adjacent double above (dir 1) or below (dir -1) a positive finite x. */
function nextDouble(x: number, dir: 1 | -1): number {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setFloat64(0, x);
  dv.setBigUint64(0, dv.getBigUint64(0) + BigInt(dir));
  return dv.getFloat64(0);
}

/** x · 2^1074 as an exact BigInt (x finite). */
function exact(x: number): bigint {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setFloat64(0, Math.abs(x));
  const e = (dv.getUint32(0) >>> 20) & 0x7ff;
  const frac = (BigInt(dv.getUint32(0) & 0xfffff) << 32n) | BigInt(dv.getUint32(4));
  const mag = e === 0 ? frac : ((1n << 52n) | frac) << BigInt(e - 1);
  return x < 0 ? -mag : mag;
}

interface Fmt {
  name: string;
  toBits: (x: number) => number;
  fromBits: (b: number) => number;
  maxFinite: number;
  /** First magnitude that rounds to infinity. */
  overflow: number;
}

const F16: Fmt = { name: 'f16', toBits: numberToF16Bits, fromBits: f16BitsToNumber, maxFinite: 65504, overflow: 65520 };
const BF16: Fmt = {
  name: 'bf16',
  toBits: numberToBf16Bits,
  fromBits: bf16BitsToNumber,
  maxFinite: (2 - 2 ** -7) * 2 ** 127,
  overflow: (2 - 2 ** -8) * 2 ** 127,
};

/**
 * Brute-force check that b is the correctly rounded encoding of positive finite x:
 * its value is at least as close as both neighbours (exactly, in BigInt), and on
 * a tie the mantissa is even.
 */
function checkNearest(f: Fmt, x: number, b: number): void {
  if (x >= f.overflow) {
    expect(b).toBe(f.toBits(Infinity));
    return;
  }
  const y = f.fromBits(b);
  expect(Number.isFinite(y)).toBe(true);
  const X = exact(x);
  const dy = X - exact(y) < 0n ? exact(y) - X : X - exact(y);
  for (const nb of [b - 1, b + 1]) {
    if (nb < 0 || nb > 0x7fff) continue;
    const z = f.fromBits(nb);
    if (!Number.isFinite(z)) continue;
    const dz = X - exact(z) < 0n ? exact(z) - X : X - exact(z);
    expect(dy <= dz, `${f.name} ${x}: ${b.toString(16)} vs neighbour ${nb.toString(16)}`).toBe(true);
    if (dy === dz) expect(b % 2, `${f.name} tie at ${x} must go to even`).toBe(0);
  }
}

describe('dtypes', () => {
  it('knows safetensors dtype names and sizes', () => {
    expect(dtypeSize('F32')).toBe(4);
    expect(dtypeSize('F16')).toBe(2);
    expect(dtypeSize('BF16')).toBe(2);
    expect(dtypeSize('I8')).toBe(1);
    expect(dtypeSize('F64')).toBe(8);
    expect(dtypeSize('I64')).toBe(8);
    expect(dtypeSize('BOOL')).toBe(1);
    expect(isDtype('f32')).toBe(false);
    expect(isDtype('toString')).toBe(false);
    expect(() => dtypeSize('X' as never)).toThrow(ProtocolError);
  });

  it('f16 known cases', () => {
    const cases: Array<[number, number]> = [
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff],
      [65519.99, 0x7bff],
      [65520, 0x7c00],
      [1e300, 0x7c00],
      [-65520, 0xfc00],
      [2 ** -24, 0x0001],
      [2 ** -25, 0x0000],
      [-(2 ** -25), 0x8000],
      [3 * 2 ** -25, 0x0002],
      [2 ** -24 * 1.5, 0x0002],
      [2 ** -14, 0x0400],
      [2 ** -14 - 2 ** -25, 0x0400],
      [2 ** -14 - 2 ** -24, 0x03ff],
      [1 + 2 ** -11, 0x3c00],
      [1 + 3 * 2 ** -11, 0x3c02],
      [1 + 2 ** -11 + 2 ** -40, 0x3c01],
      [0, 0x0000],
      [-0, 0x8000],
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
      [0.1, 0x2e66],
      [5e-324, 0x0000],
    ];
    for (const [x, bits] of cases) expect(numberToF16Bits(x), `f16(${x})`).toBe(bits);
    expect(numberToF16Bits(NaN)).toBe(0x7e00);
    expect(Number.isNaN(f16BitsToNumber(0x7e00))).toBe(true);
    expect(Number.isNaN(f16BitsToNumber(0xfc01))).toBe(true);
    expect(Object.is(f16BitsToNumber(0x8000), -0)).toBe(true);
    expect(f16BitsToNumber(0x0001)).toBe(2 ** -24);
    expect(f16BitsToNumber(0x7bff)).toBe(65504);
    expect(f16BitsToNumber(0x3555)).toBe(0.333251953125);
  });

  it('f16 rounds from the double once, not through f32', () => {
    // Math.fround(1 + 2^-11 + 2^-40) = 1 + 2^-11, which would then tie to 1.
    const x = 1 + 2 ** -11 + 2 ** -40;
    expect(numberToF16Bits(Math.fround(x))).toBe(0x3c00);
    expect(numberToF16Bits(x)).toBe(0x3c01);
  });

  it('bf16 known cases', () => {
    const max = (2 - 2 ** -7) * 2 ** 127;
    const cases: Array<[number, number]> = [
      [1, 0x3f80],
      [-2, 0xc000],
      [1 + 2 ** -8, 0x3f80],
      [1 + 3 * 2 ** -8, 0x3f82],
      [1 + 2 ** -8 + 2 ** -30, 0x3f81],
      [max, 0x7f7f],
      [(2 - 2 ** -8) * 2 ** 127, 0x7f80],
      [(2 - 2 ** -8 - 2 ** -20) * 2 ** 127, 0x7f7f],
      [1e300, 0x7f80],
      [2 ** -133, 0x0001],
      [2 ** -134, 0x0000],
      [3 * 2 ** -134, 0x0002],
      [2 ** -126, 0x0080],
      [0, 0],
      [-0, 0x8000],
      [Infinity, 0x7f80],
      [-Infinity, 0xff80],
      [Math.PI, 0x4049],
    ];
    for (const [x, bits] of cases) expect(numberToBf16Bits(x), `bf16(${x})`).toBe(bits);
    expect(numberToBf16Bits(NaN)).toBe(0x7fc0);
    expect(bf16BitsToNumber(0x7f7f)).toBe(max);
    expect(Object.is(bf16BitsToNumber(0x8000), -0)).toBe(true);
    // Through f32 first, 1 + 2^-8 + 2^-24 would become 1 + 2^-8 and then tie to 1.
    expect(numberToBf16Bits(1 + 2 ** -8 + 2 ** -24)).toBe(0x3f81);
  });

  for (const f of [F16, BF16]) {
    it(`${f.name}: every non-NaN bit pattern round-trips`, () => {
      let checked = 0;
      for (let b = 0; b < 65536; b++) {
        const x = f.fromBits(b);
        if (Number.isNaN(x)) continue;
        expect(f.toBits(x)).toBe(b);
        checked++;
      }
      expect(checked).toBe(65536 - 2 * (f === F16 ? 1023 : 127));
    });

    it(`${f.name}: values increase with the bit pattern`, () => {
      let prev = -1;
      for (let b = 0; b < 0x7fff; b++) {
        const x = f.fromBits(b);
        if (Number.isNaN(x)) break;
        expect(x > prev || b === 0).toBe(true);
        prev = x;
      }
    });

    it(`${f.name}: random doubles round to the nearest value, ties to even`, () => {
      const next = xorshift(f === F16 ? 1234 : 5678);
      // Exponents spanning subnormals, normals and overflow of the format.
      const [emin, emax] = f === F16 ? [-28, 17] : [-137, 129];
      for (let i = 0; i < 4000; i++) {
        const e = emin + (next() % (emax - emin + 1));
        let x = fromBits(((e + 1023) << 20) | (next() & 0xfffff), next());
        if (i % 4 === 0) {
          // Exactly between two neighbours, or one double ulp away from it.
          const b = next() % 0x7c00;
          const lo = f.fromBits(b);
          const hi = f.fromBits(b + 1);
          if (Number.isFinite(hi)) {
            x = (lo + hi) / 2;
            const tweak = next() % 3;
            if (tweak !== 0) x = nextDouble(x, tweak === 1 ? 1 : -1);
          }
        }
        const b = f.toBits(x);
        expect(b & 0x8000).toBe(0);
        checkNearest(f, x, b);
        expect(f.toBits(-x)).toBe(b | 0x8000);
      }
    });
  }

  it('reads and writes elements little-endian at any byte offset', () => {
    const buf = new Uint8Array(1 + 4 * 3);
    const view = buf.subarray(1); // deliberately unaligned
    writeElement(view, 'F32', 0, 1.5);
    writeElement(view, 'F32', 1, 0.1);
    writeElement(view, 'F32', 2, -3);
    expect(Array.from(view.subarray(0, 4))).toEqual([0x00, 0x00, 0xc0, 0x3f]);
    expect(readElement(view, 'F32', 1)).toBe(Math.fround(0.1));
    expect(Array.from(decodeValues(view, 'F32'))).toEqual([1.5, Math.fround(0.1), -3]);

    const h = encodeValues([1, -2, 65520], 'F16');
    expect(Array.from(h)).toEqual([0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c]);
    const b = encodeValues([1, 1 + 2 ** -8 + 2 ** -30], 'BF16');
    expect(Array.from(b)).toEqual([0x80, 0x3f, 0x81, 0x3f]);

    const ints = Uint8Array.from([0xff, 0x01, 0x80, 0x00, 0xfe, 0xff]);
    expect(readElement(ints, 'I8', 0)).toBe(-1);
    expect(readElement(ints, 'I16', 1)).toBe(128);
    expect(readElement(ints, 'U16', 2)).toBe(0xfffe);
    expect(readElement(ints, 'BOOL', 3)).toBe(0);
    const r = elementReader(Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0x80]), 'I64');
    expect(r(0)).toBe(-(2 ** 63) + 1);
    expect(() => writeElement(ints, 'I8', 0, 1)).toThrow(ProtocolError);
  });

  it('roundToDtype rounds once', () => {
    expect(roundToDtype(1 + 2 ** -24, 'F32')).toBe(1);
    expect(roundToDtype(1 + 2 ** -11 + 2 ** -40, 'F16')).toBe(1 + 2 ** -10);
    expect(roundToDtype(1 + 2 ** -8 + 2 ** -30, 'BF16')).toBe(1 + 2 ** -7);
    expect(roundToDtype(0.1, 'F64')).toBe(0.1);
  });
});
