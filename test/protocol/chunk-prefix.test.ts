import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { readChunkPrefix } from '../../protocol/chunk-prefix.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { encodeFrame, MAX_CHUNKS, MAX_TAIL_OFFSET, type ChunkFrame } from '../../protocol/frames.ts';
import { mulberry32 as prng } from '../../util/random.ts';
import { byteMutation, params, TEST_TIMEOUT } from './fuzz-kit.ts';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const unhex = (s: string) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const ID = '0123456789abcdef0123456789abcdef';
const ID_CBOR = '7820 30313233343536373839616263646566 30313233343536373839616263646566';

/** docs/protocol.md §4.1's example (chunk 2 of 3, data 01 02 03) and the tail frame's (from byte 1024). */
const CHUNK = unhex(`a5 6176 01 6175 ${ID_CBOR} 6169 02 616e 03 6164 43 010203`);
const TAIL = unhex(`a6 6176 01 6175 ${ID_CBOR} 6169 02 616e 03 616f 190400 6164 43 010203`);

describe('readChunkPrefix: vectors', () => {
  it('the whole example chunk frame, and every cut of it after the head of d: the data received so far', () => {
    const dataAt = CHUNK.length - 3;
    for (let len = dataAt; len <= CHUNK.length; len++) {
      expect(readChunkPrefix(CHUNK.subarray(0, len))).toEqual({ updateId: ID, index: 2, count: 3, offset: 0, data: CHUNK.subarray(dataAt, len) });
    }
  });
  it('every cut before the head of d gives nothing', () => {
    for (let len = 0; len < CHUNK.length - 3; len++) expect(readChunkPrefix(CHUNK.subarray(0, len))).toBeUndefined();
    for (let len = 0; len < TAIL.length - 3; len++) expect(readChunkPrefix(TAIL.subarray(0, len))).toBeUndefined();
  });
  it('a tail frame names its offset', () => {
    expect(readChunkPrefix(TAIL.subarray(0, TAIL.length - 1))).toEqual({ updateId: ID, index: 2, count: 3, offset: 1024, data: unhex('0102') });
  });
  it('every cut of a large encoded frame (2-byte data head, large index and count)', () => {
    const r = prng(7);
    const data = Uint8Array.from({ length: 3000 }, () => Math.floor(r() * 256));
    for (const f of [
      { kind: 'chunk', updateId: ID, index: 70_000, count: MAX_CHUNKS, data },
      { kind: 'chunk', updateId: ID, index: 0, count: 1, offset: MAX_TAIL_OFFSET, data },
    ] satisfies ChunkFrame[]) {
      const bytes = encodeFrame(f);
      const dataAt = bytes.length - data.length;
      for (let len = 0; len <= bytes.length; len += len < dataAt + 8 ? 1 : 97) {
        const got = readChunkPrefix(bytes.subarray(0, len));
        if (len < dataAt) expect(got).toBeUndefined();
        else expect(got).toEqual({ updateId: ID, index: f.index, count: f.count, offset: f.offset ?? 0, data: data.subarray(0, len - dataAt) });
      }
    }
  });
  it('not a chunk frame as we write it: nothing', () => {
    const refused: Array<[string, Uint8Array]> = [
      ['list frame', encodeFrame({ kind: 'list', updateId: ID, count: 1, list: new Uint8Array(32) })],
      ['error frame', encodeFrame({ kind: 'error', updateId: ID, error: 'bad-request' })],
      ['d not last', cborEncode({ v: 1, u: ID, d: new Uint8Array(4), i: 0, n: 1 })],
      ['version 2', cborEncode({ v: 2, u: ID, i: 0, n: 1, d: new Uint8Array(4) })],
      ['i = n', cborEncode({ v: 1, u: ID, i: 1, n: 1, d: new Uint8Array(4) })],
      ['n = 0', cborEncode({ v: 1, u: ID, i: 0, n: 0, d: new Uint8Array(4) })],
      ['n over 2^24', cborEncode({ v: 1, u: ID, i: 0, n: MAX_CHUNKS + 1, d: new Uint8Array(4) })],
      ['o = 0', cborEncode({ v: 1, u: ID, i: 0, n: 1, o: 0, d: new Uint8Array(4) })],
      ['o too large', cborEncode({ v: 1, u: ID, i: 0, n: 1, o: MAX_TAIL_OFFSET + 1, d: new Uint8Array(4) })],
      ['upper-case id', cborEncode({ v: 1, u: ID.toUpperCase(), i: 0, n: 1, d: new Uint8Array(4) })],
      ['short id', cborEncode({ v: 1, u: ID.slice(1), i: 0, n: 1, d: new Uint8Array(4) })],
      ['an unknown key', cborEncode({ v: 1, u: ID, i: 0, x: 1, d: new Uint8Array(4) })],
      ['a key twice', unhex(`a5 6176 01 6175 ${ID_CBOR} 6169 00 6169 00 6164 41 00`)],
      ['i missing', cborEncode({ v: 1, u: ID, n: 1, o: 1, d: new Uint8Array(4) })],
      ['d as text', cborEncode({ v: 1, u: ID, i: 0, n: 1, d: 'abcd' })],
      ['i not shortest (0x18 0x02)', unhex(`a5 6176 01 6175 ${ID_CBOR} 6169 1802 616e 03 6164 43 010203`)],
      ['d head not shortest (0x58 0x03)', unhex(`a5 6176 01 6175 ${ID_CBOR} 6169 02 616e 03 6164 5803 010203`)],
      ['bytes after d', Uint8Array.from([...CHUNK, 0])],
      ['map(4)', unhex(`a4 6176 01 6175 ${ID_CBOR} 6169 02 6164 43 010203`)],
      ['indefinite map', unhex(`bf 6176 01 6175 ${ID_CBOR} 6169 02 616e 03 6164 43 010203`)],
    ];
    for (const [name, bytes] of refused) expect(readChunkPrefix(bytes), name).toBeUndefined();
  });
});

/** What any answer must satisfy, whatever the input. */
function checkAnswer(bytes: Uint8Array): void {
  const got = readChunkPrefix(bytes);
  if (!got) return;
  expect(got.updateId).toMatch(/^[0-9a-f]{32}$/);
  expect(got.index).toBeLessThan(got.count);
  expect(got.count).toBeLessThanOrEqual(MAX_CHUNKS);
  expect(got.offset).toBeLessThanOrEqual(MAX_TAIL_OFFSET);
  // The data is a view of the input's end.
  expect(hex(bytes.subarray(bytes.length - got.data.length))).toBe(hex(got.data));
}

describe('readChunkPrefix: fuzz (never throws; any answer is well formed)', () => {
  const frameArb = fc
    .record({
      count: fc.integer({ min: 1, max: MAX_CHUNKS }),
      r: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
      offset: fc.option(fc.integer({ min: 1, max: MAX_TAIL_OFFSET }), { nil: undefined }),
      data: fc.uint8Array({ maxLength: 300 }),
    })
    .map(({ count, r, offset, data }) => encodeFrame({ kind: 'chunk', updateId: ID, index: Math.floor(r * count), count, data, ...(offset ? { offset } : {}) }));
  it(
    'random truncations of valid frames',
    () => {
      fc.assert(
        fc.property(frameArb, fc.nat(), (bytes, cut) => {
          checkAnswer(bytes.subarray(0, cut % (bytes.length + 1)));
        }),
        params,
      );
    },
    TEST_TIMEOUT,
  );
  it(
    'mutated frames, then truncated',
    () => {
      fc.assert(
        fc.property(frameArb, byteMutation, fc.nat(), (bytes, mutate, cut) => {
          const m = mutate(bytes);
          checkAnswer(m);
          checkAnswer(m.subarray(0, cut % (m.length + 1)));
        }),
        params,
      );
    },
    TEST_TIMEOUT,
  );
  it(
    'random bytes, half of them starting like a map of 5 or 6',
    () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 120 }), fc.boolean(), (b, asMap) => {
          if (asMap && b.length) b[0] = b[0] & 1 ? 0xa6 : 0xa5;
          checkAnswer(b);
        }),
        params,
      );
    },
    TEST_TIMEOUT,
  );
});
