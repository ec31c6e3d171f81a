import { describe, it, expect } from 'vitest';
import { encodeSafetensorsHeader, jsonHeaderFault, headerByteLength, parseSafetensorsHeader, readSafetensors, writeSafetensors, type TensorInput } from '../../protocol/safetensors.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { mulberry32 } from '../../util/random.ts';
import { expectCode } from '../support/expect-code.ts';

/** A file assembled by hand from the format description. */
function handMade(json: string, data: number[]): Uint8Array {
  const jsonBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + jsonBytes.length + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, jsonBytes.length, true);
  dv.setUint32(4, 0, true);
  out.set(jsonBytes, 8);
  out.set(data, 8 + jsonBytes.length);
  return out;
}

const sample = (): TensorInput[] => [
  { name: 'w', dtype: 'F32', shape: [2, 3], data: new Uint8Array(new Float32Array([1, 2, 3, -4, 0.5, 1e-3]).buffer) },
  { name: 'h', dtype: 'F16', shape: [2], data: Uint8Array.from([0x00, 0x3c, 0x00, 0xc0]) },
  { name: 'b', dtype: 'BF16', shape: [1, 1], data: Uint8Array.from([0x80, 0x3f]) },
  { name: 'q', dtype: 'I8', shape: [3], data: Uint8Array.from([0x7f, 0x80, 0x00]) },
  { name: 'é', dtype: 'F32', shape: [], data: Uint8Array.from([0, 0, 0x80, 0xbf]) },
  { name: 'empty', dtype: 'F32', shape: [0, 5], data: new Uint8Array(0) },
];

describe('safetensors', () => {
  it('reads a file built byte by byte from the spec', () => {
    // Two tensors, data deliberately not in name order, metadata last, with spaces.
    const json = '{"weight": {"dtype":"F32","shape":[2,2],"data_offsets":[4,20]}, "bias":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},' + ' "__metadata__": {"format": "pt", "note": "hand made"}}  ';
    const data = [
      0x00,
      0x3c,
      0x00,
      0xbc, // bias: f16 1, -1
      0x00,
      0x00,
      0x80,
      0x3f, // 1
      0x00,
      0x00,
      0x00,
      0x40, // 2
      0x00,
      0x00,
      0x40,
      0x40, // 3
      0x00,
      0x00,
      0x80,
      0xc0, // -4
    ];
    const file = handMade(json, data);
    expect(headerByteLength(file.subarray(0, 8))).toBe(new TextEncoder().encode(json).length);
    const st = readSafetensors(file);
    expect(st.header.metadata).toEqual({ format: 'pt', note: 'hand made' });
    expect(st.header.tensors.map((t) => t.name)).toEqual(['bias', 'weight']);
    expect(st.header.dataStart).toBe(8 + st.header.headerLength);
    const w = st.info('weight')!;
    expect(w).toEqual({ name: 'weight', dtype: 'F32', shape: [2, 2], begin: 4, end: 20 });
    const wd = st.tensor('weight');
    const dv = new DataView(wd.buffer, wd.byteOffset, wd.byteLength);
    expect([0, 1, 2, 3].map((i) => dv.getFloat32(i * 4, true))).toEqual([1, 2, 3, -4]);
    expect(Array.from(st.tensor('bias'))).toEqual([0x00, 0x3c, 0x00, 0xbc]);
    expect(st.info('bias')!.dtype).toBe('F16');
    expectCode(() => st.tensor('nope'), 'shape-mismatch');
    // The header alone suffices.
    const h = parseSafetensorsHeader(file.subarray(0, st.header.dataStart), file.length);
    expect(h).toEqual(st.header);
  });

  it('write then read is the identity for F32, F16, BF16, I8', () => {
    const input = sample();
    const bytes = writeSafetensors(input, { a: '1', z: 'two' });
    const st = readSafetensors(bytes);
    expect(st.header.metadata).toEqual({ a: '1', z: 'two' });
    expect(st.tensors.length).toBe(input.length);
    for (const t of input) {
      const info = st.info(t.name)!;
      expect(info.dtype).toBe(t.dtype);
      expect(info.shape).toEqual(t.shape);
      expect(Array.from(st.tensor(t.name))).toEqual(Array.from(t.data));
    }
    expect((8 + st.header.headerLength) % 8).toBe(0);
  });

  it('writes a deterministic layout and header', () => {
    const a = writeSafetensors(sample(), { z: '1', a: '2' });
    const b = writeSafetensors(sample().reverse(), { a: '2', z: '1' });
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    const json = Buffer.from(a.subarray(8, 8 + headerByteLength(a))).toString('utf8');
    expect(json.trimEnd()).toBe(
      '{"__metadata__":{"a":"2","z":"1"},"b":{"dtype":"BF16","shape":[1,1],"data_offsets":[0,2]},' +
        '"empty":{"dtype":"F32","shape":[0,5],"data_offsets":[2,2]},"h":{"dtype":"F16","shape":[2],"data_offsets":[2,6]},' +
        '"q":{"dtype":"I8","shape":[3],"data_offsets":[6,9]},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[9,33]},' +
        '"é":{"dtype":"F32","shape":[],"data_offsets":[33,37]}}',
    );
    expect(/^ *$/.test(json.slice(json.trimEnd().length))).toBe(true);
    // No metadata → no __metadata__ key.
    const c = writeSafetensors(sample());
    expect(Buffer.from(c).includes(Buffer.from('__metadata__'))).toBe(false);
  });

  it('encodeSafetensorsHeader gives the layout in file order', () => {
    const { header, layout } = encodeSafetensorsHeader([
      { name: 'b', dtype: 'F32', shape: [2] },
      { name: 'a', dtype: 'F16', shape: [3] },
    ]);
    expect(layout).toEqual([
      { name: 'a', dtype: 'F16', shape: [3], begin: 0, end: 6 },
      { name: 'b', dtype: 'F32', shape: [2], begin: 6, end: 14 },
    ]);
    expect(header.length % 8).toBe(0);
    const file = new Uint8Array(header.length + 14);
    file.set(header);
    expect(readSafetensors(file).header.tensors.map((t) => [t.name, t.begin])).toEqual([
      ['a', 0],
      ['b', 6],
    ]);
    // Names in UTF-8 byte order, not UTF-16 order: U+FF01 (EF BC 81) < U+1F600 (F0 9F 98 80).
    const { layout: l2 } = encodeSafetensorsHeader([
      { name: '\u{1F600}', dtype: 'U8', shape: [1] },
      { name: '\uFF01', dtype: 'U8', shape: [1] },
    ]);
    expect(l2.map((t) => t.name)).toEqual(['\uFF01', '\u{1F600}']);
    expectCode(
      () =>
        encodeSafetensorsHeader([
          { name: 'a', dtype: 'F32', shape: [1] },
          { name: 'a', dtype: 'F32', shape: [1] },
        ]),
      'malformed-model',
    );
    expectCode(() => writeSafetensors([{ name: 'a', dtype: 'F32', shape: [2], data: new Uint8Array(4) }]), 'malformed-model');
  });

  describe('refuses malformed files', () => {
    const ok = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    const cases: Array<[string, () => Uint8Array]> = [
      ['empty', () => new Uint8Array(0)],
      ['shorter than 8 bytes', () => Uint8Array.from([4, 0, 0])],
      ['truncated header', () => handMade(ok, [0, 0, 0, 0]).subarray(0, 20)],
      ['truncated data', () => handMade(ok, [0, 0, 0])],
      ['trailing data', () => handMade(ok, [0, 0, 0, 0, 0])],
      ['bad JSON', () => handMade('{"a":{"dtype":"F32",', [0, 0, 0, 0])],
      ['not an object', () => handMade('[1,2,3]', [])],
      [
        'not UTF-8',
        () => {
          const f = handMade('{"a\u00e9":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}', []);
          f[12] = 0xff;
          return f;
        },
      ],
      ['overlapping offsets', () => handMade('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}', new Array(8).fill(0))],
      ['one tensor inside another', () => handMade('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', new Array(8).fill(0))],
      ['same offsets', () => handMade('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', new Array(4).fill(0))],
      ['gap', () => handMade('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', new Array(8).fill(0))],
      ['size mismatch', () => handMade('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', [0, 0, 0, 0])],
      ['unknown dtype', () => handMade('{"a":{"dtype":"F13","shape":[1],"data_offsets":[0,4]}}', [0, 0, 0, 0])],
      ['negative dim', () => handMade('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', [0, 0, 0, 0])],
      ['fractional dim', () => handMade('{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}', [0])],
      ['reversed offsets', () => handMade('{"a":{"dtype":"U8","shape":[0],"data_offsets":[1,0]}}', [0])],
      ['missing offsets', () => handMade('{"a":{"dtype":"U8","shape":[1]}}', [0])],
      ['extra field', () => handMade('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}', [0])],
      ['metadata not strings', () => handMade('{"__metadata__":{"a":1}}', [])],
      [
        'header length too large',
        () => {
          const f = handMade(ok, [0, 0, 0, 0]);
          new DataView(f.buffer).setUint32(0, 1000, true);
          return f;
        },
      ],
      [
        'header length over 2^32',
        () => {
          const f = handMade(ok, [0, 0, 0, 0]);
          new DataView(f.buffer).setUint32(4, 1, true);
          return f;
        },
      ],
      [
        'header length over the limit',
        () => {
          const f = handMade(ok, [0, 0, 0, 0]);
          new DataView(f.buffer).setUint32(0, 200 * 1024 * 1024, true);
          return f;
        },
      ],
      ['huge shape', () => handMade('{"a":{"dtype":"F32","shape":[9007199254740991,2],"data_offsets":[0,4]}}', [0, 0, 0, 0])],
    ];
    for (const [name, make] of cases) {
      it(name, () => expectCode(() => readSafetensors(make()), 'malformed-model'));
    }
    it('a valid file passes (control)', () => {
      expect(readSafetensors(handMade(ok, [0, 0, 0x80, 0x3f])).tensors[0].data.length).toBe(4);
    });
  });

  it('random mutations never throw anything but ProtocolError', () => {
    const rand = mulberry32(99);
    const valid = writeSafetensors(sample(), { k: 'v' });
    let accepted = 0;
    let refused = 0;
    for (let i = 0; i < 3000; i++) {
      let f = valid.slice();
      const kind = i % 4;
      if (kind === 0) {
        for (let n = 1 + Math.floor(rand() * 4); n > 0; n--) f[Math.floor(rand() * f.length)] = Math.floor(rand() * 256);
      } else if (kind === 1) {
        // Mutate inside the JSON header, where it matters most.
        const n = headerByteLength(valid);
        f[8 + Math.floor(rand() * n)] = ' {}[]":,0123456789-.eE'.charCodeAt(Math.floor(rand() * 22));
      } else if (kind === 2) {
        f = f.subarray(0, Math.floor(rand() * f.length));
      } else {
        f[Math.floor(rand() * 8)] = Math.floor(rand() * 256);
      }
      try {
        readSafetensors(f);
        accepted++;
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        expect(e.code).toBe('malformed-model');
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(1000);
    expect(accepted).toBeGreaterThan(0);
  });
});

describe('jsonHeaderFault (a header key twice in one object, or a number like 8.0, is refused, not read as JSON.parse would)', () => {
  it('finds a key twice in any one object, after unescaping, and nothing across objects or in arrays and values', () => {
    expect(jsonHeaderFault('{"a":1,"a":2}')).toBe('key "a" appears twice in one object');
    expect(jsonHeaderFault('{"a":{"b":1,"c":[{"b":2}],"b":3}}')).toBe('key "b" appears twice in one object');
    expect(jsonHeaderFault('{"ab":1,"a\\u0062":2}')).toBe('key "ab" appears twice in one object');
    expect(jsonHeaderFault('{"a":"a","b":["a","a"],"c":{"a":1},"d":{"a":1}}')).toBeUndefined();
    expect(jsonHeaderFault('{"q\\"":1,"q\\\\":2, "x" : {"q\\"":3}}')).toBeUndefined();
    expect(jsonHeaderFault('{"q\\"":1,"x":[1,{"y":2}],"q\\"":2}')).toBe('key "q\\"" appears twice in one object');
    expect(jsonHeaderFault('{"s":[8,0,-1,12345],"m":"8.0 1e3"}')).toBeUndefined();
    expect(jsonHeaderFault('{"s":[8.0]}')).toBe('number 8.0 is not written as an integer');
    expect(jsonHeaderFault('{"s":[8E0]}')).toBe('number 8E0 is not written as an integer');
  });
  it('makes the reader refuse such a header with malformed-model', () => {
    const t = { name: 'a', dtype: 'F32' as const, shape: [1], data: new Uint8Array(4) };
    const good = writeSafetensors([t]);
    const n = good[0];
    const text = new TextDecoder()
      .decode(good.subarray(8, 8 + n))
      .trimEnd()
      .replace('{"dtype"', '{"dtype":"F32","dtype"');
    const json = new TextEncoder().encode(text.padEnd(Math.ceil((text.length + 8) / 8) * 8 - 8, ' '));
    const bad = new Uint8Array(8 + json.length + 4);
    new DataView(bad.buffer).setUint32(0, json.length, true);
    bad.set(json, 8);
    let code = 'no error';
    try {
      readSafetensors(bad);
    } catch (e) {
      code = (e as ProtocolError).code;
    }
    expect(code).toBe('malformed-model');
    expect(readSafetensors(good).tensors.map((x) => x.name)).toEqual(['a']);
  });
});
