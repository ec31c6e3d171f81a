import { type Dtype, dtypeSize } from './dtypes.ts';
import { DATA_FIELD, encodeVarint, malformed, readVarint64, varintSize, type OnnxLayout, type OnnxStorage, type Span, type WireField, type WireTensor } from './onnx-wire.ts';
import { isWellFormedName, shapeSize } from './safetensors.ts';

/**
 * The updatable initializers of an ONNX model and the splice writer (docs/protocol.md §7.6):
 * a file is written as the input's bytes with only some initializers' data fields replaced,
 * and the length prefixes of the records holding them (the TensorProto in
 * GraphProto.initializer, the GraphProto in ModelProto.graph) rewritten when a length changes.
 * Every other byte (nodes, metadata, fields a newer ONNX added, even non-canonical encodings)
 * is copied as it is. The skeleton the digest hashes is the same splice with those data
 * fields removed.
 */

/** ONNX TensorProto.DataType numbers of the element types mapped onto ours. */
export const DATA_TYPES: Record<number, Dtype> = { 1: 'F32', 2: 'U8', 3: 'I8', 4: 'U16', 5: 'I16', 6: 'I32', 7: 'I64', 9: 'BOOL', 10: 'F16', 11: 'F64', 12: 'U32', 13: 'U64', 16: 'BF16' };

/** The element views of the types int32_data holds (FLOAT16/BFLOAT16 as their 16-bit patterns). */
const INT32_VIEWS: Partial<Record<Dtype, Int32ArrayConstructor | Int16ArrayConstructor | Int8ArrayConstructor | Uint16ArrayConstructor | Uint8ArrayConstructor>> = {
  I32: Int32Array,
  I16: Int16Array,
  I8: Int8Array,
  U16: Uint16Array,
  U8: Uint8Array,
  BOOL: Uint8Array,
  F16: Uint16Array,
  BF16: Uint16Array,
};

/** An initializer an update may read: a numeric type, not segmented. */
export interface TensorSlot {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Element bytes (little-endian), count × dtype size. */
  bytes: number;
  storage: OnnxStorage;
  /** The records of the storage field, in file order. */
  spans: Span[];
  tensor: WireTensor;
}

/** The field a dtype's values go in when not in raw_data (ONNX's TensorProto comments). */
function typedField(dtype: Dtype): OnnxStorage {
  if (dtype === 'F32') return 'float_data';
  if (dtype === 'F64') return 'double_data';
  if (dtype === 'I64') return 'int64_data';
  if (dtype === 'U32' || dtype === 'U64') return 'uint64_data';
  return 'int32_data';
}

/** The updatable initializers, in file order; refuses bad names, repeated names and bad dims. */
export function tensorSlots(layout: OnnxLayout): TensorSlot[] {
  const seen = new Set<string>();
  const slots: TensorSlot[] = [];
  for (const t of layout.tensors) {
    const name = t.name;
    if (name === '' || !isWellFormedName(name)) throw malformed(`an initializer has the name ${JSON.stringify(name)}`);
    if (seen.has(name)) throw malformed(`initializer ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    const dtype = DATA_TYPES[t.dataType];
    if (!dtype || t.segment) continue; // strings, complex, 8-bit floats, segments: part of the skeleton, never updated
    for (const d of t.dims) if (!Number.isSafeInteger(d) || d >= 2 ** 53) throw malformed(`initializer ${JSON.stringify(name)} dim ${d} is not a safe integer`);
    const count = shapeSize(t.dims, `initializer ${JSON.stringify(name)} shape`);
    const storage = t.data.has(DATA_FIELD.raw_data) ? 'raw_data' : typedField(dtype);
    const spans = t.data.get(DATA_FIELD[storage]) ?? [];
    const bytes = count * dtypeSize(dtype);
    // Bound what the shape claims by what the file holds before anything is allocated for it (a varint is at least a byte).
    const held = spans.reduce((a, s) => a + s.end - s.start, 0);
    if (!t.external && held < (storage === 'raw_data' || storage === 'float_data' || storage === 'double_data' ? bytes : count)) {
      throw malformed(`initializer ${JSON.stringify(name)}: its shape [${t.dims.join(',')}] needs ${bytes} bytes, ${storage} holds ${held}`);
    }
    slots.push({ name, dtype, shape: t.dims.slice(), bytes, storage, spans, tensor: t });
  }
  return slots;
}

function varintAt(b: Uint8Array, pos: number, end: number): { value: number; next: number } {
  let value = 0;
  for (let i = 0; i < 10 && pos + i < end; i++) {
    value += (b[pos + i] & 0x7f) * 2 ** (7 * i);
    if (b[pos + i] < 0x80) return { value, next: pos + i + 1 };
  }
  throw malformed('a varint in tensor data does not end');
}

/** The low 32 bits (unsigned) of the varint at pos. */
function low32(b: Uint8Array, pos: number, end: number): { value: number; next: number } {
  let value = 0;
  for (let i = 0; i < 10 && pos + i < end; i++) {
    const x = b[pos + i];
    if (i < 5) value |= (x & 0x7f) << (7 * i);
    if (x < 0x80) return { value: value >>> 0, next: pos + i + 1 };
  }
  throw malformed('a varint in tensor data does not end');
}

/** Each value of a storage field's records: packed (LEN) runs and single values alike. */
function eachRecord(chunks: readonly Uint8Array[], each: (b: Uint8Array, wire: number, start: number, end: number) => void): void {
  for (const b of chunks) {
    for (let p = 0; p < b.byteLength;) {
      const tag = varintAt(b, p, b.byteLength);
      const wire = tag.value % 8;
      let start = tag.next;
      let end: number;
      if (wire === 2) {
        const n = varintAt(b, tag.next, b.byteLength);
        start = n.next;
        end = n.next + n.value;
      } else end = wire === 5 ? start + 4 : wire === 1 ? start + 8 : varintAt(b, start, b.byteLength).next;
      if (end > b.byteLength) throw malformed('tensor data runs past its record');
      each(b, wire, start, end);
      p = end;
    }
  }
}

/** The element bytes (little-endian) of an initializer, from the bytes of its storage field's spans. */
export function decodeTensorData(slot: TensorSlot, chunks: readonly Uint8Array[]): Uint8Array {
  const what = `initializer ${JSON.stringify(slot.name)}`;
  const size = dtypeSize(slot.dtype);
  const count = slot.bytes / size;
  if (slot.storage === 'raw_data' || slot.storage === 'float_data' || slot.storage === 'double_data') {
    const parts: Uint8Array[] = [];
    let total = 0;
    const single = slot.storage === 'raw_data' ? -1 : slot.storage === 'float_data' ? 5 : 1;
    eachRecord(chunks, (b, wire, start, end) => {
      if (wire !== 2 && wire !== single) throw malformed(`${what}: ${slot.storage} has wire type ${wire}`);
      parts.push(new Uint8Array(b.buffer, b.byteOffset + start, end - start)); // a plain view, even of a Buffer
      total += end - start;
    });
    if (slot.storage === 'raw_data') {
      if (parts.length !== 1) throw malformed(`${what}: raw_data appears ${parts.length} times`);
      if (total !== slot.bytes) throw malformed(`${what}: raw_data has ${total} bytes, shape needs ${slot.bytes}`);
      return parts[0];
    }
    const width = slot.storage === 'float_data' ? 4 : 8;
    if (total % width !== 0 || total / width !== count) throw malformed(`${what}: ${slot.storage} holds ${total / width} values, shape needs ${count}`);
    if (parts.length === 1) return parts[0];
    const joined = new Uint8Array(total);
    parts.reduce((at, part) => (joined.set(part, at), at + part.byteLength), 0);
    return joined;
  }
  // Varints: int32_data (INT32/16/8, UINT16/8, BOOL, the 16-bit patterns of FLOAT16/BFLOAT16), int64_data, uint64_data.
  const ctor = slot.storage === 'int32_data' ? INT32_VIEWS[slot.dtype] : slot.dtype === 'U32' ? Uint32Array : undefined;
  if (slot.storage === 'int32_data' && !ctor) throw malformed(`${what}: ${slot.dtype} in int32_data`);
  const small = ctor ? new ctor(count) : undefined;
  const wide = ctor ? undefined : new BigInt64Array(count);
  let n = 0;
  const room = (): void => {
    if (n >= count) throw malformed(`${what}: ${slot.storage} holds more values than the shape's ${count}`);
  };
  eachRecord(chunks, (b, wire, start, end) => {
    if (wire !== 0 && wire !== 2) throw malformed(`${what}: ${slot.storage} has wire type ${wire}`);
    for (let p = start; p < end;) {
      room();
      if (small) {
        // int32 and uint32 keep the low 32 bits of the varint; the typed array wraps them to the element type.
        const v = low32(b, p, end);
        small[n++] = v.value;
        p = v.next;
      } else {
        const v = readVarint64(b, p, end);
        wide![n++] = BigInt.asIntN(64, v.value);
        p = v.next;
      }
    }
  });
  if (n !== count) throw malformed(`${what}: ${slot.storage} holds ${n} values, shape needs ${count}`);
  const out = small ?? wide!;
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

function recordHead(field: number, length: number): Uint8Array {
  return Uint8Array.from(encodeVarint(length, encodeVarint(field * 8 + 2)));
}

/** The length of the record encodeTensorData writes, when it is fixed by the shape (raw_data, float_data, double_data). */
export function fixedRecordLength(slot: TensorSlot): number | undefined {
  if (slot.storage !== 'raw_data' && slot.storage !== 'float_data' && slot.storage !== 'double_data') return undefined;
  return varintSize(DATA_FIELD[slot.storage] * 8 + 2) + varintSize(slot.bytes) + slot.bytes;
}

/**
 * The storage field's record holding new element bytes, in the field the initializer used (one
 * packed record), as its head and its payload (the element bytes themselves where the field holds them as they are).
 */
export function tensorRecord(slot: TensorSlot, data: Uint8Array): [Uint8Array, Uint8Array] {
  if (data.byteLength !== slot.bytes) throw malformed(`initializer ${JSON.stringify(slot.name)}: ${data.byteLength} bytes, shape needs ${slot.bytes}`);
  if (fixedRecordLength(slot) !== undefined) return [recordHead(DATA_FIELD[slot.storage], data.byteLength), data];
  // Varint fields: each value as protobuf encodes an int32 (negative: ten bytes), int64 or uint64.
  const copy = data.slice().buffer;
  if (slot.storage === 'int32_data' || slot.dtype === 'U32') {
    const view = slot.storage === 'int32_data' ? INT32_VIEWS[slot.dtype] : Uint32Array;
    if (!view) throw malformed(`initializer ${JSON.stringify(slot.name)}: ${slot.dtype} in int32_data`);
    const values = new view(copy);
    let size = 0;
    for (const v of values) size += v >= 0 ? varintSize(v) : 10;
    const body = new Uint8Array(size);
    let at = 0;
    for (const v of values) {
      if (v >= 0) {
        let x = v;
        for (; x >= 0x80; x = Math.floor(x / 128)) body[at++] = (x % 128) | 0x80;
        body[at++] = x;
      } else {
        const bytes: number[] = [];
        encodeVarint64(BigInt.asUintN(64, BigInt(v)), bytes);
        body.set(bytes, at);
        at += bytes.length;
      }
    }
    return [recordHead(DATA_FIELD[slot.storage], size), body];
  }
  const out: number[] = [];
  for (const v of new BigUint64Array(copy)) encodeVarint64(v, out);
  return [recordHead(DATA_FIELD[slot.storage], out.length), Uint8Array.from(out)];
}

function encodeVarint64(v: bigint, out: number[]): void {
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
}

/** tensorRecord as one array. */
export function encodeTensorData(slot: TensorSlot, data: Uint8Array): Uint8Array {
  const [head, body] = tensorRecord(slot, data);
  const out = new Uint8Array(head.byteLength + body.byteLength);
  out.set(head, 0);
  out.set(body, head.byteLength);
  return out;
}

/** A piece of the written file: bytes of the input, new bytes, or an initializer's new data record. */
export type Piece = { kind: 'copy'; start: number; end: number } | { kind: 'bytes'; data: Uint8Array } | { kind: 'slot'; slot: TensorSlot; length: number };

export interface SplicePlan {
  pieces: Piece[];
  /** Each piece's offset in the output. */
  offsets: number[];
  size: number;
}

interface Edit {
  start: number;
  end: number;
  piece?: Piece;
}

function lengthEdit(f: WireField, delta: number): { edit: Edit; grew: number } {
  const oldLength = f.end - f.value;
  const prefix = Uint8Array.from(encodeVarint(oldLength + delta));
  return { edit: { start: f.len, end: f.value, piece: { kind: 'bytes', data: prefix } }, grew: delta + prefix.byteLength - (f.value - f.len) };
}

/**
 * The output as pieces: the input with each replaced slot's storage records replaced by one
 * record of the given length (0: removed), and the enclosing length prefixes rewritten where a
 * length changed (written canonically; an unchanged prefix is copied as it was).
 */
export function splicePlan(layout: OnnxLayout, replace: ReadonlyMap<TensorSlot, number>): SplicePlan {
  const edits: Edit[] = [];
  let graphDelta = 0;
  for (const [slot, length] of replace) {
    const old = slot.spans.reduce((a, s) => a + s.end - s.start, 0);
    if (slot.spans.length === 0 && length > 0) edits.push({ start: slot.tensor.record.end, end: slot.tensor.record.end, piece: { kind: 'slot', slot, length } });
    slot.spans.forEach((s, i) => edits.push({ start: s.start, end: s.end, piece: i === 0 && length > 0 ? { kind: 'slot', slot, length } : undefined }));
    if (length !== old) {
      const { edit, grew } = lengthEdit(slot.tensor.record, length - old);
      edits.push(edit);
      graphDelta += grew;
    }
  }
  if (graphDelta !== 0 && layout.graph) edits.push(lengthEdit(layout.graph, graphDelta).edit);
  edits.sort((a, b) => a.start - b.start || a.end - b.end);
  const pieces: Piece[] = [];
  let at = 0;
  for (const e of edits) {
    if (e.start > at) pieces.push({ kind: 'copy', start: at, end: e.start });
    if (e.piece) pieces.push(e.piece);
    at = Math.max(at, e.end);
  }
  if (at < layout.size) pieces.push({ kind: 'copy', start: at, end: layout.size });
  const offsets: number[] = [];
  let size = 0;
  for (const p of pieces) {
    offsets.push(size);
    size += p.kind === 'copy' ? p.end - p.start : p.kind === 'bytes' ? p.data.byteLength : p.length;
  }
  return { pieces, offsets, size };
}

/** The skeleton: the model with every updatable initializer's storage records removed. */
export function skeletonPlan(layout: OnnxLayout, slots: readonly TensorSlot[]): SplicePlan {
  return splicePlan(layout, new Map(slots.map((s) => [s, 0])));
}

/** Run a plan over bytes held in memory. */
export function spliceBytes(plan: SplicePlan, input: Uint8Array, slotBytes: (slot: TensorSlot) => Uint8Array): Uint8Array {
  const out = new Uint8Array(plan.size);
  plan.pieces.forEach((p, i) => {
    const data = p.kind === 'copy' ? input.subarray(p.start, p.end) : p.kind === 'bytes' ? p.data : slotBytes(p.slot);
    if (p.kind === 'slot' && data.byteLength !== p.length) throw malformed(`initializer ${JSON.stringify(p.slot.name)}: ${data.byteLength} bytes written, ${p.length} planned`);
    out.set(data, plan.offsets[i]);
  });
  return out;
}
