/**
 * The demo's MLP 784-h-10 as an ONNX model, as PyTorch's exporter writes nn.Linear:
 * x [N, 784] → Gemm(fc1.weight [h, 784], fc1.bias, transB = 1) → Relu →
 * Gemm(fc2.weight [10, h], fc2.bias, transB = 1) → logits [N, 10]; and back.
 */
import { decodeValues } from '../../protocol/dtypes.ts';
import { readOnnx } from '../../protocol/onnx.ts';
import { buildOnnxModel } from '../../publisher/onnx-build.ts';
import { TENSOR_NAMES } from '../paper/fleet-build.ts';
import { initMlp, TENSOR_KEYS, type Mlp, type TensorKey } from '../paper/mlp.ts';

const bytesOf = (a: Float32Array): Uint8Array => new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));

export function mlpToOnnx(p: Mlp): Uint8Array {
  const shapes: Record<TensorKey, number[]> = { w1: [p.hidden, p.inputs], b1: [p.hidden], w2: [p.outputs, p.hidden], b2: [p.outputs] };
  return buildOnnxModel({
    nodes: [
      { name: 'fc1', op: 'Gemm', inputs: ['x', TENSOR_NAMES.w1, TENSOR_NAMES.b1], outputs: ['h0'], attrs: { transB: 1 } },
      { name: 'relu', op: 'Relu', inputs: ['h0'], outputs: ['h'] },
      { name: 'fc2', op: 'Gemm', inputs: ['h', TENSOR_NAMES.w2, TENSOR_NAMES.b2], outputs: ['logits'], attrs: { transB: 1 } },
    ],
    initializers: TENSOR_KEYS.map((k) => ({ name: TENSOR_NAMES[k], dtype: 'F32' as const, shape: shapes[k], data: bytesOf(p[k]) })),
    inputs: [{ name: 'x', shape: ['N', p.inputs] }],
    outputs: [{ name: 'logits', shape: ['N', p.outputs] }],
    graphName: 'mnist-mlp',
    producer: 'fleet demo:onnx',
  });
}

export function mlpFromOnnx(bytes: Uint8Array): Mlp {
  const m = readOnnx(bytes);
  const get = (k: TensorKey) => {
    const t = m.tensors.find((x) => x.name === TENSOR_NAMES[k]);
    if (!t || t.dtype !== 'F32') throw new Error(`the model has no F32 initializer ${TENSOR_NAMES[k]}`);
    return t;
  };
  const [hidden, inputs] = get('w1').shape;
  const p = initMlp(() => 0, inputs, hidden, get('w2').shape[0]);
  for (const k of TENSOR_KEYS) p[k] = Float32Array.from(decodeValues(get(k).data, 'F32'));
  return p;
}
