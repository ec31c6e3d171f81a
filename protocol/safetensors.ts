import { ProtocolError } from './errors.ts';
import { type Dtype, dtypeSize, isDtype } from './dtypes.ts';

/**
 * The safetensors format: u64le header length N, N bytes of UTF-8 JSON
 * `{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}}`,
 * then the data buffer (offsets are relative to its start).
 */

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Byte offsets relative to the start of the data buffer. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Sorted by the UTF-8 bytes of the name. */
  tensors: TensorInfo[];
  metadata: Record<string, string>;
  /** N, the JSON header's length in bytes. */
  headerLength: number;
  /** 8 + N: where the data buffer starts in the file. */
  dataStart: number;
}

export interface TensorInput {
  name: string;
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
}

export interface SafetensorsFile {
  header: SafetensorsHeader;
  /** A view of the raw bytes of the named tensor; throws 'shape-mismatch' if there is none. */
  tensor(name: string): Uint8Array;
  info(name: string): TensorInfo | undefined;
  /** Sorted by name, as header.tensors. */
  tensors: Array<TensorInfo & { data: Uint8Array }>;
}

export const MAX_HEADER_LENGTH = 100 * 1024 * 1024;
const METADATA_KEY = '__metadata__';

const utf8 = new TextEncoder();

function bad(detail: string): ProtocolError {
  return new ProtocolError('malformed-model', detail);
}

/** True if the string has no lone surrogates (so its UTF-8 encoding is one-to-one). */
export function isWellFormedName(s: string): boolean {
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?:^|[^\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

/** Order of the UTF-8 bytes of two strings (as Buffer.compare). */
export function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function sortByName<T extends { name: string }>(items: T[]): T[] {
  const keyed = items.map((item) => ({ item, key: Buffer.from(item.name, 'utf8') }));
  keyed.sort((x, y) => Buffer.compare(x.key, y.key));
  return keyed.map((k) => k.item);
}

/** Product of dims as a safe integer; throws if any dim is not a non-negative safe integer or the product overflows. */
export function shapeSize(shape: readonly unknown[], what = 'shape'): number {
  let n = 1;
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) throw bad(`${what}: dim ${String(d)} is not a non-negative integer`);
    n *= d;
    if (!Number.isSafeInteger(n)) throw bad(`${what}: too many elements`);
  }
  return n;
}

/** N from the first 8 bytes: the length of the JSON header. */
export function headerByteLength(prefix8: Uint8Array): number {
  if (prefix8.byteLength < 8) throw bad(`file shorter than 8 bytes`);
  const dv = new DataView(prefix8.buffer, prefix8.byteOffset, 8);
  const lo = dv.getUint32(0, true);
  const hi = dv.getUint32(4, true);
  if (hi !== 0 || lo > MAX_HEADER_LENGTH) throw bad(`header length ${hi * 2 ** 32 + lo} is over ${MAX_HEADER_LENGTH}`);
  if (lo < 2) throw bad(`header length ${lo} is too small`);
  return lo;
}

/**
 * What JSON.parse lets through that §7.1 refuses, in header text already known to parse:
 * a key twice in one object (compared after unescaping; JSON.parse keeps the last), or a
 * number written with a fraction or exponent (8.0, 8e0: JSON.parse reads both as 8).
 * Returns the fault, or undefined.
 */
export function jsonHeaderFault(text: string): string | undefined {
  const stack: Array<Set<string> | null> = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const top = stack[stack.length - 1];
      if (expectKey && top) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (top.has(key)) return `key ${JSON.stringify(key)} appears twice in one object`;
        top.add(key);
      }
      expectKey = false;
      i = j;
    } else if (ch === '{' || ch === '[') {
      stack.push(ch === '{' ? new Set() : null);
      expectKey = ch === '{';
    } else if (ch === '}' || ch === ']') {
      stack.pop();
      expectKey = false;
    } else if (ch === ',') {
      expectKey = stack[stack.length - 1] instanceof Set;
    } else if (ch === '-' || (ch >= '0' && ch <= '9')) {
      let j = i;
      while (j < text.length && /[-+0-9.eE]/.test(text[j])) j++;
      if (/[.eE]/.test(text.slice(i, j))) return `number ${text.slice(i, j)} is not written as an integer`;
      i = j - 1;
    }
  }
  return undefined;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseTensorEntry(name: string, v: unknown, dataLength: number | undefined): TensorInfo {
  if (!isPlainObject(v)) throw bad(`tensor ${JSON.stringify(name)}: entry is not an object`);
  for (const k of Object.keys(v)) {
    if (k !== 'dtype' && k !== 'shape' && k !== 'data_offsets') throw bad(`tensor ${JSON.stringify(name)}: unknown field ${JSON.stringify(k)}`);
  }
  const { dtype, shape, data_offsets: offsets } = v;
  if (!isDtype(dtype)) throw bad(`tensor ${JSON.stringify(name)}: unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape)) throw bad(`tensor ${JSON.stringify(name)}: shape is not an array`);
  const count = shapeSize(shape, `tensor ${JSON.stringify(name)} shape`);
  if (!Array.isArray(offsets) || offsets.length !== 2) throw bad(`tensor ${JSON.stringify(name)}: data_offsets is not [begin, end]`);
  const [begin, end] = offsets as unknown[];
  if (typeof begin !== 'number' || typeof end !== 'number' || !Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < begin) {
    throw bad(`tensor ${JSON.stringify(name)}: bad data_offsets`);
  }
  const bytes = count * dtypeSize(dtype);
  if (!Number.isSafeInteger(bytes) || end - begin !== bytes) {
    throw bad(`tensor ${JSON.stringify(name)}: ${end - begin} bytes for shape [${shape.join(',')}] of ${dtype}`);
  }
  if (dataLength !== undefined && end > dataLength) throw bad(`tensor ${JSON.stringify(name)}: data beyond the end of the file`);
  return { name, dtype, shape: (shape as number[]).slice(), begin, end };
}

/**
 * Parse and validate the header from a buffer holding at least the first 8+N
 * bytes of the file. With fileSize, also checks that the tensors exactly fill
 * the data buffer. Tensors must not overlap and must leave no gaps.
 */
export function parseSafetensorsHeader(prefix: Uint8Array, fileSize?: number): SafetensorsHeader {
  const headerLength = headerByteLength(prefix);
  const dataStart = 8 + headerLength;
  if (prefix.byteLength < dataStart) throw bad(`truncated header: need ${dataStart} bytes, have ${prefix.byteLength}`);
  let dataLength: number | undefined;
  if (fileSize !== undefined) {
    if (!Number.isSafeInteger(fileSize) || fileSize < dataStart) throw bad(`file of ${fileSize} bytes is shorter than its header`);
    dataLength = fileSize - dataStart;
  }
  let text: string;
  let json: unknown;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(prefix.subarray(8, dataStart));
    json = JSON.parse(text);
  } catch (e) {
    throw bad(`header is not UTF-8 JSON: ${(e as Error).message}`);
  }
  if (!isPlainObject(json)) throw bad('header is not a JSON object');
  const fault = jsonHeaderFault(text);
  if (fault !== undefined) throw bad(`header: ${fault}`);
  const tensors: TensorInfo[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(json)) {
    if (!isWellFormedName(name)) throw bad(`tensor name ${JSON.stringify(name)} is not well-formed Unicode`);
    if (name === METADATA_KEY) {
      if (!isPlainObject(v)) throw bad('__metadata__ is not an object');
      metadata = {};
      for (const [k, val] of Object.entries(v)) {
        if (typeof val !== 'string') throw bad(`metadata ${JSON.stringify(k)} is not a string`);
        if (!isWellFormedName(k) || !isWellFormedName(val)) throw bad(`metadata ${JSON.stringify(k)} is not well-formed Unicode`);
        Object.defineProperty(metadata, k, { value: val, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    tensors.push(parseTensorEntry(name, v, dataLength));
  }
  const byOffset = tensors.slice().sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (const t of byOffset) {
    if (t.begin < expected) throw bad(`tensor ${JSON.stringify(t.name)} overlaps another`);
    if (t.begin > expected) throw bad(`gap in the data buffer before tensor ${JSON.stringify(t.name)}`);
    expected = t.end;
  }
  if (dataLength !== undefined && expected !== dataLength) {
    throw bad(`tensors use ${expected} bytes but the data buffer has ${dataLength}`);
  }
  return { tensors: sortByName(tensors), metadata, headerLength, dataStart };
}

/** Read a whole safetensors file held in memory. Tensor data are views into `bytes`. */
export function readSafetensors(bytes: Uint8Array): SafetensorsFile {
  const header = parseSafetensorsHeader(bytes, bytes.byteLength);
  const tensors = header.tensors.map((t) => ({
    ...t,
    shape: t.shape.slice(),
    data: bytes.subarray(header.dataStart + t.begin, header.dataStart + t.end),
  }));
  const byName = new Map(tensors.map((t) => [t.name, t]));
  return {
    header,
    tensors,
    info(name: string) {
      const t = byName.get(name);
      return t ? { name: t.name, dtype: t.dtype, shape: t.shape.slice(), begin: t.begin, end: t.end } : undefined;
    },
    tensor(name: string) {
      const t = byName.get(name);
      if (!t) throw new ProtocolError('shape-mismatch', `no tensor named ${JSON.stringify(name)}`);
      return t.data;
    },
  };
}

/**
 * The deterministic header for these tensors: laid out contiguously in the
 * UTF-8 byte order of their names, JSON without whitespace (keys in that same
 * order, `__metadata__` first if non-empty with its keys sorted), padded with
 * spaces so that 8+N is a multiple of 8. The returned layout is in file order,
 * so a writer can stream the tensors' bytes after the header one by one.
 */
export function encodeSafetensorsHeader(tensors: readonly TensorSpec[], metadata: Record<string, string> = {}): { header: Uint8Array; layout: TensorInfo[] } {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (typeof t.name !== 'string' || !isWellFormedName(t.name)) throw bad(`tensor name ${JSON.stringify(t.name)} is not a well-formed string`);
    if (t.name === METADATA_KEY) throw bad(`a tensor cannot be named ${METADATA_KEY}`);
    if (seen.has(t.name)) throw bad(`duplicate tensor name ${JSON.stringify(t.name)}`);
    seen.add(t.name);
    if (!isDtype(t.dtype)) throw bad(`tensor ${JSON.stringify(t.name)}: unknown dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape)) throw bad(`tensor ${JSON.stringify(t.name)}: shape is not an array`);
  }
  const layout: TensorInfo[] = [];
  let offset = 0;
  for (const t of sortByName(tensors.slice())) {
    const bytes = shapeSize(t.shape, `tensor ${JSON.stringify(t.name)} shape`) * dtypeSize(t.dtype);
    layout.push({ name: t.name, dtype: t.dtype, shape: t.shape.slice(), begin: offset, end: offset + bytes });
    offset += bytes;
    if (!Number.isSafeInteger(offset)) throw bad('model too large');
  }
  const parts: string[] = [];
  const metaKeys = Object.keys(metadata);
  if (metaKeys.length > 0) {
    const entries = sortByName(metaKeys.map((name) => ({ name }))).map(({ name }) => {
      const v = metadata[name];
      if (typeof v !== 'string') throw bad(`metadata ${JSON.stringify(name)} is not a string`);
      if (!isWellFormedName(name) || !isWellFormedName(v)) throw bad(`metadata ${JSON.stringify(name)} is not well-formed Unicode`);
      return `${JSON.stringify(name)}:${JSON.stringify(v)}`;
    });
    parts.push(`${JSON.stringify(METADATA_KEY)}:{${entries.join(',')}}`);
  }
  for (const t of layout) {
    parts.push(`${JSON.stringify(t.name)}:{"dtype":${JSON.stringify(t.dtype)},"shape":[${t.shape.join(',')}],"data_offsets":[${t.begin},${t.end}]}`);
  }
  const json = utf8.encode(`{${parts.join(',')}}`);
  const pad = (8 - ((8 + json.byteLength) % 8)) % 8;
  const n = json.byteLength + pad;
  if (n > MAX_HEADER_LENGTH) throw bad(`header of ${n} bytes is over ${MAX_HEADER_LENGTH}`);
  const header = new Uint8Array(8 + n);
  const dv = new DataView(header.buffer);
  dv.setUint32(0, n, true);
  dv.setUint32(4, 0, true);
  header.set(json, 8);
  header.fill(0x20, 8 + json.byteLength);
  return { header, layout };
}

/** The whole file, deterministic: the same tensors and metadata in any order give the same bytes. */
export function writeSafetensors(tensors: readonly TensorInput[], metadata: Record<string, string> = {}): Uint8Array {
  const { header, layout } = encodeSafetensorsHeader(tensors, metadata);
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const total = header.byteLength + (layout.length > 0 ? layout[layout.length - 1].end : 0);
  const out = new Uint8Array(total);
  out.set(header, 0);
  for (const l of layout) {
    const t = byName.get(l.name)!;
    if (!(t.data instanceof Uint8Array) || t.data.byteLength !== l.end - l.begin) {
      throw bad(`tensor ${JSON.stringify(l.name)}: ${t.data?.byteLength} bytes for shape [${l.shape.join(',')}] of ${l.dtype}`);
    }
    out.set(t.data, header.byteLength + l.begin);
  }
  return out;
}
