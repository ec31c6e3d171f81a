import { createHash } from 'node:crypto';
import onnxProto from 'onnx-proto';
import type { onnx as OnnxTypes } from 'onnx-proto';
import { modelDigest } from './digest.ts';
import { type Dtype, dtypeSize } from './dtypes.ts';
import { ProtocolError } from './errors.ts';
import { compareNames, isWellFormedName, shapeSize } from './safetensors.ts';

/**
 * ONNX models (docs/onnx.md, docs/protocol.md §ONNX digest): a ModelProto read and
 * written with onnx-proto (protobufjs code generated from ONNX's onnx.proto). The
 * tensors an update may touch are the main graph's initializers of a numeric type;
 * everything else (nodes, inputs, outputs, opsets, metadata, other initializers)
 * is the "skeleton", hashed whole into the digest so that an update never changes it.
 */

const { onnx } = onnxProto;
export type ModelProto = OnnxTypes.ModelProto;
type TensorProto = OnnxTypes.ITensorProto;

/** ONNX TensorProto.DataType numbers of the element types mapped onto ours. */
const DATA_TYPES: Record<number, Dtype> = {
  1: 'F32',
  2: 'U8',
  3: 'I8',
  4: 'U16',
  5: 'I16',
  6: 'I32',
  7: 'I64',
  9: 'BOOL',
  10: 'F16',
  11: 'F64',
  12: 'U32',
  13: 'U64',
  16: 'BF16',
};

/** Which field of the TensorProto held the data (a rewritten tensor keeps it). */
export type OnnxStorage = 'raw_data' | 'float_data' | 'int32_data' | 'int64_data' | 'double_data' | 'uint64_data';

export interface OnnxTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Little-endian element bytes, whatever field held them. */
  data: Uint8Array;
  storage: OnnxStorage;
}

export interface OnnxModel {
  proto: ModelProto;
  /** The updatable initializers, sorted by the UTF-8 bytes of their names. */
  tensors: OnnxTensor[];
  /** SHA-256 (hex) of the skeleton: the model with those initializers' data removed. */
  graphHash: string;
  /**
   * Fields onnx-proto's schema (ONNX 1.10) does not define, e.g. node metadata_props from a
   * newer exporter: skipped by the reader, so neither hashed nor written back.
   */
  unknownFields: number;
}

/**
 * protobufjs's Reader prototype (the object holding skipType), found once by watching a
 * nested decode, so that readOnnx can count the fields the schema skips.
 */
const readerWithSkip: { skipType(wireType: number): unknown } | undefined = (() => {
  let found: object | undefined;
  const original = onnx.OperatorSetIdProto.decode;
  onnx.OperatorSetIdProto.decode = function (this: unknown, reader: never, length?: number) {
    found = reader as object;
    return original.call(this, reader, length);
  } as typeof original;
  try {
    onnx.ModelProto.decode(onnx.ModelProto.encode({ opsetImport: [{ version: 1 }] }).finish());
  } finally {
    onnx.OperatorSetIdProto.decode = original;
  }
  for (let p = found && Object.getPrototypeOf(found); p; p = Object.getPrototypeOf(p)) {
    if (Object.prototype.hasOwnProperty.call(p, 'skipType')) return p as { skipType(wireType: number): unknown };
  }
  return undefined;
})();

/** Decode, counting the fields the schema does not know (the decode is synchronous: the count is this one's). */
function decodeCounting(bytes: Uint8Array): { proto: ModelProto; unknown: number } {
  let unknown = 0;
  const holder = readerWithSkip;
  const skip = holder?.skipType;
  if (holder && skip) {
    holder.skipType = function (this: unknown, wireType: number) {
      unknown++;
      return skip.call(this, wireType);
    };
  }
  try {
    return { proto: onnx.ModelProto.decode(bytes), unknown };
  } finally {
    if (holder && skip) holder.skipType = skip;
  }
}

function bad(detail: string): ProtocolError {
  return new ProtocolError('malformed-model', `ONNX: ${detail}`);
}

/** A protobuf int64 as a safe integer (protobufjs gives a Long or a number). */
function toSafe(v: number | { low: number; high: number; unsigned?: boolean; toNumber?: () => number }, what: string): number {
  const n = typeof v === 'number' ? v : v.toNumber ? v.toNumber() : v.high * 0x100000000 + (v.low >>> 0);
  if (!Number.isSafeInteger(n)) throw bad(`${what} ${String(v)} is not a safe integer`);
  return n;
}

function isExternal(t: TensorProto): boolean {
  return t.dataLocation === 1 || (t.externalData?.length ?? 0) > 0;
}

function externalRefusal(t: TensorProto, where: string): ProtocolError {
  const loc = t.externalData?.find((e) => e.key === 'location')?.value;
  return bad(
    `${where} ${JSON.stringify(t.name ?? '')} keeps its data in an external file${loc ? ` (location ${JSON.stringify(loc)})` : ''}; ` +
      'fleet handles ONNX models whose data is inside the .onnx file (under 2 GB): save it with onnx.save_model(model, path, save_as_external_data=False)',
  );
}

/** Refuse external data anywhere: initializers, Constant nodes and subgraphs (If/Loop/Scan bodies). */
function checkNoExternal(graph: OnnxTypes.IGraphProto, depth = 0): void {
  if (depth > 32) throw bad('subgraphs nested over 32 deep');
  for (const t of graph.initializer ?? []) if (isExternal(t)) throw externalRefusal(t, 'initializer');
  for (const s of graph.sparseInitializer ?? []) {
    for (const t of [s.values, s.indices]) if (t && isExternal(t)) throw externalRefusal(t, 'sparse initializer');
  }
  for (const node of graph.node ?? []) {
    for (const a of node.attribute ?? []) {
      for (const t of [a.t, ...(a.tensors ?? [])]) if (t && isExternal(t)) throw externalRefusal(t, `node ${JSON.stringify(node.name ?? '')} attribute`);
      for (const g of [a.g, ...(a.graphs ?? [])]) if (g) checkNoExternal(g, depth + 1);
    }
  }
}

function bytesOf(arr: ArrayBufferView): Uint8Array {
  return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
}

/** The element bytes of an initializer, from raw_data or from its typed field (ONNX's TensorProto comments say which). */
function tensorBytes(t: TensorProto, dtype: Dtype, count: number, name: string): { data: Uint8Array; storage: OnnxStorage } {
  const want = count * dtypeSize(dtype);
  if (t.rawData && Object.prototype.hasOwnProperty.call(t, 'rawData')) {
    if (t.rawData.byteLength !== want) throw bad(`initializer ${JSON.stringify(name)}: raw_data has ${t.rawData.byteLength} bytes, shape needs ${want}`);
    return { data: t.rawData, storage: 'raw_data' };
  }
  const typed = (len: number, storage: OnnxStorage): void => {
    if (len !== count) throw bad(`initializer ${JSON.stringify(name)}: ${storage} holds ${len} values, shape needs ${count}`);
  };
  switch (dtype) {
    case 'F32': {
      const v = t.floatData ?? [];
      typed(v.length, 'float_data');
      return { data: bytesOf(Float32Array.from(v)), storage: 'float_data' };
    }
    case 'F64': {
      const v = t.doubleData ?? [];
      typed(v.length, 'double_data');
      return { data: bytesOf(Float64Array.from(v)), storage: 'double_data' };
    }
    case 'I64':
    case 'U32':
    case 'U64': {
      const field = dtype === 'I64' ? 'int64_data' : 'uint64_data';
      const v = (dtype === 'I64' ? t.int64Data : t.uint64Data) ?? [];
      typed(v.length, field);
      if (dtype === 'U32') return { data: bytesOf(Uint32Array.from(v, (x) => toSafe(x, 'value'))), storage: field };
      const out = new BigInt64Array(v.length);
      v.forEach((x, i) => {
        out[i] = typeof x === 'number' ? BigInt(x) : (BigInt(x.high >>> 0) << 32n) | BigInt(x.low >>> 0);
      });
      return { data: bytesOf(out), storage: field };
    }
    default: {
      // int32_data: INT32, INT16, INT8, UINT16, UINT8, BOOL, and FLOAT16/BFLOAT16 as their 16-bit patterns.
      const v = t.int32Data ?? [];
      typed(v.length, 'int32_data');
      const ctor = { I32: Int32Array, I16: Int16Array, I8: Int8Array, U16: Uint16Array, U8: Uint8Array, BOOL: Uint8Array, F16: Uint16Array, BF16: Uint16Array }[dtype as 'I32'];
      return { data: bytesOf(ctor.from(v)), storage: 'int32_data' };
    }
  }
}

const DATA_FIELDS = ['floatData', 'int32Data', 'int64Data', 'doubleData', 'uint64Data'] as const;

/** A copy of an initializer with new element bytes, in the field the original used. */
function withData(t: TensorProto, data: Uint8Array, storage: OnnxStorage): OnnxTypes.TensorProto {
  const copy = Object.assign(new onnx.TensorProto(), t);
  const aligned = new Uint8Array(data); // a copy, aligned for the typed views below
  switch (storage) {
    case 'raw_data':
      copy.rawData = aligned;
      break;
    case 'float_data':
      copy.floatData = Array.from(new Float32Array(aligned.buffer));
      break;
    case 'double_data':
      copy.doubleData = Array.from(new Float64Array(aligned.buffer));
      break;
    case 'int32_data': {
      const dtype = DATA_TYPES[t.dataType ?? 0];
      if (dtype !== 'F16' && dtype !== 'BF16') throw bad(`initializer ${JSON.stringify(t.name)}: cannot rewrite ${dtype} held in int32_data`);
      copy.int32Data = Array.from(new Uint16Array(aligned.buffer));
      break;
    }
    default:
      throw bad(`initializer ${JSON.stringify(t.name)}: cannot rewrite data held in ${storage}`);
  }
  return copy;
}

/** The initializer without its data: what the skeleton holds in its place. */
function withoutData(t: TensorProto): OnnxTypes.TensorProto {
  const copy = Object.assign(new onnx.TensorProto(), t);
  delete (copy as { rawData?: Uint8Array }).rawData;
  for (const f of DATA_FIELDS) (copy as unknown as Record<string, unknown[]>)[f] = [];
  return copy;
}

function withInitializers(proto: ModelProto, initializer: TensorProto[]): ModelProto {
  const graph = Object.assign(new onnx.GraphProto(), proto.graph, { initializer });
  return Object.assign(new onnx.ModelProto(), proto, { graph });
}

/** Encode a model (field-number order, packed repeated fields: deterministic). */
export function encodeOnnx(proto: ModelProto): Uint8Array {
  return onnx.ModelProto.encode(proto).finish();
}

/** The skeleton's hash: the model encoded with the updatable initializers' data fields emptied. */
function skeletonHash(proto: ModelProto, updatable: ReadonlySet<string>): string {
  const inits = (proto.graph?.initializer ?? []).map((t) => (updatable.has(t.name ?? '') ? withoutData(t) : t));
  return createHash('sha256')
    .update(encodeOnnx(withInitializers(proto, inits)))
    .digest('hex');
}

/** Decode and check an ONNX model held in memory. */
export function readOnnx(bytes: Uint8Array): OnnxModel {
  let proto: ModelProto;
  let unknownFields: number;
  try {
    ({ proto, unknown: unknownFields } = decodeCounting(bytes));
  } catch (e) {
    throw bad(`not a protobuf ModelProto: ${(e as Error).message}`);
  }
  if (!proto.graph) throw bad('the model has no graph');
  if (proto.irVersion === undefined || !Object.prototype.hasOwnProperty.call(proto, 'irVersion')) throw bad('the model has no ir_version (is this an ONNX file?)');
  checkNoExternal(proto.graph);
  const tensors: OnnxTensor[] = [];
  const seen = new Set<string>();
  for (const t of proto.graph.initializer ?? []) {
    const name = t.name ?? '';
    if (name === '' || !isWellFormedName(name)) throw bad(`an initializer has the name ${JSON.stringify(name)}`);
    if (seen.has(name)) throw bad(`initializer ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    const dtype = DATA_TYPES[t.dataType ?? 0];
    if (!dtype || t.segment) continue; // strings, complex, 8-bit floats, segments: part of the skeleton, never updated
    const shape = (t.dims ?? []).map((d) => toSafe(d, `initializer ${JSON.stringify(name)} dim`));
    const count = shapeSize(shape, `initializer ${JSON.stringify(name)} shape`);
    tensors.push({ name, dtype, shape, ...tensorBytes(t, dtype, count, name) });
  }
  tensors.sort((a, b) => compareNames(a.name, b.name));
  return { proto, tensors, graphHash: skeletonHash(proto, new Set(tensors.map((t) => t.name))), unknownFields };
}

const DIGEST_DOMAIN = Buffer.from('fleet-onnx-digest-v1\0', 'ascii');

/**
 * The ONNX model digest (docs/protocol.md): SHA-256 of
 * "fleet-onnx-digest-v1\0" ‖ T ‖ G, where T is the model digest of the updatable
 * initializers (32 bytes, the same definition as for safetensors) and G the
 * SHA-256 of the skeleton (32 bytes). Lowercase hex.
 */
export function onnxDigestOf(tensorDigestHex: string, graphHashHex: string): string {
  return createHash('sha256').update(DIGEST_DOMAIN).update(Buffer.from(tensorDigestHex, 'hex')).update(Buffer.from(graphHashHex, 'hex')).digest('hex');
}

export function onnxModelDigest(m: Pick<OnnxModel, 'tensors' | 'graphHash'>): string {
  return onnxDigestOf(modelDigest(m.tensors), m.graphHash);
}

/** The digest of an ONNX file held in memory. */
export function onnxDigest(bytes: Uint8Array): string {
  return onnxModelDigest(readOnnx(bytes));
}

/**
 * The model with some initializers' bytes replaced (same names, dtypes, shapes;
 * each kept in the field it came from). Everything else is unchanged; the result is
 * deterministic (the same input gives the same bytes on every machine).
 */
export function writeOnnx(m: OnnxModel, replaced: ReadonlyMap<string, Uint8Array>): Uint8Array {
  const byName = new Map(m.tensors.map((t) => [t.name, t]));
  for (const name of replaced.keys()) if (!byName.has(name)) throw new ProtocolError('shape-mismatch', `the model has no initializer ${JSON.stringify(name)}`);
  const inits = (m.proto.graph?.initializer ?? []).map((t) => {
    const data = replaced.get(t.name ?? '');
    if (!data) return t;
    const info = byName.get(t.name ?? '')!;
    if (data.byteLength !== info.data.byteLength) throw bad(`initializer ${JSON.stringify(info.name)}: ${data.byteLength} bytes, shape needs ${info.data.byteLength}`);
    return withData(t, data, info.storage);
  });
  return encodeOnnx(withInitializers(m.proto, inits));
}

/** Plain JSON view of the skeleton, for naming differences. */
function skeletonObject(m: OnnxModel): Record<string, unknown> {
  const updatable = new Set(m.tensors.map((t) => t.name));
  const inits = (m.proto.graph?.initializer ?? []).map((t) => (updatable.has(t.name ?? '') ? withoutData(t) : t));
  return onnx.ModelProto.toObject(withInitializers(m.proto, inits), { longs: String, bytes: String, enums: String }) as Record<string, unknown>;
}

function label(v: unknown, key: string | number): string {
  if (typeof key === 'number' && v && typeof v === 'object' && typeof (v as { name?: unknown }).name === 'string' && (v as { name: string }).name) {
    return `[${key}] (${JSON.stringify((v as { name: string }).name)})`;
  }
  return typeof key === 'number' ? `[${key}]` : `.${key}`;
}

function firstDiff(a: unknown, b: unknown, at: string): string | undefined {
  if (a === b) return undefined;
  if (Array.isArray(a) && Array.isArray(b)) {
    for (let i = 0; i < Math.min(a.length, b.length); i++) {
      const d = firstDiff(a[i], b[i], at + label(a[i], i));
      if (d) return d;
    }
    return a.length === b.length ? undefined : `${at}: ${a.length} entries in the base, ${b.length} in the target`;
  }
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
    for (const k of keys) {
      const d = firstDiff((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], at + label(null, k));
      if (d) return d;
    }
    return undefined;
  }
  const show = (x: unknown): string => (x === undefined ? '(absent)' : JSON.stringify(x).slice(0, 80));
  return `${at}: ${show(a)} in the base, ${show(b)} in the target`;
}

/** Where two models differ outside the updatable initializers' data (undefined when they do not). */
export function onnxGraphDifference(base: OnnxModel, target: OnnxModel): string | undefined {
  if (base.graphHash === target.graphHash) return undefined;
  return firstDiff(skeletonObject(base), skeletonObject(target), 'model') ?? 'the encodings differ';
}
