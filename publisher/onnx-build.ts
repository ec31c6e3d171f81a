import onnxProto from 'onnx-proto';
import type { onnx as OnnxTypes } from 'onnx-proto';
import type { Dtype } from '../protocol/dtypes.ts';
import { encodeOnnx, type OnnxStorage } from '../protocol/onnx.ts';
import { PUBLISH_DEFAULTS } from './defaults.ts';
import { InternalError } from '../platform/errors.ts';

/**
 * Writing ONNX models from their parts, as ONNX's onnx.proto specifies them (a
 * ModelProto holding a GraphProto of NodeProtos, TensorProto initializers and typed
 * inputs/outputs): the models of the tests, the synthetic ONNX models and the MNIST
 * demo's export. Encoded by onnx-proto.
 */

const { onnx } = onnxProto;

const ONNX_TYPE: Record<Dtype, number> = { F32: 1, U8: 2, I8: 3, U16: 4, I16: 5, I32: 6, I64: 7, BOOL: 9, F16: 10, F64: 11, U32: 12, U64: 13, BF16: 16 };

export interface InitializerSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Little-endian element bytes. */
  data: Uint8Array;
  /** Where the TensorProto keeps them (default raw_data). */
  storage?: OnnxStorage;
}

export interface NodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  /** Integer, float, or integer-list attributes. */
  attrs?: Record<string, number | number[] | { f: number }>;
}

export interface ValueSpec {
  name: string;
  /** ONNX element type of the value (default FLOAT). */
  dtype?: Dtype;
  /** Dims; a string is a symbolic dim (e.g. 'N'). */
  shape: Array<number | string>;
}

export interface ModelSpec {
  nodes: NodeSpec[];
  initializers: InitializerSpec[];
  inputs: ValueSpec[];
  outputs: ValueSpec[];
  opset?: number;
  graphName?: string;
  producer?: string;
  metadata?: Record<string, string>;
}

export function initializerProto(t: InitializerSpec): OnnxTypes.TensorProto {
  const p = new onnx.TensorProto({ name: t.name, dataType: ONNX_TYPE[t.dtype], dims: t.shape });
  const copy = new Uint8Array(t.data);
  const storage = t.storage ?? 'raw_data';
  if (storage === 'raw_data') p.rawData = copy;
  else if (storage === 'float_data') p.floatData = Array.from(new Float32Array(copy.buffer));
  else if (storage === 'double_data') p.doubleData = Array.from(new Float64Array(copy.buffer));
  else if (storage === 'int32_data') {
    const view = { F16: Uint16Array, BF16: Uint16Array, U16: Uint16Array, I16: Int16Array, I8: Int8Array, U8: Uint8Array, BOOL: Uint8Array, I32: Int32Array }[t.dtype as 'F16'];
    if (!view) throw new InternalError('bad-spec', `${t.dtype} is not held in int32_data`);
    p.int32Data = Array.from(new view(copy.buffer));
  } else throw new InternalError('bad-spec', `storage ${storage} is not written by this builder`);
  return p;
}

function attribute(name: string, v: number | number[] | { f: number }): OnnxTypes.AttributeProto {
  // AttributeType: FLOAT = 1, INT = 2, INTS = 7.
  if (Array.isArray(v)) return new onnx.AttributeProto({ name, type: 7, ints: v });
  if (typeof v === 'object') return new onnx.AttributeProto({ name, type: 1, f: v.f });
  return new onnx.AttributeProto({ name, type: 2, i: v });
}

function valueInfo(v: ValueSpec): OnnxTypes.ValueInfoProto {
  return new onnx.ValueInfoProto({
    name: v.name,
    type: { tensorType: { elemType: ONNX_TYPE[v.dtype ?? 'F32'], shape: { dim: v.shape.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) } } },
  });
}

export function buildOnnxModel(spec: ModelSpec): Uint8Array {
  const graph = new onnx.GraphProto({
    name: spec.graphName ?? 'graph',
    node: spec.nodes.map(
      (n, k) =>
        new onnx.NodeProto({
          name: n.name ?? `${n.op.toLowerCase()}_${k}`,
          opType: n.op,
          input: n.inputs,
          output: n.outputs,
          attribute: Object.entries(n.attrs ?? {}).map(([k2, v]) => attribute(k2, v)),
        }),
    ),
    initializer: spec.initializers.map(initializerProto),
    input: spec.inputs.map(valueInfo),
    output: spec.outputs.map(valueInfo),
  });
  const model = new onnx.ModelProto({
    irVersion: 8,
    producerName: spec.producer ?? 'fleet',
    opsetImport: [{ domain: '', version: spec.opset ?? PUBLISH_DEFAULTS.onnxOpset }],
    graph,
    metadataProps: Object.entries(spec.metadata ?? {}).map(([key, value]) => ({ key, value })),
  });
  return encodeOnnx(model);
}

/** Float32 values as little-endian bytes. */
export function f32Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}
