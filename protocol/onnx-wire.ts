import { ProtocolError } from './errors.ts';

/**
 * The protobuf wire format of an ONNX ModelProto, as far as fleet needs it (docs/protocol.md
 * §7.6): where the main graph's initializers are, and where each one's data fields are, found
 * without reading the data. The scan is a generator that asks for the bytes it needs
 * (ReadRequest) and is driven over a buffer (runScan) or over a file (util/onnx-file.ts), so
 * that a model on disk is never read whole. Everything the scan does not look into (nodes,
 * attributes, fields a newer ONNX added) is only skipped over, so it is kept byte for byte by
 * the splice writer (protocol/onnx-splice.ts).
 */

export interface ReadRequest {
  offset: number;
  length: number;
}

/** A scan step: yields what it needs to read, gets those bytes (at least `length`) back. */
export type Scan<T> = Generator<ReadRequest, T, Uint8Array>;

/** [start, end) in the file. */
export interface Span {
  start: number;
  end: number;
}

/** One field of a message: its tag at `start`, its length prefix (LEN fields) at `len`, its value from `value` to `end`. */
export interface WireField {
  field: number;
  wire: number;
  start: number;
  len: number;
  value: number;
  end: number;
  /** The value of a VARINT field (exact up to 2^53). */
  varint: number;
}

/** TensorProto field numbers of the data fields (onnx.proto). */
export const DATA_FIELD = { float_data: 4, int32_data: 5, int64_data: 7, raw_data: 9, double_data: 10, uint64_data: 11 } as const;
export type OnnxStorage = keyof typeof DATA_FIELD;
const DATA_FIELD_NUMBERS: ReadonlySet<number> = new Set(Object.values(DATA_FIELD));

/** An initializer of the main graph, as found in the file. */
export interface WireTensor {
  /** The initializer field (GraphProto field 5) holding the TensorProto. */
  record: WireField;
  name: string;
  dataType: number;
  dims: number[];
  segment: boolean;
  /** data_location EXTERNAL or external_data entries: refused by the skeleton's check (protocol/onnx.ts). */
  external: boolean;
  /** Every data field's records, runs of adjacent records of one field coalesced. */
  data: Map<number, Span[]>;
}

export interface OnnxLayout {
  size: number;
  hasIrVersion: boolean;
  /** ModelProto field 7. */
  graph: WireField | undefined;
  /** The main graph's initializers, in file order. */
  tensors: WireTensor[];
}

export function malformed(detail: string): ProtocolError {
  return new ProtocolError('malformed-model', `ONNX: ${detail}`);
}

const WINDOW = 64 * 1024;
const MAX_NAME = 1 << 20;
const MAX_DEPTH = 64;

/** A window of the file's bytes, refilled by asking the driver. */
class Cursor {
  private win: Uint8Array = new Uint8Array(0);
  private at = 0;
  constructor(readonly size: number) {}

  /** The bytes [pos, pos + n) (n ≤ what is left of the file). */
  *bytes(pos: number, n: number): Scan<Uint8Array> {
    if (pos + n > this.size) throw malformed(`the file ends at byte ${this.size}, inside a field that runs to ${pos + n}`);
    if (pos < this.at || pos + n > this.at + this.win.byteLength) {
      const length = Math.min(Math.max(n, WINDOW), this.size - pos);
      const got = yield { offset: pos, length };
      if (got.byteLength < n) throw malformed(`short read at byte ${pos}`);
      this.win = got;
      this.at = pos;
    }
    return this.win.subarray(pos - this.at, pos - this.at + n);
  }

  /** A varint at pos, within [pos, end): its value and where it ends. */
  *varint(pos: number, end: number): Scan<{ value: number; next: number }> {
    const b = yield* this.bytes(pos, Math.min(10, end - pos));
    let value = 0;
    for (let i = 0; i < b.byteLength; i++) {
      value += (b[i] & 0x7f) * 2 ** (7 * i);
      if (b[i] < 0x80) return { value, next: pos + i + 1 };
    }
    throw malformed(`a varint at byte ${pos} does not end`);
  }
}

/** The field starting at pos (within [pos, end)); skips its value. */
function* nextField(c: Cursor, pos: number, end: number, depth = 0): Scan<WireField> {
  const tag = yield* c.varint(pos, end);
  const field = Math.floor(tag.value / 8);
  const wire = tag.value % 8;
  if (field === 0 || field >= 2 ** 29) throw malformed(`field number ${field} at byte ${pos}`);
  const f: WireField = { field, wire, start: pos, len: tag.next, value: tag.next, end: tag.next, varint: 0 };
  switch (wire) {
    case 0: {
      const v = yield* c.varint(tag.next, end);
      f.varint = v.value;
      f.end = v.next;
      break;
    }
    case 1:
      f.end = tag.next + 8;
      break;
    case 5:
      f.end = tag.next + 4;
      break;
    case 2: {
      const n = yield* c.varint(tag.next, end);
      f.value = n.next;
      f.end = n.next + n.value;
      break;
    }
    case 3: {
      // A group (deprecated, never in onnx.proto): skipped to its END_GROUP.
      if (depth > MAX_DEPTH) throw malformed(`groups nested over ${MAX_DEPTH} deep at byte ${pos}`);
      let p = tag.next;
      for (;;) {
        if (p >= end) throw malformed(`a group at byte ${pos} does not end`);
        const inner = yield* nextField(c, p, end, depth + 1);
        p = inner.end;
        if (inner.wire === 4) {
          if (inner.field !== field) throw malformed(`a group at byte ${pos} ends with field ${inner.field}`);
          break;
        }
      }
      f.end = p;
      break;
    }
    case 4:
      // END_GROUP: only its own tag (the caller checks it closes a group).
      if (depth === 0) throw malformed(`an END_GROUP without a group at byte ${pos}`);
      break;
    default:
      throw malformed(`wire type ${wire} at byte ${pos}`);
  }
  if (f.end > end) throw malformed(`field ${field} at byte ${pos} runs past its message (to ${f.end}, the message ends at ${end})`);
  return f;
}

/** Each field of the message in [start, end). */
function* fieldsOf(c: Cursor, start: number, end: number, each: (f: WireField) => Scan<void> | void): Scan<void> {
  for (let pos = start; pos < end;) {
    const f = yield* nextField(c, pos, end);
    const step = each(f);
    if (step) yield* step;
    pos = f.end;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function* scanTensor(c: Cursor, record: WireField): Scan<WireTensor> {
  const t: WireTensor = { record, name: '', dataType: 0, dims: [], segment: false, external: false, data: new Map() };
  yield* fieldsOf(c, record.value, record.end, function* (f) {
    if (f.field === 1 && f.wire === 0) t.dims.push(f.varint);
    else if (f.field === 1 && f.wire === 2) {
      for (let p = f.value; p < f.end;) {
        const v = yield* c.varint(p, f.end);
        t.dims.push(v.value);
        p = v.next;
      }
    } else if (f.field === 2 && f.wire === 0) t.dataType = f.varint;
    else if (f.field === 3) t.segment = true;
    else if (f.field === 13 || (f.field === 14 && f.wire === 0 && f.varint === 1)) t.external = true;
    else if (f.field === 8 && f.wire === 2) {
      if (f.end - f.value > MAX_NAME) throw malformed(`an initializer name of ${f.end - f.value} bytes at byte ${f.start}`);
      try {
        t.name = utf8.decode(yield* c.bytes(f.value, f.end - f.value));
      } catch (e) {
        if (e instanceof ProtocolError) throw e;
        throw malformed(`an initializer name at byte ${f.start} is not UTF-8`);
      }
    } else if (DATA_FIELD_NUMBERS.has(f.field)) {
      const spans = t.data.get(f.field) ?? [];
      const last = spans[spans.length - 1];
      if (last && last.end === f.start) last.end = f.end;
      else spans.push({ start: f.start, end: f.end });
      t.data.set(f.field, spans);
    }
  });
  return t;
}

/** Scan a ModelProto of `size` bytes: its main graph's initializers and their data fields. */
export function* scanOnnx(size: number): Scan<OnnxLayout> {
  const c = new Cursor(size);
  const layout: OnnxLayout = { size, hasIrVersion: false, graph: undefined, tensors: [] };
  yield* fieldsOf(c, 0, size, (f) => {
    if (f.field === 1 && f.wire === 0) layout.hasIrVersion = true;
    if (f.field === 7) {
      if (f.wire !== 2) throw malformed(`the graph field at byte ${f.start} has wire type ${f.wire}`);
      if (layout.graph) throw malformed(`the model has two graph fields (bytes ${layout.graph.start} and ${f.start})`);
      layout.graph = f;
    }
  });
  const graph = layout.graph;
  if (graph) {
    yield* fieldsOf(c, graph.value, graph.end, function* (f) {
      if (f.field === 5 && f.wire === 2) layout.tensors.push(yield* scanTensor(c, f));
    });
  }
  return layout;
}

/** Run a scan over bytes held in memory. */
export function runScan<T>(scan: Scan<T>, bytes: Uint8Array): T {
  let step = scan.next();
  while (!step.done) step = scan.next(bytes.subarray(step.value.offset, step.value.offset + step.value.length));
  return step.value;
}

/** Run a scan over positional reads (a file). */
export async function runScanAsync<T>(scan: Scan<T>, read: (offset: number, length: number) => Promise<Uint8Array>): Promise<T> {
  let step = scan.next();
  while (!step.done) step = scan.next(await read(step.value.offset, step.value.length));
  return step.value;
}

export function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

export function encodeVarint(n: number, out: number[] = []): number[] {
  while (n >= 0x80) {
    out.push((n % 128) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** A varint's value as unsigned 64 bits, at pos in b (for int64 data). */
export function readVarint64(b: Uint8Array, pos: number, end: number): { value: bigint; next: number } {
  let value = 0n;
  for (let i = 0; i < 10 && pos + i < end; i++) {
    value |= BigInt(b[pos + i] & 0x7f) << BigInt(7 * i);
    if (b[pos + i] < 0x80) return { value: value & 0xffffffffffffffffn, next: pos + i + 1 };
  }
  throw malformed(`a varint in tensor data does not end`);
}
