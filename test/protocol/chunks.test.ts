import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { Bitmap, DEFAULT_CHUNK_SIZE, chunkCount, chunkList, chunkMatches, chunkRange, sha256, sha256Hex, toHex, updateIdOf } from '../../protocol/chunks.ts';
import { mulberry32 as prng } from '../../util/random.ts';

const nodeSha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const pattern = (n: number) => Uint8Array.from({ length: n }, (_, k) => (k * 7 + (k >> 8)) & 0xff);

describe('hashing helpers', () => {
  it('sha256 / sha256Hex / toHex agree with known values', () => {
    const abc = new TextEncoder().encode('abc');
    expect(sha256Hex(abc)).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(toHex(sha256(abc))).toBe(sha256Hex(abc));
    expect(sha256Hex(new Uint8Array(0))).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    // toHex respects the view's offset and length.
    expect(toHex(new Uint8Array([0, 1, 0xab, 0xff, 9]).subarray(1, 4))).toBe('01abff');
  });
  it('updateIdOf is the first 32 hex digits of the payload SHA-256', () => {
    const p = pattern(1000);
    expect(updateIdOf(p)).toBe(nodeSha(p).slice(0, 32));
    expect(updateIdOf(new TextEncoder().encode('abc'))).toBe('ba7816bf8f01cfea414140de5dae2223');
    expect(updateIdOf(p)).toMatch(/^[0-9a-f]{32}$/);
  });
});

describe('chunking', () => {
  it('chunkList of 40000 bytes with 16384-byte chunks: 3 entries, each the SHA-256 of its slice', () => {
    expect(DEFAULT_CHUNK_SIZE).toBe(16384);
    const p = pattern(40000);
    const list = chunkList(p, 16384);
    expect(list.byteLength).toBe(3 * 32);
    const slices = [p.subarray(0, 16384), p.subarray(16384, 32768), p.subarray(32768, 40000)];
    slices.forEach((s, i) => expect(toHex(list.subarray(i * 32, i * 32 + 32))).toBe(nodeSha(s)));
  });
  it('chunkCount edge cases', () => {
    expect(chunkCount(0, 16384)).toBe(1);
    expect(chunkCount(1, 16384)).toBe(1);
    expect(chunkCount(16383, 16384)).toBe(1);
    expect(chunkCount(16384, 16384)).toBe(1);
    expect(chunkCount(16385, 16384)).toBe(2);
    expect(chunkCount(32768, 16384)).toBe(2);
    expect(chunkCount(40000, 16384)).toBe(3);
    expect(chunkCount(10, 1)).toBe(10);
  });
  it('chunkRange edge cases', () => {
    expect(chunkRange(40000, 16384, 0)).toEqual([0, 16384]);
    expect(chunkRange(40000, 16384, 1)).toEqual([16384, 32768]);
    expect(chunkRange(40000, 16384, 2)).toEqual([32768, 40000]);
    expect(chunkRange(32768, 16384, 1)).toEqual([16384, 32768]);
    expect(chunkRange(1, 16384, 0)).toEqual([0, 1]);
    expect(chunkRange(0, 16384, 0)).toEqual([0, 0]);
  });
  it('the ranges of all chunks tile the payload exactly', () => {
    const r = prng(7);
    for (let t = 0; t < 200; t++) {
      const size = Math.floor(r() * 5000);
      const cs = 1 + Math.floor(r() * 700);
      const n = chunkCount(size, cs);
      let at = 0;
      for (let i = 0; i < n; i++) {
        const [b, e] = chunkRange(size, cs, i);
        expect(b).toBe(at);
        expect(e - b).toBeLessThanOrEqual(cs);
        if (size > 0) expect(e).toBeGreaterThan(b);
        at = e;
      }
      expect(at).toBe(size);
    }
  });
  it('an empty payload has one chunk: the hash of nothing', () => {
    const list = chunkList(new Uint8Array(0), 16384);
    expect(toHex(list)).toBe(nodeSha(new Uint8Array(0)));
    expect(chunkMatches(list, 0, new Uint8Array(0))).toBe(true);
  });
  it('a payload that is an exact multiple of the chunk size has no empty trailing chunk', () => {
    const p = pattern(32768);
    const list = chunkList(p, 16384);
    expect(list.byteLength).toBe(64);
    expect(toHex(list.subarray(32))).toBe(nodeSha(p.subarray(16384)));
  });
  it('chunkMatches', () => {
    const p = pattern(40000);
    const list = chunkList(p, 16384);
    for (let i = 0; i < 3; i++) {
      const [b, e] = chunkRange(p.length, 16384, i);
      expect(chunkMatches(list, i, p.subarray(b, e))).toBe(true);
      // The right bytes at the wrong index, and a one-bit change, do not match.
      expect(chunkMatches(list, (i + 1) % 3, p.subarray(b, e))).toBe(false);
      const bad = Uint8Array.from(p.subarray(b, e));
      bad[bad.length - 1] ^= 1;
      expect(chunkMatches(list, i, bad)).toBe(false);
      expect(chunkMatches(list, i, p.subarray(b, e - 1))).toBe(false);
    }
    expect(chunkMatches(list, 3, p.subarray(0, 16384))).toBe(false);
    expect(chunkMatches(list, -1, p.subarray(0, 16384))).toBe(false);
    expect(chunkMatches(list.subarray(0, 63), 1, p.subarray(16384, 32768))).toBe(false);
  });
});

describe('Bitmap', () => {
  it('set / has / clear / count / complete', () => {
    const b = new Bitmap(10);
    expect(b.count).toBe(0);
    expect(b.complete).toBe(false);
    expect(b.set(3)).toBe(true);
    expect(b.set(3)).toBe(false);
    expect(b.has(3)).toBe(true);
    expect(b.has(2)).toBe(false);
    expect(b.count).toBe(1);
    b.clear(3);
    b.clear(3);
    b.clear(4);
    expect(b.has(3)).toBe(false);
    expect(b.count).toBe(0);
    for (let i = 0; i < 10; i++) b.set(i);
    expect(b.count).toBe(10);
    expect(b.complete).toBe(true);
    b.clear(9);
    expect(b.complete).toBe(false);
  });
  it('out-of-range bits', () => {
    const b = new Bitmap(10);
    expect(() => b.set(10)).toThrow(RangeError);
    expect(() => b.set(-1)).toThrow(RangeError);
    expect(b.has(10)).toBe(false);
    expect(b.has(-1)).toBe(false);
    b.clear(10);
    expect(b.count).toBe(0);
  });
  it('a bitmap of size 0 is complete', () => {
    const b = new Bitmap(0);
    expect(b.bytes.byteLength).toBe(0);
    expect(b.complete).toBe(true);
    expect(b.missing(10)).toEqual([]);
  });
  it('bit i is bit i & 7 of byte i >> 3, least significant first', () => {
    const b = new Bitmap(20);
    expect(b.bytes.byteLength).toBe(3);
    b.set(0);
    expect(Array.from(b.bytes)).toEqual([0x01, 0, 0]);
    b.set(7);
    expect(Array.from(b.bytes)).toEqual([0x81, 0, 0]);
    b.set(8);
    b.set(10);
    expect(Array.from(b.bytes)).toEqual([0x81, 0x05, 0]);
    b.set(19);
    expect(Array.from(b.bytes)).toEqual([0x81, 0x05, 0x08]);
    b.clear(0);
    expect(Array.from(b.bytes)).toEqual([0x80, 0x05, 0x08]);
  });
  it('constructing from bytes reads the same layout and round-trips', () => {
    const b = new Bitmap(16, Uint8Array.from([0b10100001, 0b00000010]));
    expect([0, 5, 7, 9].every((i) => b.has(i))).toBe(true);
    expect(b.count).toBe(4);
    expect(b.missing(100)).toEqual([1, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15]);
    const c = new Bitmap(16, b.bytes);
    expect(Array.from(c.bytes)).toEqual(Array.from(b.bytes));
    // The constructor copies: changing one leaves the other alone.
    c.set(1);
    expect(b.has(1)).toBe(false);
    const src = Uint8Array.from([0, 0]);
    const d = new Bitmap(16, src);
    d.set(0);
    expect(src[0]).toBe(0);
  });
  it('the constructor rejects a wrong byte length', () => {
    expect(() => new Bitmap(16, new Uint8Array(1))).toThrow(RangeError);
    expect(() => new Bitmap(16, new Uint8Array(3))).toThrow(RangeError);
    expect(() => new Bitmap(17, new Uint8Array(2))).toThrow(RangeError);
    expect(() => new Bitmap(0, new Uint8Array(1))).toThrow(RangeError);
    expect(new Bitmap(17, new Uint8Array(3)).size).toBe(17);
  });
  it('padding bits past size are cleared and not counted', () => {
    const b = new Bitmap(10, Uint8Array.from([0xff, 0xff]));
    expect(Array.from(b.bytes)).toEqual([0xff, 0x03]);
    expect(b.count).toBe(10);
    expect(b.complete).toBe(true);
    const c = new Bitmap(3, Uint8Array.from([0xf8]));
    expect(Array.from(c.bytes)).toEqual([0]);
    expect(c.count).toBe(0);
    // A multiple of 8 has no padding to clear.
    expect(Array.from(new Bitmap(8, Uint8Array.from([0xff])).bytes)).toEqual([0xff]);
  });
  it('missing(limit, exclude)', () => {
    const b = new Bitmap(12);
    for (const i of [0, 2, 3, 7]) b.set(i);
    expect(b.missing(100)).toEqual([1, 4, 5, 6, 8, 9, 10, 11]);
    expect(b.missing(3)).toEqual([1, 4, 5]);
    expect(b.missing(0)).toEqual([]);
    expect(b.missing(3, new Set([4, 6]))).toEqual([1, 5, 8]);
    expect(b.missing(100, new Set([1, 4, 5, 6, 8, 9, 10, 11]))).toEqual([]);
  });
  it('behaves like a Set<number> under random operations', () => {
    const r = prng(0xb17);
    for (let round = 0; round < 40; round++) {
      const size = 1 + Math.floor(r() * 100);
      const b = new Bitmap(size);
      const model = new Set<number>();
      for (let op = 0; op < 400; op++) {
        const i = Math.floor(r() * size);
        const what = r();
        if (what < 0.5) {
          expect(b.set(i)).toBe(!model.has(i));
          model.add(i);
        } else if (what < 0.8) {
          b.clear(i);
          model.delete(i);
        } else {
          expect(b.has(i)).toBe(model.has(i));
        }
        expect(b.count).toBe(model.size);
      }
      expect(b.complete).toBe(model.size === size);
      const all = Array.from({ length: size }, (_, k) => k);
      expect(all.filter((k) => b.has(k))).toEqual([...model].sort((x, y) => x - y));
      const exclude = new Set(all.filter(() => r() < 0.3));
      const limit = Math.floor(r() * size);
      expect(b.missing(limit, exclude)).toEqual(all.filter((k) => !model.has(k) && !exclude.has(k)).slice(0, limit));
      // Reloading from the raw bytes gives the same bitmap.
      const again = new Bitmap(size, b.bytes);
      expect(again.count).toBe(model.size);
      expect(all.every((k) => again.has(k) === model.has(k))).toBe(true);
    }
  });
});
