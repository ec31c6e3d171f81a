import { describe, it, expect } from 'vitest';
import { cborDecode, cborEncode } from '../../protocol/cbor.ts';
import { CborError, MAX_CBOR_DEPTH, checkStrictCbor, type CborForm } from '../../protocol/cbor-strict.ts';
import { decodeFrame, decodeRequest } from '../../protocol/frames.ts';
import { decodePayload } from '../../protocol/lowrank.ts';
import { codeOf } from '../support/protocol-errors.ts';
import { array, bytes, concat, f16, f32, f64, head, indefinite, map, tag, text, uint } from '../../scripts/cbor-forge.ts';

function formOf(b: Uint8Array): CborForm | 'accepted' {
  try {
    cborDecode(b);
  } catch (e) {
    if (e instanceof CborError) return e.form;
    throw e;
  }
  return 'accepted';
}

const ID = '0123456789abcdef0123456789abcdef';
const DIGEST = 'ab'.repeat(32);
const chunkFrame = (v = uint(1), d = bytes(Uint8Array.of(1, 2, 3))) =>
  map([
    ['v', v],
    ['u', text(ID)],
    ['i', uint(0)],
    ['n', uint(1)],
    ['d', d],
  ]);
/** A payload map with one dense delta; each part may be replaced by forged bytes. */
function payload(o: { v?: Uint8Array; dense?: Uint8Array; name?: Uint8Array; shape?: Uint8Array; extra?: Array<[string | Uint8Array, Uint8Array]> } = {}): Uint8Array {
  const delta = map([
    ['name', o.name ?? text('b')],
    ['shape', o.shape ?? array([uint(2)])],
    ['dense', o.dense ?? bytes(new Uint8Array(8))],
  ]);
  return map([['v', o.v ?? uint(1)], ['base', text(DIGEST)], ['target', text(DIGEST)], ['tensors', array([delta])], ...(o.extra ?? [])]);
}

/** Each refused form: input, the rule it breaks, and the same fault inside a frame and a payload. */
const refused: Array<{ form: CborForm; why: string; item: Uint8Array; frame: Uint8Array; payload: Uint8Array }> = [
  {
    form: 'indefinite-length',
    why: 'an indefinite-length byte string (major type 2, valid CBOR)',
    item: indefinite(2, [bytes(Uint8Array.of(1)), bytes(Uint8Array.of(2))]),
    frame: chunkFrame(undefined, indefinite(2, [bytes(Uint8Array.of(1, 2)), bytes(Uint8Array.of(3))])),
    payload: payload({ dense: indefinite(2, [bytes(new Uint8Array(4)), bytes(new Uint8Array(4))]) }),
  },
  {
    form: 'indefinite-length',
    why: 'an indefinite-length map, array and text string',
    item: indefinite(5, [text('v'), uint(1)]),
    frame: indefinite(5, [text('v'), uint(1), text('u'), text(ID), text('i'), uint(0), text('n'), uint(1), text('d'), bytes(Uint8Array.of(1))]),
    payload: payload({ shape: indefinite(4, [uint(2)]), name: indefinite(3, [text('b')]) }),
  },
  {
    form: 'non-shortest',
    why: 'an integer in a longer head than needed (1 as 0x18 0x01)',
    item: uint(1, 1),
    frame: chunkFrame(uint(1, 1)),
    payload: payload({ v: uint(1, 8) }),
  },
  {
    form: 'non-shortest',
    why: 'a length in a longer head than needed',
    item: concat(head(3, 1, 1), Uint8Array.of(0x61)),
    frame: chunkFrame(undefined, concat(head(2, 3, 2), Uint8Array.of(1, 2, 3))),
    payload: payload({ name: concat(head(3, 1, 4), Uint8Array.of(0x62)) }),
  },
  {
    form: 'float',
    why: 'v: 1.0 as a float where an unsigned integer is specified (half, single, double)',
    item: f16(0x3c00),
    frame: chunkFrame(f32(1)),
    payload: payload({ v: f64(1) }),
  },
  {
    form: 'duplicate-key',
    why: 'a key twice in one map (a last-wins decoder would accept it)',
    item: map([
      ['v', uint(2)],
      ['v', uint(1)],
    ]),
    frame: map([
      ['v', uint(1)],
      ['u', text(ID)],
      ['i', uint(5)],
      ['i', uint(0)],
      ['n', uint(1)],
      ['d', bytes(Uint8Array.of(1))],
    ]),
    payload: payload({ extra: [['v', uint(1)]] }),
  },
  {
    form: 'tag',
    why: 'a leading self-describe tag 55799',
    item: tag(55799, uint(1)),
    frame: tag(55799, chunkFrame()),
    payload: tag(55799, payload()),
  },
  {
    form: 'tag',
    why: 'a tag on a byte string (64: uint8 typed array)',
    item: tag(64, bytes(Uint8Array.of(1))),
    frame: chunkFrame(undefined, tag(64, bytes(Uint8Array.of(1)))),
    payload: payload({ dense: tag(64, bytes(new Uint8Array(8))) }),
  },
  {
    form: 'simple-value',
    why: 'undefined (0xf7), and simple values other than false, true, null',
    item: Uint8Array.of(0xf7),
    frame: chunkFrame(Uint8Array.of(0xf8, 0x20)),
    payload: payload({ extra: [['scales', Uint8Array.of(0xf7)]] }),
  },
  {
    form: 'non-text-key',
    why: 'a map key that is not a text string',
    item: concat(head(5, 1), uint(1), uint(1)),
    frame: concat(head(5, 1), bytes(Uint8Array.of(0x76)), uint(1)),
    payload: payload({ extra: [[uint(0), uint(0)]] }),
  },
  {
    form: 'invalid-utf8',
    why: 'a text string that is not valid UTF-8 (overlong, lone surrogate)',
    item: concat(head(3, 2), Uint8Array.of(0xc0, 0xae)),
    frame: chunkFrame(undefined, undefined),
    payload: payload({ name: concat(head(3, 3), Uint8Array.of(0xed, 0xa0, 0x80)) }),
  },
  {
    form: 'integer-range',
    why: 'an integer beyond 2^53 − 1',
    item: uint(2n ** 53n),
    frame: chunkFrame(uint(2n ** 64n - 1n)),
    payload: payload({ shape: array([uint(2n ** 53n)]) }),
  },
  {
    form: 'reserved-info',
    why: 'additional information 28–30, or a break outside an indefinite item',
    item: Uint8Array.of(0x1c),
    frame: chunkFrame(Uint8Array.of(0xff)),
    payload: payload({ v: Uint8Array.of(0x3d) }),
  },
  {
    form: 'trailing-bytes',
    why: 'bytes after the one data item',
    item: Uint8Array.of(0x01, 0x01),
    frame: concat(chunkFrame(), Uint8Array.of(0xf6)),
    payload: concat(payload(), Uint8Array.of(0)),
  },
  {
    form: 'truncated',
    why: 'an item cut short, or a length or count past the end',
    item: Uint8Array.of(0x19, 0x01),
    frame: chunkFrame().subarray(0, 20),
    payload: concat(head(4, 0xffffffff), uint(0)),
  },
  {
    form: 'too-deep',
    why: `arrays and maps nested deeper than ${MAX_CBOR_DEPTH}`,
    item: concat(...Array.from({ length: MAX_CBOR_DEPTH + 1 }, () => head(4, 1)), uint(0)),
    frame: chunkFrame(undefined, concat(...Array.from({ length: 100_000 }, () => head(4, 1)), uint(0))),
    payload: payload({ shape: concat(...Array.from({ length: MAX_CBOR_DEPTH }, () => head(4, 1)), uint(2)) }),
  },
];
// The invalid-utf8 frame: the update id with an overlong byte.
refused.find((r) => r.form === 'invalid-utf8')!.frame = map([
  ['v', uint(1)],
  ['u', concat(head(3, 2), Uint8Array.of(0xc1, 0x81))],
  ['i', uint(0)],
  ['n', uint(1)],
  ['d', bytes(Uint8Array.of(1))],
]);

describe('strict CBOR (docs/protocol.md §4.0)', () => {
  it('the well-formed controls of the forged inputs are accepted', () => {
    expect(formOf(chunkFrame())).toBe('accepted');
    expect(decodeFrame(chunkFrame()).kind).toBe('chunk');
    expect(codeOf(() => decodePayload(payload()))).toBe('no error');
  });

  for (const r of refused) {
    it(`refuses ${r.why}: ${r.form}; malformed-frame and malformed-payload`, () => {
      expect(formOf(r.item)).toBe(r.form);
      expect(formOf(r.frame)).toBe(r.form);
      expect(formOf(r.payload)).toBe(r.form);
      expect(codeOf(() => decodeFrame(r.frame))).toBe('malformed-frame');
      expect(codeOf(() => decodePayload(r.payload))).toBe('malformed-payload');
    });
  }

  it('refuses an empty input', () => {
    expect(formOf(new Uint8Array(0))).toBe('empty');
    expect(codeOf(() => decodeRequest(new Uint8Array(0)))).toBe('malformed-frame');
  });

  it('accepts map keys in any order, false/true/null, empty strings and multi-byte UTF-8', () => {
    const reordered = map([
      ['n', uint(1)],
      ['d', bytes(Uint8Array.of(9))],
      ['i', uint(0)],
      ['u', text(ID)],
      ['v', uint(1)],
    ]);
    expect(decodeFrame(reordered)).toMatchObject({ kind: 'chunk', index: 0, count: 1 });
    expect(cborDecode(array([Uint8Array.of(0xf4), Uint8Array.of(0xf5), Uint8Array.of(0xf6), text(''), bytes(new Uint8Array(0)), text('é€😀')]))).toEqual([false, true, null, '', new Uint8Array(0), 'é€😀']);
    expect(
      cborDecode(
        map([
          ['é', uint(1)],
          ['e', uint(2)],
        ]),
      ),
    ).toEqual({ é: 1, e: 2 });
  });

  it('accepts integers in 8-byte heads from 2^32 to 2^53 − 1 as numbers, and negative integers', () => {
    expect(cborDecode(uint(2 ** 32))).toBe(2 ** 32);
    expect(cborDecode(uint(Number.MAX_SAFE_INTEGER))).toBe(Number.MAX_SAFE_INTEGER);
    expect(cborDecode(head(1, Number.MAX_SAFE_INTEGER - 1))).toBe(-Number.MAX_SAFE_INTEGER);
    expect(formOf(head(1, Number.MAX_SAFE_INTEGER))).toBe('integer-range');
    expect(cborDecode(Uint8Array.of(0x20))).toBe(-1);
  });

  it(`accepts nesting ${MAX_CBOR_DEPTH} deep`, () => {
    const deep = concat(...Array.from({ length: MAX_CBOR_DEPTH }, () => head(4, 1)), uint(7));
    let v = cborDecode(deep);
    for (let d = 0; d < MAX_CBOR_DEPTH; d++) v = (v as unknown[])[0];
    expect(v).toBe(7);
  });

  it('our encoder writes only the subset: wide integers as integers, shortest heads at every length boundary', () => {
    for (const len of [0, 23, 24, 255, 256, 65535, 65536]) {
      for (const ch of ['a', 'é', '€', '😀']) {
        const s = ch.repeat(len);
        const value = { s, b: new Uint8Array(len), a: new Array(len % 300).fill(len), n: [2 ** 32 - 1, 2 ** 32, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER, -(2 ** 32) - 1] };
        const enc = cborEncode(value);
        expect(() => checkStrictCbor(enc)).not.toThrow();
        expect(cborDecode(enc)).toEqual(value);
      }
    }
    // 2^40 was a float64 (0xfb) before; now an 8-byte unsigned integer.
    expect(Buffer.from(cborEncode(2 ** 40)).toString('hex')).toBe('1b0000010000000000');
  });
});

describe('a manifest step over 4 GiB (integers from 2^32 on the wire)', () => {
  it('encodes its size as an 8-byte integer and decodes it back', async () => {
    const { decodeManifest, encodeManifest } = await import('../../protocol/manifest.ts');
    const size = 2 ** 33 + 5;
    const chunkSize = 1 << 20;
    const sha = 'ab'.repeat(32);
    const body = {
      model: 'm',
      target: 'cd'.repeat(32),
      steps: [{ updateId: sha.slice(0, 32), from: null, to: 'cd'.repeat(32), size, sha256: sha, chunkSize, chunks: Math.ceil(size / chunkSize), listSha256: 'ef'.repeat(32) }],
      limits: { payloadBytes: size, chunks: Math.ceil(size / chunkSize), chunkBytes: chunkSize },
    };
    const bytes = encodeManifest(body);
    expect(Buffer.from(bytes).includes(Buffer.from('1b0000000200000005', 'hex'))).toBe(true);
    expect(Buffer.from(bytes).includes(0xfb)).toBe(false);
    expect(decodeManifest(bytes).steps[0].size).toBe(size);
  });
});

describe('a signed release outside the subset', () => {
  it('is malformed-release: the release map behind a self-describe tag, with a duplicate key, or with v as a float', async () => {
    const { decodeRelease, releaseParts, signRelease, signingKeyFromSeed } = await import('../../protocol/release.ts');
    const key = signingKeyFromSeed(new Uint8Array(32).fill(1));
    const sha = 'ab'.repeat(32);
    const good = signRelease(
      {
        model: 'm',
        group: 'g',
        seq: 1,
        issued: 1_700_000_000,
        expires: 1_700_086_400,
        target: 'cd'.repeat(32),
        rollback: false,
        previous: null,
        steps: [{ updateId: sha.slice(0, 32), from: 'ef'.repeat(32), to: 'cd'.repeat(32), size: 10, sha256: sha, chunkSize: 4, chunks: 3, listSha256: '01'.repeat(32) }],
      },
      [key],
    );
    expect(codeOf(() => decodeRelease(good))).toBe('no error');
    const p = releaseParts(good);
    const parts = (v: Uint8Array): Array<[string, Uint8Array]> => [
      ['v', v],
      ['manifest', bytes(p.manifest)],
      ['assignment', bytes(p.assignment)],
    ];
    expect(codeOf(() => decodeRelease(map(parts(uint(1)))))).toBe('no error');
    for (const bad of [tag(55799, map(parts(uint(1)))), map([...parts(uint(1)), ['v', uint(1)]]), map(parts(f64(1)))]) {
      expect(codeOf(() => decodeRelease(bad))).toBe('malformed-release');
    }
  });
});
