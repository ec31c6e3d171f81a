import { describe, it, expect } from 'vitest';
import {
  MAX_CHUNKS,
  MAX_TAIL_OFFSET,
  MAX_WANT,
  PROTOCOL_VERSION,
  decodeFrame,
  decodeReceipt,
  decodeRequest,
  encodeFrame,
  encodeReceipt,
  encodeRequest,
  type ChunkRequest,
  type Frame,
  type UploadReceipt,
} from '../../protocol/frames.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { mulberry32 as prng } from '../../util/random.ts';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const unhex = (s: string) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

const ID = '0123456789abcdef0123456789abcdef';
/** The 32 ASCII bytes of ID, preceded by the text header 0x78 0x20 (text, 1-byte length 32). */
const ID_CBOR = '7820 30313233343536373839616263646566 30313233343536373839616263646566';

function expectMalformed(fn: () => unknown): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(ProtocolError);
  expect((thrown as ProtocolError).code).toBe('malformed-frame');
}

// ---------------------------------------------------------------------------
// Fixed vectors: parse, generate, round trip.

interface Vector<T> {
  name: string;
  value: T;
  hex: string;
}

const frameVectors: Vector<Frame>[] = [
  {
    name: 'chunk frame',
    value: { kind: 'chunk', updateId: ID, index: 0, count: 2, data: new Uint8Array([1, 2, 3]) },
    // map(5) "v" 1 "u" id "i" 0 "n" 2 "d" bytes(3) 01 02 03
    hex: `a5 6176 01 6175 ${ID_CBOR} 6169 00 616e 02 6164 43 010203`,
  },
  {
    name: 'chunk frame with 1-byte and 2-byte integers',
    value: { kind: 'chunk', updateId: ID, index: 24, count: 300, data: new Uint8Array(0) },
    // i = 24 needs a 1-byte argument (0x18 0x18), n = 300 a 2-byte one (0x19 0x012c); empty bytes 0x40
    hex: `a5 6176 01 6175 ${ID_CBOR} 6169 1818 616e 19012c 6164 40`,
  },
  {
    name: 'tail frame (chunk 2 of 3 from byte 1024)',
    value: { kind: 'chunk', updateId: ID, index: 2, count: 3, offset: 1024, data: new Uint8Array([1, 2, 3]) },
    // map(6) "v" 1 "u" id "i" 2 "n" 3 "o" 1024 "d" bytes(3) 01 02 03: `o` before `d`, `d` last
    hex: `a6 6176 01 6175 ${ID_CBOR} 6169 02 616e 03 616f 190400 6164 43 010203`,
  },
  {
    name: 'list frame',
    value: { kind: 'list', updateId: ID, count: 1, list: Uint8Array.from({ length: 32 }, (_, k) => k) },
    // map(4) "v" 1 "u" id "n" 1 "l" bytes(32) 00..1f
    hex: `a4 6176 01 6175 ${ID_CBOR} 616e 01 616c 5820 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f`,
  },
  {
    name: 'error frame',
    value: { kind: 'error', updateId: ID, error: 'bad-request' },
    // map(3) "v" 1 "u" id "e" text(11) "bad-request"
    hex: `a3 6176 01 6175 ${ID_CBOR} 6165 6b 6261642d72657175657374`,
  },
  {
    name: 'unknown-update error frame',
    value: { kind: 'error', updateId: ID, error: 'unknown-update' },
    hex: `a3 6176 01 6175 ${ID_CBOR} 6165 6e 756e6b6e6f776e2d757064617465`,
  },
];

const requestVectors: Vector<ChunkRequest>[] = [
  {
    name: 'request for chunks and the list',
    value: { want: [0, 1, 24, 1000, 70000], list: true },
    // map(3) "v" 1 "want" array(5) 0 1 24 1000 70000 "list" true
    hex: 'a3 6176 01 6477616e74 85 00 01 1818 1903e8 1a00011170 646c697374 f5',
  },
  {
    name: 'request for chunks only (no list key)',
    value: { want: [7], list: false },
    hex: 'a2 6176 01 6477616e74 81 07',
  },
  {
    name: 'request with a tail (chunk 5 from byte 4096, chunk 7 whole)',
    value: { want: [5, 7], list: false, tail: [[5, 4096]] },
    // map(3) "v" 1 "want" [5, 7] "tail" [[5, 4096]]
    hex: 'a3 6176 01 6477616e74 82 05 07 647461696c 81 82 05 191000',
  },
  {
    name: 'request for the list only',
    value: { want: [], list: true },
    hex: 'a3 6176 01 6477616e74 80 646c697374 f5',
  },
];

const receiptVectors: Vector<UploadReceipt>[] = [
  {
    name: 'incomplete upload receipt',
    value: { updateId: ID, stored: false, count: 3, have: 1, missing: [1, 2] },
    // map(6) "v" 1 "u" id "ok" false "n" 3 "have" 1 "missing" [1, 2]
    hex: `a6 6176 01 6175 ${ID_CBOR} 626f6b f4 616e 03 6468617665 01 676d697373696e67 82 01 02`,
  },
  {
    name: 'refused upload receipt',
    value: { updateId: ID, stored: false, count: 1, have: 0, missing: [], error: 'hash' },
    hex: `a7 6176 01 6175 ${ID_CBOR} 626f6b f4 616e 01 6468617665 00 676d697373696e67 80 63657272 64 68617368`,
  },
  {
    name: 'stored upload receipt',
    value: { updateId: ID, stored: true, count: 2, have: 2, missing: [] },
    hex: `a6 6176 01 6175 ${ID_CBOR} 626f6b f5 616e 02 6468617665 02 676d697373696e67 80`,
  },
];

describe('fixed vectors', () => {
  for (const v of frameVectors) {
    it(`${v.name}: generate, parse, round trip`, () => {
      const bytes = unhex(v.hex);
      expect(hex(encodeFrame(v.value))).toBe(hex(bytes));
      expect(decodeFrame(bytes)).toEqual(v.value);
      expect(decodeFrame(encodeFrame(v.value))).toEqual(v.value);
    });
  }
  for (const v of requestVectors) {
    it(`${v.name}: generate, parse, round trip`, () => {
      const bytes = unhex(v.hex);
      expect(hex(encodeRequest(v.value))).toBe(hex(bytes));
      expect(decodeRequest(bytes)).toEqual(v.value);
      expect(decodeRequest(encodeRequest(v.value))).toEqual(v.value);
    });
  }
  for (const v of receiptVectors) {
    it(`${v.name}: generate, parse, round trip`, () => {
      const bytes = unhex(v.hex);
      expect(hex(encodeReceipt(v.value))).toBe(hex(bytes));
      const got = decodeReceipt(bytes);
      expect(got).toEqual(v.value);
      expect(got.error).toBe(v.value.error);
      expect(decodeReceipt(encodeReceipt(v.value))).toEqual(v.value);
    });
  }
  it('a chunk frame decodes its data as bytes, not as an array', () => {
    const f = decodeFrame(unhex(frameVectors[0].hex));
    expect(f.kind).toBe('chunk');
    expect((f as { data: unknown }).data).toBeInstanceOf(Uint8Array);
  });
});

// ---------------------------------------------------------------------------
// Randomised round trips.

function randomId(r: () => number): string {
  let s = '';
  for (let k = 0; k < 32; k++) s += '0123456789abcdef'[Math.floor(r() * 16)];
  return s;
}
function randomBytes(r: () => number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
}
const randomIndex = (r: () => number) => Math.floor(r() * (r() < 0.5 ? 300 : MAX_CHUNKS));

describe('random round trips', () => {
  const r = prng(0x5eed1);
  it('frames', () => {
    for (let t = 0; t < 500; t++) {
      const updateId = randomId(r);
      const pick = t % 3;
      let f: Frame;
      if (pick === 0) {
        const count = 1 + (randomIndex(r) % MAX_CHUNKS);
        f = { kind: 'chunk', updateId, count, index: Math.floor(r() * count), data: randomBytes(r, Math.floor(r() * 200)) };
        if (r() < 0.3) f.offset = 1 + Math.floor(r() * MAX_TAIL_OFFSET);
      } else if (pick === 1) {
        const count = 1 + Math.floor(r() * 8);
        f = { kind: 'list', updateId, count, list: randomBytes(r, count * 32) };
      } else {
        f = { kind: 'error', updateId, error: r() < 0.5 ? 'bad-request' : 'unknown-update' };
      }
      const bytes = encodeFrame(f);
      expect(decodeFrame(bytes)).toEqual(f);
      expect(hex(encodeFrame(decodeFrame(bytes)))).toBe(hex(bytes));
    }
  });
  it('requests', () => {
    for (let t = 0; t < 300; t++) {
      const list = r() < 0.5;
      const n = Math.floor(r() * (r() < 0.1 ? MAX_WANT + 1 : 20));
      const want = Array.from({ length: list || n > 0 ? n : 1 }, () => randomIndex(r));
      const q: ChunkRequest = { want, list };
      if (want.length > 0 && r() < 0.3) q.tail = [...new Set(want)].slice(0, 3).map((i) => [i, 1 + Math.floor(r() * MAX_TAIL_OFFSET)]);
      expect(decodeRequest(encodeRequest(q))).toEqual(q);
    }
  });
  it('receipts', () => {
    for (let t = 0; t < 300; t++) {
      const count = Math.floor(r() * 5000);
      const have = Math.floor(r() * (count + 1));
      const missing = Array.from({ length: Math.floor(r() * 30) }, () => randomIndex(r));
      const rc: UploadReceipt = { updateId: randomId(r), stored: r() < 0.5, count, have, missing };
      if (r() < 0.3) rc.error = `refused ${t}`;
      const got = decodeReceipt(encodeReceipt(rc));
      expect(got).toEqual(rc);
      expect(got.error).toBe(rc.error);
    }
  });
});

// ---------------------------------------------------------------------------
// Refusals.

const chunkMap = (over: Record<string, unknown> = {}) => ({ v: 1, u: ID, i: 0, n: 1, d: new Uint8Array([9]), ...over });
const listMap = (over: Record<string, unknown> = {}) => ({ v: 1, u: ID, n: 2, l: new Uint8Array(64), ...over });
const receiptMap = (over: Record<string, unknown> = {}) => ({ v: 1, u: ID, ok: true, n: 1, have: 1, missing: [], ...over });
const without = (m: Record<string, unknown>, k: string) => Object.fromEntries(Object.entries(m).filter(([key]) => key !== k));

describe('refusals (malformed-frame)', () => {
  it('the unmodified base maps are accepted (so each refusal below is due to its one change)', () => {
    expect(decodeFrame(cborEncode(chunkMap())).kind).toBe('chunk');
    expect(decodeFrame(cborEncode(listMap())).kind).toBe('list');
    expect(decodeReceipt(cborEncode(receiptMap())).stored).toBe(true);
    expect(decodeRequest(cborEncode({ v: 1, want: [MAX_CHUNKS - 1] }))).toEqual({ want: [MAX_CHUNKS - 1], list: false });
  });
  it('wrong or missing version', () => {
    for (const v of [0, 2, '1', 1.5, null, [1], { toString: 0 }]) {
      expectMalformed(() => decodeFrame(cborEncode(chunkMap({ v }))));
      expectMalformed(() => decodeRequest(cborEncode({ v, want: [1] })));
      expectMalformed(() => decodeReceipt(cborEncode(receiptMap({ v }))));
    }
    expectMalformed(() => decodeFrame(cborEncode(without(chunkMap(), 'v'))));
  });
  it('missing fields', () => {
    for (const k of ['u', 'n', 'i']) expectMalformed(() => decodeFrame(cborEncode(without(chunkMap(), k))));
    for (const k of ['u', 'n']) expectMalformed(() => decodeFrame(cborEncode(without(listMap(), k))));
    expectMalformed(() => decodeFrame(cborEncode({ v: 1, u: ID })));
    expectMalformed(() => decodeFrame(cborEncode({ v: 1, u: ID, e: 'something-else' })));
    for (const k of ['u', 'ok', 'n', 'have', 'missing']) expectMalformed(() => decodeReceipt(cborEncode(without(receiptMap(), k))));
  });
  it('wrong field types', () => {
    expectMalformed(() => decodeFrame(cborEncode(chunkMap({ d: [9] }))));
    expectMalformed(() => decodeFrame(cborEncode(chunkMap({ d: 'x' }))));
    expectMalformed(() => decodeFrame(cborEncode(chunkMap({ n: -1 }))));
    expectMalformed(() => decodeFrame(cborEncode(chunkMap({ n: MAX_CHUNKS + 1, i: 0 }))));
    expectMalformed(() => decodeFrame(cborEncode(chunkMap({ i: 0.5, n: 2 }))));
    expectMalformed(() => decodeFrame(cborEncode(listMap({ l: 'x'.repeat(64) }))));
    expectMalformed(() => decodeReceipt(cborEncode(receiptMap({ ok: 1 }))));
    expectMalformed(() => decodeReceipt(cborEncode(receiptMap({ missing: [-1] }))));
    expectMalformed(() => decodeReceipt(cborEncode(receiptMap({ err: 7 }))));
  });
  it('i >= n and n = 0', () => {
    expectMalformed(() => decodeFrame(cborEncode(chunkMap({ i: 1, n: 1 }))));
    expectMalformed(() => decodeFrame(cborEncode(chunkMap({ i: 5, n: 3 }))));
    expectMalformed(() => decodeFrame(cborEncode(chunkMap({ i: 0, n: 0 }))));
    expectMalformed(() => decodeFrame(cborEncode(listMap({ n: 0, l: new Uint8Array(0) }))));
    expect(decodeFrame(cborEncode(chunkMap({ i: 2, n: 3 })))).toMatchObject({ index: 2, count: 3 });
  });
  it('list length not n*32', () => {
    for (const len of [0, 31, 33, 63, 65, 96]) expectMalformed(() => decodeFrame(cborEncode(listMap({ n: 2, l: new Uint8Array(len) }))));
  });
  it('bad update id', () => {
    for (const u of [ID.slice(1), ID + '0', ID.toUpperCase(), ID.slice(0, 31) + 'g', 'x', '', 123, new Uint8Array(16)]) {
      expectMalformed(() => decodeFrame(cborEncode(chunkMap({ u }))));
      expectMalformed(() => decodeFrame(cborEncode(listMap({ u }))));
      expectMalformed(() => decodeFrame(cborEncode({ v: 1, u, e: 'bad-request' })));
      expectMalformed(() => decodeReceipt(cborEncode(receiptMap({ u }))));
    }
  });
  it('requests: too many, bad indices, asking for nothing', () => {
    const max = Array.from({ length: MAX_WANT }, (_, k) => k);
    expect(decodeRequest(encodeRequest({ want: max, list: false })).want).toHaveLength(MAX_WANT);
    expectMalformed(() => decodeRequest(encodeRequest({ want: [...max, MAX_WANT], list: false })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: [1, -1] })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: [1.5] })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: ['1'] })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: [MAX_CHUNKS + 1] })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: 3 })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: [] })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1 })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: [], list: false })));
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: [1], list: 1 })));
    expect(decodeRequest(cborEncode({ v: 1, list: true }))).toEqual({ want: [], list: true });
  });
  it('tail frames: o from 1 to MAX_TAIL_OFFSET', () => {
    expect(decodeFrame(cborEncode(chunkMap({ o: 1 })))).toMatchObject({ offset: 1 });
    expect(decodeFrame(cborEncode(chunkMap({ o: MAX_TAIL_OFFSET })))).toMatchObject({ offset: MAX_TAIL_OFFSET });
    for (const o of [0, -1, 1.5, MAX_TAIL_OFFSET + 1, '1', new Uint8Array([1]), null, true]) expectMalformed(() => decodeFrame(cborEncode(chunkMap({ o }))));
  });
  it('requests: tail entries [index, offset], each index wanted and named once', () => {
    expect(decodeRequest(cborEncode({ v: 1, want: [1, 2], tail: [[2, 9]] }))).toEqual({ want: [1, 2], list: false, tail: [[2, 9]] });
    const bad: unknown[] = [
      [],
      [[3, 9]],
      [[1, 0]],
      [[1, -1]],
      [[1, 9, 9]],
      [[1]],
      [1, 9],
      [
        [1, 9],
        [1, 10],
      ],
      [[1, MAX_TAIL_OFFSET + 1]],
      [[1, 1.5]],
      [['1', 9]],
      'x',
      [
        [1, 9],
        [2, 9],
        [2, 9],
      ],
    ];
    for (const tail of bad) expectMalformed(() => decodeRequest(cborEncode({ v: 1, want: [1, 2], tail })));
    // Only a list asked for: no chunk for a tail to name.
    expectMalformed(() => decodeRequest(cborEncode({ v: 1, list: true, tail: [[0, 1]] })));
  });
  it('trailing bytes, empty input, non-map top level', () => {
    const withTrailing = (b: Uint8Array) => Uint8Array.from([...b, 0x00]);
    expectMalformed(() => decodeFrame(withTrailing(unhex(frameVectors[0].hex))));
    expectMalformed(() => decodeRequest(withTrailing(unhex(requestVectors[0].hex))));
    expectMalformed(() => decodeReceipt(withTrailing(unhex(receiptVectors[0].hex))));
    expectMalformed(() => decodeFrame(Uint8Array.from([...unhex(frameVectors[3].hex), ...unhex(frameVectors[3].hex)])));
    for (const dec of [decodeFrame, decodeRequest, decodeReceipt]) {
      expectMalformed(() => dec(new Uint8Array(0)));
      for (const top of [1, 'v', [1, 2], new Uint8Array([0xa1]), null, true]) expectMalformed(() => dec(cborEncode(top)));
      expectMalformed(() => dec(unhex('a1 6176'))); // truncated map
      expectMalformed(() => dec(unhex('ff'))); // lone break
    }
  });
});

// ---------------------------------------------------------------------------
// Fuzzing: a decoder returns a value or throws ProtocolError, nothing else.

const decoders: Array<[string, (b: Uint8Array) => unknown]> = [
  ['decodeFrame', decodeFrame],
  ['decodeRequest', decodeRequest],
  ['decodeReceipt', decodeReceipt],
];

function checkTotal(bytes: Uint8Array): void {
  for (const [name, dec] of decoders) {
    try {
      dec(bytes);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw new Error(`${name}(${hex(bytes)}) threw ${String(e)}`, { cause: e });
      expect(e.code).toBe('malformed-frame');
    }
  }
}

/** A random CBOR-able value; keys drawn from the protocol's own so the decoders get past the first checks. */
function randomValue(r: () => number, depth: number): unknown {
  const keys = ['v', 'u', 'i', 'n', 'o', 'd', 'l', 'e', 'want', 'list', 'tail', 'ok', 'have', 'missing', 'err', 'toString', 'valueOf', '__proto__'];
  const c = Math.floor(r() * (depth > 2 ? 7 : 9));
  switch (c) {
    case 0:
      return Math.floor(r() * 4) - 1;
    case 1:
      return r() < 0.5 ? Math.floor(r() * 2 ** 32) : r() * 10;
    case 2:
      return r() < 0.5 ? ID : randomId(r).slice(0, Math.floor(r() * 34));
    case 3:
      return randomBytes(r, Math.floor(r() * 70));
    case 4:
      return [true, false, null, undefined, 'bad-request', 'unknown-update'][Math.floor(r() * 6)];
    case 5:
      return 2n ** 64n - BigInt(Math.floor(r() * 3));
    case 6:
      return PROTOCOL_VERSION;
    case 7:
      return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth + 1));
    default: {
      const m: Record<string, unknown> = {};
      for (let k = Math.floor(r() * 8); k > 0; k--) {
        Object.defineProperty(m, keys[Math.floor(r() * keys.length)], {
          value: randomValue(r, depth + 1),
          enumerable: true,
          configurable: true,
          writable: true,
        });
      }
      return m;
    }
  }
}

describe('fuzz', () => {
  const r = prng(20240611);
  const valid: Uint8Array[] = [...frameVectors.map((v) => unhex(v.hex)), ...requestVectors.map((v) => unhex(v.hex)), ...receiptVectors.map((v) => unhex(v.hex))];

  it('random byte strings', () => {
    for (let t = 0; t < 4000; t++) {
      const b = randomBytes(r, Math.floor(r() * 48));
      // Half of them start like a small map so they reach the field checks more often.
      if (b.length > 0 && r() < 0.5) b[0] = 0xa0 + Math.floor(r() * 8);
      checkTotal(b);
    }
  });
  it('single-byte mutations and truncations of valid encodings', () => {
    for (let t = 0; t < 4000; t++) {
      const base = valid[Math.floor(r() * valid.length)];
      if (t % 4 === 0) {
        checkTotal(base.subarray(0, Math.floor(r() * base.length)));
      } else {
        const m = Uint8Array.from(base);
        const pos = Math.floor(r() * m.length);
        m[pos] = t % 4 === 1 ? m[pos] ^ (1 << Math.floor(r() * 8)) : Math.floor(r() * 256);
        checkTotal(m);
      }
    }
  });
  it('every truncation of every vector is refused', () => {
    for (const base of valid) {
      for (let len = 0; len < base.length; len++) {
        for (const [, dec] of decoders) expectMalformed(() => dec(base.subarray(0, len)));
      }
    }
  });
  it('random well-formed CBOR maps of protocol keys', () => {
    for (let t = 0; t < 3000; t++) {
      const rest = randomValue(r, 0);
      // Mostly a valid version and id, so the field checks behind them are reached.
      const m = {
        ...(r() < 0.7 ? { v: 1 } : { v: randomValue(r, 1) }),
        ...(r() < 0.8 ? { u: ID } : { u: randomValue(r, 1) }),
        ...(typeof rest === 'object' && rest !== null && !Array.isArray(rest) && !(rest instanceof Uint8Array) ? rest : {}),
      };
      checkTotal(cborEncode(r() < 0.1 ? rest : m));
    }
  });
});
