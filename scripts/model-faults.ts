/**
 * Malformed safetensors files for the refusal vectors (docs/protocol.md §7.1): each is
 * the base model with one fault. Every one must be refused with malformed-model.
 */
import { MAX_HEADER_LENGTH, headerByteLength } from '../protocol/safetensors.ts';
import { concat } from './cbor-forge.ts';

export interface ModelFault {
  name: string;
  why: string;
  bytes: Uint8Array;
}

type Entry = { dtype: unknown; shape: unknown; data_offsets: unknown; [k: string]: unknown };
type Header = Record<string, unknown>;

const utf8 = new TextEncoder();

function u64le(n: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
}

/** A file from header text (padded with spaces to a multiple of 8, as our writer does) and data. */
function file(json: string | Uint8Array, data: Uint8Array): Uint8Array {
  const text = typeof json === 'string' ? utf8.encode(json) : json;
  const pad = (8 - ((8 + text.byteLength) % 8)) % 8;
  const header = concat(text, new Uint8Array(pad).fill(0x20));
  return concat(u64le(header.byteLength), header, data);
}

/** What every fault is made from: the base file's parts and a way to edit its header. */
interface Kit {
  base: Uint8Array;
  /** The header's length (the base's first 8 bytes). */
  n: number;
  headerText: string;
  data: Uint8Array;
  /** The header with one change; the data unchanged unless given. */
  edit: (change: (h: Header) => void, d?: Uint8Array) => Uint8Array;
  entry: (h: Header, name: string) => Entry;
  /** Tensor names in the order of their data. */
  byBegin: string[];
  second: string;
  secondBegin: number;
  last: string;
  /** The text of fc1.bias's entry in the header. */
  biasEntry: string;
}

function kitOf(base: Uint8Array): Kit {
  const n = headerByteLength(base);
  const headerText = new TextDecoder().decode(base.subarray(8, 8 + n)).trimEnd();
  const data = base.subarray(8 + n);
  const parse = (): Header => JSON.parse(headerText) as Header;
  const tensorNames = Object.keys(parse()).filter((k) => k !== '__metadata__');
  const byBegin = tensorNames.slice().sort((a, b) => ((parse()[a] as Entry).data_offsets as number[])[0] - ((parse()[b] as Entry).data_offsets as number[])[0]);
  const edit = (change: (h: Header) => void, d: Uint8Array = data): Uint8Array => {
    const h = parse();
    change(h);
    return file(JSON.stringify(h), d);
  };
  const entry = (h: Header, name: string) => h[name] as Entry;
  const second = byBegin[1];
  const secondBegin = (entry(parse(), second).data_offsets as number[])[0];
  const last = byBegin[byBegin.length - 1];
  const biasEntry = /"fc1\.bias":\{[^}]*\}/.exec(headerText)![0];

  return { base, n, headerText, data, edit, entry, byBegin, second, secondBegin, last, biasEntry };
}

/** The header's length and encoding. */
function framingFaults({ base, n, headerText, data }: Kit): ModelFault[] {
  return [
    { name: 'short', why: 'a file of 4 bytes (shorter than the 8-byte header length)', bytes: base.subarray(0, 4) },
    { name: 'header-over-limit', why: `header length N = ${MAX_HEADER_LENGTH + 8} (over 100 MiB)`, bytes: concat(u64le(MAX_HEADER_LENGTH + 8), utf8.encode('{}      ')) },
    { name: 'header-length-high-bits', why: 'header length N = 2^32 + N: the high 32 bits are not zero', bytes: concat(u64le(2n ** 32n + BigInt(n)), base.subarray(8)) },
    { name: 'header-too-small', why: 'header length N = 1 (no JSON object fits)', bytes: concat(u64le(1), utf8.encode('{')) },
    { name: 'header-past-end', why: 'header length N runs past the end of the file', bytes: concat(u64le(base.byteLength), base.subarray(8)) },
    { name: 'header-not-utf8', why: 'a byte 0xff in the JSON header', bytes: file(concat(utf8.encode(headerText.slice(0, -1)), Uint8Array.of(0xff), utf8.encode('}')), data) },
    { name: 'header-bom', why: 'the JSON header starts with a UTF-8 byte-order mark', bytes: file(concat(Uint8Array.of(0xef, 0xbb, 0xbf), utf8.encode(headerText)), data) },
    { name: 'header-not-json', why: 'the JSON header is cut short', bytes: file(headerText.slice(0, -1), data) },
    { name: 'header-array', why: 'the JSON header is an array, not an object', bytes: file('[]', new Uint8Array(0)) },
  ];
}

/** A tensor entry's fields. */
function entryFaults({ edit, entry }: Kit): ModelFault[] {
  return [
    {
      name: 'entry-not-object',
      why: 'a tensor entry that is a number',
      bytes: edit((h) => {
        h.x = 1;
      }),
    },
    {
      name: 'entry-unknown-field',
      why: 'a tensor entry with a field other than dtype, shape, data_offsets',
      bytes: edit((h) => {
        entry(h, 'fc1.bias').note = 'x';
      }),
    },
    {
      name: 'unknown-dtype',
      why: 'dtype F8_E4M3 (upstream knows it; this protocol does not)',
      bytes: edit((h) => {
        entry(h, 'embed.q').dtype = 'F8_E4M3';
      }),
    },
    {
      name: 'entry-missing-field',
      why: 'the entry of fc1.bias without data_offsets',
      bytes: edit((h) => {
        delete entry(h, 'fc1.bias').data_offsets;
      }),
    },
  ];
}

/** A tensor entry's shape and offsets. */
function shapeFaults({ edit, entry }: Kit): ModelFault[] {
  return [
    {
      name: 'shape-overflow',
      why: 'a shape of 2^54 elements (over 2^53 − 1)',
      bytes: edit((h) => {
        entry(h, 'fc1.bias').shape = [2 ** 26, 2 ** 26, 4];
      }),
    },
    {
      name: 'shape-not-array',
      why: 'shape is a number',
      bytes: edit((h) => {
        entry(h, 'fc1.bias').shape = 8;
      }),
    },
    {
      name: 'dim-negative',
      why: 'a dim of −8',
      bytes: edit((h) => {
        entry(h, 'fc1.bias').shape = [-8];
      }),
    },
    {
      name: 'dim-fraction',
      why: 'a dim of 8.5',
      bytes: edit((h) => {
        entry(h, 'fc1.bias').shape = [8.5];
      }),
    },
    {
      name: 'offsets-not-pair',
      why: 'data_offsets with one number',
      bytes: edit((h) => {
        entry(h, 'fc1.bias').data_offsets = [(entry(h, 'fc1.bias').data_offsets as number[])[0]];
      }),
    },
    {
      name: 'offsets-reversed',
      why: 'data_offsets [end, begin]',
      bytes: edit((h) => {
        entry(h, 'fc1.bias').data_offsets = (entry(h, 'fc1.bias').data_offsets as number[]).slice().reverse();
      }),
    },
    {
      name: 'size-mismatch',
      why: 'fc1.bias says shape [7] for 32 bytes of F32 (end − begin ≠ product(shape) · size)',
      bytes: edit((h) => {
        entry(h, 'fc1.bias').shape = [7];
      }),
    },
  ];
}

/** Where the tensors' bytes lie, and the metadata. */
function layoutFaults({ edit, entry, data, byBegin, second, secondBegin, last }: Kit): ModelFault[] {
  return [
    { name: 'data-past-end', why: 'the file ends 4 bytes before the last tensor does', bytes: edit(() => undefined, data.subarray(0, data.byteLength - 4)) },
    {
      name: 'overlap',
      why: 'a second tensor over the bytes of embed.q',
      bytes: edit((h) => {
        h['embed.alias'] = { ...entry(h, 'embed.q') };
      }),
    },
    {
      name: 'gap',
      why: `4 unused bytes before ${second} (upstream refuses this too)`,
      bytes: edit(
        (h) => {
          for (const t of byBegin.slice(1)) entry(h, t).data_offsets = (entry(h, t).data_offsets as number[]).map((o) => o + 4);
        },
        concat(data.subarray(0, secondBegin), new Uint8Array(4), data.subarray(secondBegin)),
      ),
    },
    {
      name: 'gap-at-start',
      why: 'the first tensor begins at 4, not 0',
      bytes: edit(
        (h) => {
          for (const t of byBegin) entry(h, t).data_offsets = (entry(h, t).data_offsets as number[]).map((o) => o + 4);
        },
        concat(new Uint8Array(4), data),
      ),
    },
    { name: 'trailing-bytes', why: `4 bytes after the last tensor (${last}) ends`, bytes: edit(() => undefined, concat(data, new Uint8Array(4))) },
    {
      name: 'metadata-not-object',
      why: '__metadata__ is a string',
      bytes: edit((h) => {
        h.__metadata__ = 'pt';
      }),
    },
    {
      name: 'metadata-not-string',
      why: 'a __metadata__ value that is a number',
      bytes: edit((h) => {
        h.__metadata__ = { format: 'pt', version: 2 };
      }),
    },
  ];
}

/** What JSON.parse would hide: lone surrogates, duplicates, number spellings. */
function textFaults({ headerText, data, biasEntry }: Kit): ModelFault[] {
  return [
    { name: 'name-lone-surrogate', why: 'a tensor name with a lone surrogate (\\ud800 in the JSON)', bytes: file(headerText.replace('"fc1.bias"', '"fc1.bias\\ud800"'), data) },
    { name: 'duplicate-name', why: 'fc1.bias twice in the header, both entries the same (JSON.parse would keep the last and accept)', bytes: file(headerText.replace(biasEntry, `${biasEntry},${biasEntry}`), data) },
    {
      name: 'duplicate-name-escaped',
      why: 'fc1.bias and fc1.bia\\u0073: the same name once unescaped',
      bytes: file(headerText.replace(biasEntry, `${biasEntry},${biasEntry.replace('"fc1.bias"', '"fc1.bia\\u0073"')}`), data),
    },
    { name: 'duplicate-field', why: 'dtype twice in the entry of fc1.bias', bytes: file(headerText.replace(biasEntry, biasEntry.replace('{"dtype":"F32",', '{"dtype":"F32","dtype":"F32",')), data) },
    { name: 'dim-as-float', why: 'shape [8.0]: JSON.parse reads 8, but a dim is written as an integer', bytes: file(headerText.replace(biasEntry, biasEntry.replace('"shape":[8]', '"shape":[8.0]')), data) },
    { name: 'offset-with-exponent', why: 'data_offsets written with an exponent (e.g. 4.72e2)', bytes: file(headerText.replace('[472,488]', '[4.72e2,488]'), data) },
    { name: 'metadata-lone-surrogate', why: 'a __metadata__ value with a lone surrogate (\\udc00 in the JSON)', bytes: file(headerText.replace('"format":"pt"', '"format":"p\\udc00t"'), data) },
  ];
}

export function modelFaults(base: Uint8Array): ModelFault[] {
  const k = kitOf(base);
  return [...framingFaults(k), ...entryFaults(k), ...shapeFaults(k), ...layoutFaults(k), ...textFaults(k)];
}
