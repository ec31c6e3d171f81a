import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { decodePayload } from '../../protocol/lowrank.ts';
import { applyToModel } from '../../protocol/delta-apply.ts';
import { readSafetensors } from '../../protocol/safetensors.ts';
import { modelDigest, safetensorsDigest } from '../../protocol/digest.ts';
import { bf16BitsToNumber, decodeValues, f16BitsToNumber, numberToBf16Bits, numberToF16Bits, type Dtype } from '../../protocol/dtypes.ts';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../protocol/vectors');
const load = (name: string) => new Uint8Array(readFileSync(path.join(dir, name)));
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

interface Element {
  tensor: string;
  dtype: Dtype;
  index: number;
  baseBits: string;
  sumF64: string;
  expectedBits: string;
  deltaF64: string;
}
interface Conversion {
  x: string;
  f64: string;
  bits: string;
  value: string;
}
const vectors = JSON.parse(readFileSync(path.join(dir, 'vectors.json'), 'utf8')) as {
  baseDigest: string;
  targetDigest: string;
  payloadSha256: string;
  files: Record<string, { bytes: number; sha256: string }>;
  elements: Element[];
  conversions: { f16: Conversion[]; bf16: Conversion[] };
};

function f64FromHex(h: string): number {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setBigUint64(0, BigInt(`0x${h}`));
  return dv.getFloat64(0);
}
/** Element bits of a little-endian tensor as big-endian hex. */
function bitsAt(data: Uint8Array, size: number, e: number): string {
  return Buffer.from(data.subarray(e * size, (e + 1) * size))
    .reverse()
    .toString('hex');
}

describe('committed test vectors', () => {
  const base = load('base.safetensors');
  const payloadBytes = load('payload.cbor');
  const target = load('target.safetensors');

  it('files match their recorded sizes and hashes', () => {
    for (const [name, f] of Object.entries(vectors.files)) {
      const b = load(name);
      expect(b.length, name).toBe(f.bytes);
      expect(sha256(b), name).toBe(f.sha256);
    }
    expect(sha256(payloadBytes)).toBe(vectors.payloadSha256);
  });

  it('digests match', () => {
    expect(safetensorsDigest(base)).toBe(vectors.baseDigest);
    expect(safetensorsDigest(target)).toBe(vectors.targetDigest);
    const p = decodePayload(payloadBytes);
    expect(p.base).toBe(vectors.baseDigest);
    expect(p.target).toBe(vectors.targetDigest);
  });

  it('applying the payload to the base reproduces the target byte for byte', () => {
    const { bytes, digest } = applyToModel(base, decodePayload(payloadBytes));
    expect(digest).toBe(vectors.targetDigest);
    expect(Buffer.from(bytes).equals(Buffer.from(target))).toBe(true);
    // The I8 tensor is untouched.
    expect(Buffer.from(readSafetensors(target).tensor('embed.q')).equals(Buffer.from(readSafetensors(base).tensor('embed.q')))).toBe(true);
    expect(modelDigest(readSafetensors(bytes).tensors)).toBe(vectors.targetDigest);
  });

  it('elementwise expectations hold', () => {
    const b = readSafetensors(base);
    const t = readSafetensors(target);
    expect(vectors.elements.length).toBeGreaterThanOrEqual(10);
    for (const el of vectors.elements) {
      const size = el.dtype === 'F32' ? 4 : 2;
      expect(bitsAt(b.tensor(el.tensor), size, el.index), `${el.tensor}[${el.index}] base`).toBe(el.baseBits);
      expect(bitsAt(t.tensor(el.tensor), size, el.index), `${el.tensor}[${el.index}] target`).toBe(el.expectedBits);
      // The sum recorded is base + delta in doubles, and the target is it rounded once.
      const w = decodeValues(b.tensor(el.tensor), el.dtype)[el.index];
      const sum = f64FromHex(el.sumF64);
      expect(sum).toBe(w + f64FromHex(el.deltaF64));
      const rounded = el.dtype === 'F32' ? Math.fround(sum) : el.dtype === 'F16' ? f16BitsToNumber(numberToF16Bits(sum)) : bf16BitsToNumber(numberToBf16Bits(sum));
      expect(decodeValues(t.tensor(el.tensor), el.dtype)[el.index]).toBe(rounded);
    }
    // The designed ties: one rounding from the double.
    const at = (name: string, i: number) => vectors.elements.find((e) => e.tensor === name && e.index === i)!.expectedBits;
    expect(at('fc1.bias', 0)).toBe('3f800000');
    expect(at('fc1.bias', 1)).toBe('3f800002');
    expect(at('attn.f16', 0)).toBe('3c01');
    expect(at('head.bf16', 0)).toBe('3f81');
    expect(at('order.check', 0)).toBe('3f800001');
  });

  it('conversion cases hold', () => {
    expect(vectors.conversions.f16.length).toBeGreaterThan(20);
    for (const c of vectors.conversions.f16) {
      const x = f64FromHex(c.f64);
      expect(Object.is(x, c.x === '-0' ? -0 : Number(c.x)), c.x).toBe(true);
      expect(numberToF16Bits(x).toString(16).padStart(4, '0'), `f16(${c.x})`).toBe(c.bits);
      expect(String(f16BitsToNumber(parseInt(c.bits, 16)))).toBe(c.value);
    }
    for (const c of vectors.conversions.bf16) {
      const x = f64FromHex(c.f64);
      expect(numberToBf16Bits(x).toString(16).padStart(4, '0'), `bf16(${c.x})`).toBe(c.bits);
      expect(String(bf16BitsToNumber(parseInt(c.bits, 16)))).toBe(c.value);
    }
    const f16 = (x: string) => vectors.conversions.f16.find((c) => c.x === x)!.bits;
    expect(f16('65520')).toBe('7c00');
    expect(f16(String(2 ** -25))).toBe('0000');
    expect(f16(String(3 * 2 ** -25))).toBe('0002');
    expect(f16(String(1 + 2 ** -11))).toBe('3c00');
    expect(f16('-0')).toBe('8000');
    expect(f16('NaN')).toBe('7e00');
  });
});
