import { ModelDigest } from '../protocol/digest.ts';
import { nodeFs, writeFully, type FileHandlePort, type FsPort } from '../platform/fs-port.ts';
import { FactorScratch, type Payload } from '../protocol/lowrank.ts';
import { applyTensor } from '../protocol/delta-apply.ts';
import { memoryDeltas, type DeltaReader, type DeltaSource } from './payload-file.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { onnxDigestOf, readSkeleton, type OnnxSkeleton } from '../protocol/onnx.ts';
import { runScanAsync, scanOnnx, type OnnxLayout } from '../protocol/onnx-wire.ts';
import { decodeTensorData, encodeTensorData, fixedRecordLength, skeletonPlan, splicePlan, tensorRecord, tensorSlots, type SplicePlan, type TensorSlot } from '../protocol/onnx-splice.ts';
import { compareNames, type TensorInfo } from '../protocol/safetensors.ts';
import { readExactly } from './model-file.ts';
import type { ModelFile } from './model-format.ts';

/**
 * ONNX models on disk, never read whole: the file is scanned on the wire format for its
 * initializers (protocol/onnx-wire.ts), the skeleton (everything but the updatable tensors'
 * data, usually a small part of the file) is read to check and hash it, and each tensor's data
 * is read when it is needed, one at a time. The updatable initializers are offered as tensors
 * like a safetensors file's, at offsets of a virtual concatenation in name order (only their
 * sizes, end − begin, mean anything).
 */

const COPY_CHUNK = 1 << 20;

interface OpenOnnx {
  handle: FileHandlePort;
  layout: OnnxLayout;
  /** In name order. */
  slots: TensorSlot[];
  skeleton: OnnxSkeleton;
}

/** Run a splice plan: the copy and new-bytes pieces (not the slots) written to `write` at their offsets. */
async function copyPieces(plan: SplicePlan, from: FileHandlePort, write: (data: Uint8Array, at: number) => Promise<void>): Promise<void> {
  const buf = new Uint8Array(COPY_CHUNK);
  for (let i = 0; i < plan.pieces.length; i++) {
    const p = plan.pieces[i];
    if (p.kind === 'bytes') await write(p.data, plan.offsets[i]);
    if (p.kind !== 'copy') continue;
    for (let at = p.start; at < p.end; at += COPY_CHUNK) {
      const n = Math.min(COPY_CHUNK, p.end - at);
      await write(await readExactly(from, n, at, buf), plan.offsets[i] + at - p.start);
    }
  }
}

async function openOnnx(file: string, fsys: FsPort): Promise<OpenOnnx> {
  const handle = await fsys.open(file, 'r');
  try {
    const { size } = await handle.stat();
    const layout = await runScanAsync(scanOnnx(size), (offset, length) => readExactly(handle, length, offset));
    const slots = tensorSlots(layout);
    const plan = skeletonPlan(layout, slots);
    const bytes = new Uint8Array(plan.size);
    await copyPieces(plan, handle, async (data, at) => bytes.set(data, at));
    const skeleton = readSkeleton(bytes);
    slots.sort((a, b) => compareNames(a.name, b.name));
    return { handle, layout, slots, skeleton };
  } catch (e) {
    await handle.close();
    throw e;
  }
}

/** A model file's skeleton (docs/protocol.md §7.6): its graph without the weights, read without reading the weights. */
export async function readOnnxSkeleton(file: string, fsys: FsPort = nodeFs): Promise<OnnxSkeleton> {
  const m = await openOnnx(file, fsys);
  await m.handle.close();
  return m.skeleton;
}

/** One initializer's element bytes, read from the file (into `buf` when it is one record and fits). */
async function readSlot(h: FileHandlePort, slot: TensorSlot, buf?: Uint8Array): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for (const s of slot.spans) chunks.push(await readExactly(h, s.end - s.start, s.start, slot.spans.length === 1 ? buf : undefined));
  return decodeTensorData(slot, chunks);
}

function layout(slots: readonly TensorSlot[]): TensorInfo[] {
  let at = 0;
  return slots.map((t) => {
    const info = { name: t.name, dtype: t.dtype, shape: t.shape.slice(), begin: at, end: at + t.bytes };
    at = info.end;
    return info;
  });
}

export async function openOnnxFile(file: string, fsys: FsPort = nodeFs): Promise<ModelFile> {
  const m = await openOnnx(file, fsys);
  const infos = layout(m.slots);
  const byName = new Map(m.slots.map((s) => [s.name, s]));
  return {
    path: file,
    format: 'onnx',
    fileSize: m.layout.size,
    tensors: infos,
    onnx: m.skeleton,
    info: (name) => infos.find((t) => t.name === name),
    digestOf: (tensorDigest) => onnxDigestOf(tensorDigest, m.skeleton.graphHash),
    async read(t) {
      const slot = byName.get(t.name);
      if (!slot) throw new ProtocolError('shape-mismatch', `the model has no initializer ${JSON.stringify(t.name)}`);
      return readSlot(m.handle, slot);
    },
    get dataBytes() {
      return infos.reduce((a, t) => a + (t.end - t.begin), 0);
    },
    close: () => m.handle.close(),
  };
}

const NO_DELTAS: DeltaSource = {
  names: new Set(),
  open: async () => ({ delta: (name) => Promise.reject(new ProtocolError('shape-mismatch', `no delta for ${name}`)), close: async () => undefined }),
};

/** The digest of an ONNX file, streamed (an apply of nothing that writes nothing). */
export function digestOnnxFile(file: string, fsys: FsPort = nodeFs): Promise<string> {
  return applyToOnnxFile(file, NO_DELTAS, null, fsys);
}

/** The new record of each tensor the update names whose length depends on its values (varint fields): a first pass. */
async function recordLengths(m: OpenOnnx, names: ReadonlySet<string>, reader: DeltaReader | undefined, scratch: FactorScratch): Promise<Map<TensorSlot, number>> {
  const lengths = new Map<TensorSlot, number>();
  for (const slot of m.slots) {
    if (!names.has(slot.name)) continue;
    const fixed = fixedRecordLength(slot);
    if (fixed !== undefined) lengths.set(slot, fixed);
    else lengths.set(slot, encodeTensorData(slot, applyTensor(slot, await readSlot(m.handle, slot), await reader!.delta(slot.name), undefined, scratch)).byteLength);
  }
  return lengths;
}

/**
 * Apply a payload to an ONNX model, streamed: the output is the base file's bytes with only the
 * named initializers' data records replaced (bit-exact, by the same applyTensor as safetensors,
 * each kept in the field it came from) and the enclosing length prefixes rewritten where a length
 * changed; every other byte is copied through (protocol/onnx-splice.ts). Holds one tensor (its
 * base bytes, its replacement, its delta) at a time, and the skeleton. Writes and fsyncs
 * `outFile` (null: writes nothing); returns the new digest.
 */
export async function applyToOnnxFile(baseFile: string, deltas: DeltaSource | Payload, outFile: string | null, fsys: FsPort = nodeFs): Promise<string> {
  const source = 'tensors' in deltas ? memoryDeltas(deltas) : deltas;
  const m = await openOnnx(baseFile, fsys);
  let out: FileHandlePort | undefined;
  let reader: DeltaReader | undefined;
  try {
    const known = new Set(m.slots.map((s) => s.name));
    for (const name of source.names) {
      if (!known.has(name)) throw new ProtocolError('shape-mismatch', `the model has no initializer ${JSON.stringify(name)}`);
    }
    // The deltas come one at a time (a PayloadFile reads each from disk into one scratch).
    const scratch = new FactorScratch();
    reader = source.names.size > 0 ? await source.open(scratch) : undefined;
    // The output's layout (only when writing one): every piece's place, then all but the new records copied.
    const plan = outFile === null ? undefined : splicePlan(m.layout, await recordLengths(m, source.names, reader, scratch));
    const slotAt = new Map<TensorSlot, { at: number; length: number }>();
    plan?.pieces.forEach((p, i) => p.kind === 'slot' && slotAt.set(p.slot, { at: plan.offsets[i], length: p.length }));
    out = outFile === null ? undefined : await fsys.open(outFile, 'w');
    const target = out;
    if (target && plan) await copyPieces(plan, m.handle, (data, at) => writeFully(target, data, at));
    // In name order, for the digest: each tensor read once, applied if named, its new record written in its place.
    // Two buffers of the largest tensor, reused: memory stays flat however large the model.
    const largest = m.slots.reduce((a, s) => Math.max(a, s.spans.length === 1 ? s.spans[0].end - s.spans[0].start : 0), 0);
    const inBuf = new Uint8Array(largest);
    const outBuf = source.names.size > 0 ? new Uint8Array(m.slots.reduce((a, s) => Math.max(a, s.bytes), 0)) : undefined;
    const digest = new ModelDigest();
    for (const slot of m.slots) {
      const base = await readSlot(m.handle, slot, inBuf);
      const data = reader && source.names.has(slot.name) ? applyTensor(slot, base, await reader.delta(slot.name), outBuf, scratch) : base;
      const place = slotAt.get(slot);
      if (place && target) {
        const [head, body] = tensorRecord(slot, data);
        if (head.byteLength + body.byteLength !== place.length) throw new ProtocolError('malformed-model', `initializer ${JSON.stringify(slot.name)}: ${head.byteLength + body.byteLength} bytes, ${place.length} planned`);
        await writeFully(target, head, place.at);
        await writeFully(target, body, place.at + head.byteLength);
      }
      digest.addTensor(slot, data);
    }
    await out?.sync();
    return onnxDigestOf(digest.digest(), m.skeleton.graphHash);
  } finally {
    await m.handle.close();
    await out?.close();
    await reader?.close();
  }
}
