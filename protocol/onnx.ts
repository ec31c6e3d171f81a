import { createHash } from 'node:crypto';
import onnxProto from 'onnx-proto';
import type { onnx as OnnxTypes } from 'onnx-proto';
import { modelDigest } from './digest.ts';
import type { Dtype } from './dtypes.ts';
import { ProtocolError } from './errors.ts';
import { runScan, scanOnnx, type OnnxLayout, type OnnxStorage } from './onnx-wire.ts';
import { decodeTensorData, encodeTensorData, skeletonPlan, spliceBytes, splicePlan, tensorSlots, type TensorSlot } from './onnx-splice.ts';
import { compareNames } from './safetensors.ts';

/**
 * ONNX models (docs/onnx.md, docs/protocol.md §7.6 ONNX digest). The file is scanned on the
 * protobuf wire format (protocol/onnx-wire.ts) for the main graph's initializers and where
 * their data is; the tensors an update may touch are those of a numeric type. Everything else
 * (nodes, inputs, outputs, opsets, metadata, other initializers, and fields onnx-proto's schema
 * does not know) is the "skeleton": the file's bytes with those tensors' data records removed
 * (protocol/onnx-splice.ts), hashed whole into the digest so that an update never changes it.
 * The skeleton is decoded with onnx-proto (protobufjs code generated from ONNX's onnx.proto)
 * for the checks and to name differences; writing splices the new data into the input's bytes.
 */

const { onnx } = onnxProto;
export type ModelProto = OnnxTypes.ModelProto;
type TensorProto = OnnxTypes.ITensorProto;
export type { OnnxStorage };

export interface OnnxTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Little-endian element bytes, whatever field held them. */
  data: Uint8Array;
  storage: OnnxStorage;
}

/** What a model is besides its updatable tensors' values. */
export interface OnnxSkeleton {
  /** The skeleton decoded (onnx-proto): the model without the updatable tensors' data. */
  skeletonProto: ModelProto;
  /** The skeleton's bytes (docs/protocol.md §7.6). */
  skeleton: Uint8Array;
  /** SHA-256 (hex) of the skeleton. */
  graphHash: string;
}

export interface OnnxModel extends OnnxSkeleton {
  /** The whole model decoded by onnx-proto (fields its schema does not know are not in it). */
  proto: ModelProto;
  /** The updatable initializers, sorted by the UTF-8 bytes of their names. */
  tensors: OnnxTensor[];
}

function bad(detail: string): ProtocolError {
  return new ProtocolError('malformed-model', `ONNX: ${detail}`);
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

/** The skeleton's checks and hash: a ModelProto with a graph and an ir_version, no external data anywhere. */
export function readSkeleton(skeleton: Uint8Array): OnnxSkeleton {
  let proto: ModelProto;
  try {
    proto = onnx.ModelProto.decode(skeleton);
  } catch (e) {
    throw bad(`not a protobuf ModelProto: ${(e as Error).message}`);
  }
  if (!proto.graph) throw bad('the model has no graph');
  if (proto.irVersion === undefined || !Object.prototype.hasOwnProperty.call(proto, 'irVersion')) throw bad('the model has no ir_version (is this an ONNX file?)');
  checkNoExternal(proto.graph);
  return { skeletonProto: proto, skeleton, graphHash: createHash('sha256').update(skeleton).digest('hex') };
}

/** Where the model's initializers are, from its bytes. */
export function scanOnnxBytes(bytes: Uint8Array): { layout: OnnxLayout; slots: TensorSlot[] } {
  const layout = runScan(scanOnnx(bytes.byteLength), bytes);
  return { layout, slots: tensorSlots(layout) };
}

function slotsData(bytes: Uint8Array, slot: TensorSlot): Uint8Array {
  return decodeTensorData(
    slot,
    slot.spans.map((s) => bytes.subarray(s.start, s.end)),
  );
}

/** The skeleton and the updatable tensors of a model held in memory (no decode of the whole model). */
function readParts(bytes: Uint8Array): Omit<OnnxModel, 'proto'> {
  const { layout, slots } = scanOnnxBytes(bytes);
  const skeleton = readSkeleton(spliceBytes(skeletonPlan(layout, slots), bytes, () => new Uint8Array(0)));
  const tensors = slots.map((s) => ({ name: s.name, dtype: s.dtype, shape: s.shape, storage: s.storage, data: slotsData(bytes, s) }));
  tensors.sort((a, b) => compareNames(a.name, b.name));
  return { ...skeleton, tensors };
}

/** Decode and check an ONNX model held in memory. */
export function readOnnx(bytes: Uint8Array): OnnxModel {
  const parts = readParts(bytes);
  try {
    return { ...parts, proto: onnx.ModelProto.decode(bytes) };
  } catch (e) {
    throw bad(`not a protobuf ModelProto: ${(e as Error).message}`);
  }
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
  return onnxModelDigest(readParts(bytes));
}

/** Encode a model with onnx-proto (field-number order, packed repeated fields): the models fleet builds. */
export function encodeOnnx(proto: ModelProto): Uint8Array {
  return onnx.ModelProto.encode(proto).finish();
}

/**
 * The model with some initializers' bytes replaced (same names, dtypes, shapes; each kept in
 * the field it came from), spliced into the input's bytes: every other byte is the input's.
 * Deterministic (the same input gives the same bytes on every machine).
 */
export function writeOnnx(bytes: Uint8Array, replaced: ReadonlyMap<string, Uint8Array>): Uint8Array {
  const { layout, slots } = scanOnnxBytes(bytes);
  const byName = new Map(slots.map((s) => [s.name, s]));
  const records = new Map<TensorSlot, Uint8Array>();
  for (const [name, data] of replaced) {
    const slot = byName.get(name);
    if (!slot) throw new ProtocolError('shape-mismatch', `the model has no initializer ${JSON.stringify(name)}`);
    records.set(slot, encodeTensorData(slot, data));
  }
  const plan = splicePlan(layout, new Map([...records].map(([s, r]) => [s, r.byteLength])));
  return spliceBytes(plan, bytes, (slot) => records.get(slot)!);
}

/** Plain JSON view of the skeleton, for naming differences. */
function skeletonObject(m: OnnxSkeleton): Record<string, unknown> {
  return onnx.ModelProto.toObject(m.skeletonProto, { longs: String, bytes: String, enums: String }) as Record<string, unknown>;
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
export function onnxGraphDifference(base: OnnxSkeleton, target: OnnxSkeleton): string | undefined {
  if (base.graphHash === target.graphHash) return undefined;
  const named = firstDiff(skeletonObject(base), skeletonObject(target), 'model');
  if (named) return named;
  let at = 0;
  while (at < base.skeleton.byteLength && base.skeleton[at] === target.skeleton[at]) at++;
  return `byte ${at} of the skeletons (docs/protocol.md §7.6): the same fields as onnx-proto's schema reads them, so a field that schema does not define (from a newer ONNX) or the same fields encoded otherwise`;
}
