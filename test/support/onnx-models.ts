import { encodeValues } from '../../protocol/dtypes.ts';
import { buildOnnxModel, f32Bytes, type InitializerSpec, type ModelSpec } from '../../publisher/onnx-build.ts';

/**
 * Small ONNX models built from ONNX's specification (onnx.proto via onnx-proto), for
 * the tests: a Conv weight [out, in, kh, kw], a Gemm weight with transB = 1, a MatMul
 * weight [in, out], and one initializer (shared_bias) read by two Add nodes.
 */

/** Deterministic values in [-1, 1). */
export function values(seed: number, n: number): Float64Array {
  let s = seed >>> 0 || 1;
  return Float64Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

export interface NetWeights {
  conv_w: Float64Array; // [3, 2, 3, 3]
  conv_b: Float64Array; // [3]
  fc_w: Float64Array; // [6, 27] (Gemm, transB = 1)
  fc_b: Float64Array; // [6]
  mm_w: Float64Array; // [6, 4] (MatMul)
  shared_bias: Float64Array; // [4], read by two Add nodes
}

export const NET_SHAPES: Record<keyof NetWeights, number[]> = {
  conv_w: [3, 2, 3, 3],
  conv_b: [3],
  fc_w: [6, 27],
  fc_b: [6],
  mm_w: [6, 4],
  shared_bias: [4],
};

export function netWeights(seed: number): NetWeights {
  const w = {} as NetWeights;
  let k = 0;
  for (const [name, shape] of Object.entries(NET_SHAPES) as Array<[keyof NetWeights, number[]]>) {
    w[name] = Float64Array.from(
      values(
        seed * 100 + k++,
        shape.reduce((a, b) => a * b, 1),
      ),
      (x) => x * 0.5,
    );
  }
  return w;
}

/** Rank-1 change a·bᵀ of a [m, n] matrix (m = first dim, n = the rest), scaled. */
export function plusRankOne(w: Float64Array, m: number, seed: number, scale = 0.1): Float64Array {
  const n = w.length / m;
  const a = values(seed, m);
  const b = values(seed + 1, n);
  return Float64Array.from(w, (x, e) => x + scale * a[Math.floor(e / n)] * b[e % n]);
}

export interface NetOptions {
  /** Gemm's transB (default 1: fc_w is [out, in]). */
  transB?: number;
  /** The activation after the Conv (default Relu). */
  activation?: string;
  metadata?: Record<string, string>;
  /** How fc_w is stored (default raw_data). */
  fcStorage?: InitializerSpec['storage'];
}

/** x [1, 2, 5, 5] → Conv → Relu → Flatten → Gemm(transB) → Relu → MatMul → Add(shared) → Add(shared) → y [1, 4]. */
export function netSpec(w: NetWeights, o: NetOptions = {}): ModelSpec {
  const init = (name: keyof NetWeights, storage?: InitializerSpec['storage']): InitializerSpec => ({ name, dtype: 'F32', shape: NET_SHAPES[name], data: f32Bytes(w[name]), storage });
  return {
    nodes: [
      { name: 'conv', op: 'Conv', inputs: ['x', 'conv_w', 'conv_b'], outputs: ['c'], attrs: { kernel_shape: [3, 3] } },
      { name: 'act', op: o.activation ?? 'Relu', inputs: ['c'], outputs: ['ca'] },
      { name: 'flat', op: 'Flatten', inputs: ['ca'], outputs: ['f'], attrs: { axis: 1 } },
      { name: 'fc', op: 'Gemm', inputs: ['f', 'fc_w', 'fc_b'], outputs: ['h0'], attrs: { transB: o.transB ?? 1 } },
      { name: 'relu', op: 'Relu', inputs: ['h0'], outputs: ['h'] },
      { name: 'mm', op: 'MatMul', inputs: ['h', 'mm_w'], outputs: ['m'] },
      { name: 'add1', op: 'Add', inputs: ['m', 'shared_bias'], outputs: ['a1'] },
      { name: 'add2', op: 'Add', inputs: ['a1', 'shared_bias'], outputs: ['y'] },
    ],
    initializers: [init('conv_w'), init('conv_b'), init('fc_w', o.fcStorage), init('fc_b'), init('mm_w'), init('shared_bias')],
    inputs: [{ name: 'x', shape: [1, 2, 5, 5] }],
    outputs: [{ name: 'y', shape: [1, 4] }],
    metadata: o.metadata,
  };
}

export function netModel(w: NetWeights, o: NetOptions = {}): Uint8Array {
  return buildOnnxModel(netSpec(w, o));
}

/** Initializers of every element type and storage field (not run, only read and digested). */
export function typedSpec(): ModelSpec {
  const f16 = encodeValues(values(5, 6), 'F16');
  const bf16 = encodeValues(values(6, 6), 'BF16');
  const i8 = new Uint8Array(Int8Array.from([-128, -1, 0, 1, 7, 127]).buffer);
  return {
    nodes: [{ name: 'id', op: 'Identity', inputs: ['x'], outputs: ['y'] }],
    initializers: [
      { name: 'f32_raw', dtype: 'F32', shape: [2, 3], data: f32Bytes(values(1, 6)) },
      { name: 'f32_typed', dtype: 'F32', shape: [2, 3], data: f32Bytes(values(2, 6)), storage: 'float_data' },
      { name: 'f16_raw', dtype: 'F16', shape: [2, 3], data: f16 },
      { name: 'f16_typed', dtype: 'F16', shape: [2, 3], data: f16, storage: 'int32_data' },
      { name: 'bf16_raw', dtype: 'BF16', shape: [3, 2], data: bf16 },
      { name: 'bf16_typed', dtype: 'BF16', shape: [3, 2], data: bf16, storage: 'int32_data' },
      { name: 'i8_raw', dtype: 'I8', shape: [6], data: i8 },
      { name: 'i8_typed', dtype: 'I8', shape: [6], data: i8, storage: 'int32_data' },
    ],
    inputs: [{ name: 'x', shape: [1] }],
    outputs: [{ name: 'y', shape: [1] }],
  };
}
