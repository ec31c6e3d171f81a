import { decodePayload, encodePayload } from '../protocol/lowrank.ts';
import { readSafetensors } from '../protocol/safetensors.ts';
import { buildOnnxModel } from '../publisher/onnx-build.ts';
import { applyToOnnxFile, digestOnnxFile } from '../util/onnx-file.ts';

/**
 * bench:device's synthetic model as an ONNX file, and its update aimed at that file: the same
 * tensors, layer k being Gemm(h, layers.k.weight, layers.k.bias, transB = 1) as PyTorch exports
 * nn.Linear.
 */

export function onnxOf(safetensors: Uint8Array): Uint8Array {
  const { tensors } = readSafetensors(safetensors);
  const layers = tensors.filter((t) => t.name.endsWith('.weight')).length;
  const shape = (name: string): number[] => tensors.find((t) => t.name === name)!.shape;
  return buildOnnxModel({
    nodes: Array.from({ length: layers }, (_, k) => ({
      name: `fc${k}`,
      op: 'Gemm',
      inputs: [k === 0 ? 'x' : `h${k - 1}`, `layers.${k}.weight`, `layers.${k}.bias`],
      outputs: [`h${k}`],
      attrs: { transB: 1 },
    })),
    initializers: tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: t.data })),
    inputs: [{ name: 'x', shape: ['N', shape('layers.0.weight')[1]] }],
    outputs: [{ name: `h${layers - 1}`, shape: ['N', shape(`layers.${layers - 1}.weight`)[0]] }],
  });
}

/** A payload built for the safetensors model, re-aimed at its ONNX twin (base and target digests of the ONNX files). */
export async function onnxPayload(baseFile: string, payload: Uint8Array): Promise<{ payload: Uint8Array; targetDigest: string }> {
  const draft = { ...decodePayload(payload), base: await digestOnnxFile(baseFile) };
  const targetDigest = await applyToOnnxFile(baseFile, draft, null);
  return { payload: encodePayload({ ...draft, target: targetDigest }), targetDigest };
}
