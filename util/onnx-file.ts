import { nodeFs, writeFully, type FsPort } from '../platform/fs-port.ts';
import { applyTensor, FactorScratch, type Payload } from '../protocol/lowrank.ts';
import { memoryDeltas, type DeltaSource } from './payload-file.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { onnxDigestOf, onnxModelDigest, readOnnx, writeOnnx, type OnnxModel, type OnnxTensor } from '../protocol/onnx.ts';
import type { TensorInfo } from '../protocol/safetensors.ts';
import type { ModelFile } from './model-format.ts';

/**
 * ONNX models on disk. A .onnx file (protobuf, under 2 GB by ONNX's own limit) is
 * read whole; its updatable initializers are offered as tensors like a safetensors
 * file's, at offsets of a virtual concatenation in name order (only their sizes,
 * end − begin, mean anything).
 */

async function readModel(file: string, fsys: FsPort): Promise<{ model: OnnxModel; size: number }> {
  const bytes = await fsys.readFile(file);
  return { model: readOnnx(bytes), size: bytes.byteLength };
}

function layout(tensors: readonly OnnxTensor[]): TensorInfo[] {
  let at = 0;
  return tensors.map((t) => {
    const info = { name: t.name, dtype: t.dtype, shape: t.shape.slice(), begin: at, end: at + t.data.byteLength };
    at = info.end;
    return info;
  });
}

export async function openOnnxFile(file: string, fsys: FsPort = nodeFs): Promise<ModelFile> {
  const { model, size } = await readModel(file, fsys);
  const infos = layout(model.tensors);
  const data = new Map(model.tensors.map((t) => [t.name, t.data]));
  return {
    path: file,
    format: 'onnx',
    fileSize: size,
    tensors: infos,
    onnx: model,
    info: (name) => infos.find((t) => t.name === name),
    digestOf: (tensorDigest) => onnxDigestOf(tensorDigest, model.graphHash),
    async read(t) {
      const d = data.get(t.name);
      if (!d) throw new ProtocolError('shape-mismatch', `the model has no initializer ${JSON.stringify(t.name)}`);
      return d;
    },
    get dataBytes() {
      return infos.reduce((a, t) => a + (t.end - t.begin), 0);
    },
    async close() {},
  };
}

export async function digestOnnxFile(file: string, fsys: FsPort = nodeFs): Promise<string> {
  return onnxModelDigest((await readModel(file, fsys)).model);
}

/**
 * Apply a payload to an ONNX model: only the initializers it names change (bit-exact,
 * by the same applyTensor as safetensors), each kept in the field it came from; the
 * rest of the file is re-encoded unchanged (deterministic). Writes and fsyncs
 * `outFile`; returns the new digest.
 */
export async function applyToOnnxFile(baseFile: string, deltas: DeltaSource | Payload, outFile: string | null, fsys: FsPort = nodeFs): Promise<string> {
  const { model } = await readModel(baseFile, fsys);
  const byName = new Map(model.tensors.map((t) => [t.name, t]));
  const replaced = new Map<string, Uint8Array>();
  const source = 'tensors' in deltas ? memoryDeltas(deltas) : deltas;
  for (const name of source.names) {
    if (!byName.has(name)) throw new ProtocolError('shape-mismatch', `the model has no initializer ${JSON.stringify(name)}`);
  }
  // The deltas come one at a time (a PayloadFile reads each from disk into one scratch).
  const scratch = new FactorScratch();
  const reader = source.names.size > 0 ? await source.open(scratch) : undefined;
  try {
    for (const name of source.names) {
      const t = byName.get(name)!;
      replaced.set(name, applyTensor(t, t.data, await reader!.delta(name), undefined, scratch));
    }
  } finally {
    await reader?.close();
  }
  if (outFile !== null) {
    const out = await fsys.open(outFile, 'w');
    try {
      await writeFully(out, writeOnnx(model, replaced), 0);
      await out.sync();
    } finally {
      await out.close();
    }
  }
  return onnxModelDigest({ tensors: model.tensors.map((t) => ({ ...t, data: replaced.get(t.name) ?? t.data })), graphHash: model.graphHash });
}
