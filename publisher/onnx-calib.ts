import onnxProto from 'onnx-proto';
import type { onnx as OnnxTypes } from 'onnx-proto';
import { readOnnx } from '../protocol/onnx.ts';
import { writeSafetensors, type TensorInput } from '../protocol/safetensors.ts';
import { ioOf, runSamples, type OutputBatch, type Samples } from '../util/onnx-run.ts';
import { OUTPUTS_SUFFIX } from './calib.ts';
import { PUBLISH_DEFAULTS } from './defaults.ts';
import { RefusalError } from '../platform/errors.ts';

/**
 * `fleet calib --model a.onnx --samples S`: the calibration statistics `fleet build --calib`
 * reads (publisher/calib.ts, docs/compression.md "Calibration"), measured by running the
 * ONNX model with ONNX Runtime on unlabelled samples. Per weight initializer:
 *
 * - Gemm with transB = 1 (weight [out, in]): G = AᵀA / rows of its input A, [in, in];
 * - Conv (weight [out, in/group, kh, kw]): G over the input unfolded into patches,
 *   [in·kh·kw]², each group's patches pooled (exact for group = 1);
 * - Gemm with transB = 0 and MatMul (weight [in, out]: its rows are the inputs): the
 *   input's mean squares as `<weight>:outputs` [in], the row weights of the metric (exact
 *   for an error in one row, the diagonal of AᵀA otherwise).
 *
 * A weight read by several nodes sums their statistics. Matrices wider than `maxFull`
 * columns (or all, with `diagonal`) keep only the diagonal [n].
 */

const { onnx } = onnxProto;

export interface CalibLayer {
  weight: string;
  op: string;
  /** What was written: the Gram matrix, its diagonal, or row weights. */
  kind: 'gram' | 'diagonal' | 'rows';
  n: number;
  /** Rows of inputs it averages (samples × positions). */
  rows: number;
}

export interface CalibResult {
  file: Uint8Array;
  layers: CalibLayer[];
  /** Weights seen but not measured, and why. */
  skipped: string[];
}

type Use =
  | { kind: 'cols'; op: string; input: string; n: number }
  | { kind: 'conv'; op: string; input: string; cin: number; group: number; kh: number; kw: number; stride: number[]; pads: number[]; dil: number[] }
  | { kind: 'rows'; op: string; input: string; n: number };

interface Acc {
  sum: Float64Array;
  rows: number;
}

function attr(n: OnnxTypes.INodeProto, name: string): OnnxTypes.IAttributeProto | undefined {
  return (n.attribute ?? []).find((a) => a.name === name);
}
const intAttr = (n: OnnxTypes.INodeProto, name: string, dflt: number): number => {
  const a = attr(n, name);
  return a && a.i !== undefined && a.i !== null ? Number(a.i) : dflt;
};
const intsAttr = (n: OnnxTypes.INodeProto, name: string, dflt: number[]): number[] => {
  const a = attr(n, name);
  return a?.ints?.length ? a.ints.map(Number) : dflt;
};

/** Which input each weight initializer multiplies, from the nodes that read it. */
function usesOf(model: ReturnType<typeof readOnnx>, skipped: string[]): Map<string, Use[]> {
  const weights = new Map(model.tensors.filter((t) => t.shape.length >= 2 && ['F32', 'F16', 'BF16'].includes(t.dtype)).map((t) => [t.name, t]));
  const uses = new Map<string, Use[]>();
  const add = (w: string, u: Use): void => void uses.set(w, [...(uses.get(w) ?? []), u]);
  for (const node of model.proto.graph?.node ?? []) {
    const [x, w] = [node.input?.[0] ?? '', node.input?.[1] ?? ''];
    const t = weights.get(w);
    if (!t) continue;
    const label = `${node.opType} ${JSON.stringify(node.name ?? '')}`;
    if (node.opType === 'Gemm' && t.shape.length === 2) {
      if (intAttr(node, 'transA', 0) !== 0) skipped.push(`${w}: ${label} has transA = 1`);
      else if (intAttr(node, 'transB', 0) === 1) add(w, { kind: 'cols', op: label, input: x, n: t.shape[1] });
      else add(w, { kind: 'rows', op: label, input: x, n: t.shape[0] });
    } else if (node.opType === 'MatMul' && t.shape.length === 2) {
      add(w, { kind: 'rows', op: label, input: x, n: t.shape[0] });
    } else if (node.opType === 'Conv' && t.shape.length === 4) {
      const autoPad = attr(node, 'auto_pad')?.s;
      if (autoPad && autoPad.length > 0 && new TextDecoder().decode(autoPad) !== 'NOTSET') {
        skipped.push(`${w}: ${label} uses auto_pad`);
        continue;
      }
      const [, cin, kh, kw] = t.shape;
      add(w, {
        kind: 'conv',
        op: label,
        input: x,
        cin,
        group: intAttr(node, 'group', 1),
        kh,
        kw,
        stride: intsAttr(node, 'strides', [1, 1]),
        pads: intsAttr(node, 'pads', [0, 0, 0, 0]),
        dil: intsAttr(node, 'dilations', [1, 1]),
      });
    } else {
      skipped.push(`${w}: read by ${label}, which fleet calib does not measure`);
    }
  }
  return uses;
}

/** Add x·xᵀ (or only its diagonal) of each row of `rows` (row-major, width n). */
function accumulate(acc: Acc, rows: Float32Array, n: number, diagonalOnly: boolean): void {
  const count = rows.length / n;
  for (let r = 0; r < count; r++) {
    const o = r * n;
    for (let a = 0; a < n; a++) {
      const xa = rows[o + a];
      if (xa === 0) continue;
      if (diagonalOnly) {
        acc.sum[a] += xa * xa;
        continue;
      }
      const row = a * n;
      for (let b = 0; b < n; b++) acc.sum[row + b] += xa * rows[o + b];
    }
  }
  acc.rows += count;
}

/** The input [b, C, H, W] unfolded into patches [b·oh·ow·group, cin·kh·kw] (one row per position and group). */
function unfold(x: OutputBatch, u: Extract<Use, { kind: 'conv' }>): Float32Array {
  const [b, c, h, w] = x.dims as number[];
  if (x.dims.length !== 4 || c !== u.cin * u.group) throw new RefusalError('unsupported-model', `${u.op}: input [${x.dims}] does not fit a weight of ${u.cin} channels × ${u.group} groups`);
  const [sy, sx] = u.stride;
  const [pt, pl, pb, pr] = u.pads;
  const [dy, dx] = u.dil;
  const oh = Math.floor((h + pt + pb - dy * (u.kh - 1) - 1) / sy) + 1;
  const ow = Math.floor((w + pl + pr - dx * (u.kw - 1) - 1) / sx) + 1;
  const n = u.cin * u.kh * u.kw;
  const out = new Float32Array(b * oh * ow * u.group * n);
  let row = 0;
  for (let s = 0; s < b; s++) {
    for (let g = 0; g < u.group; g++) {
      for (let oy = 0; oy < oh; oy++) {
        for (let ox = 0; ox < ow; ox++, row++) {
          let k = row * n;
          for (let ci = 0; ci < u.cin; ci++) {
            const plane = (s * c + g * u.cin + ci) * h * w;
            for (let ki = 0; ki < u.kh; ki++) {
              const iy = oy * sy - pt + ki * dy;
              for (let kj = 0; kj < u.kw; kj++, k++) {
                const ix = ox * sx - pl + kj * dx;
                out[k] = iy >= 0 && iy < h && ix >= 0 && ix < w ? x.data[plane + iy * w + ix] : 0;
              }
            }
          }
        }
      }
    }
  }
  return out;
}

/** The model with the named values added to its graph outputs (float tensors, shape left to ONNX Runtime). */
function withOutputs(model: ReturnType<typeof readOnnx>, names: string[]): Uint8Array {
  const have = new Set((model.proto.graph?.output ?? []).map((o) => o.name));
  const extra = names.filter((n) => !have.has(n)).map((name) => new onnx.ValueInfoProto({ name, type: { tensorType: { elemType: 1 } } }));
  const graph = Object.assign(new onnx.GraphProto(), model.proto.graph, { output: [...(model.proto.graph?.output ?? []), ...extra] });
  return onnx.ModelProto.encode(Object.assign(new onnx.ModelProto(), model.proto, { graph })).finish();
}

export async function onnxCalibration(modelBytes: Uint8Array, samples: Samples, o: { diagonal?: boolean; maxFull?: number } = {}): Promise<CalibResult> {
  const model = readOnnx(modelBytes);
  const skipped: string[] = [];
  const uses = usesOf(model, skipped);
  if (uses.size === 0) throw new RefusalError('unsupported-model', `the model has no Gemm, MatMul or Conv weight initializer to measure${skipped.length ? ` (${skipped.join('; ')})` : ''}`);
  const graphInput = ioOf(modelBytes).input;
  const wanted = [...new Set([...uses.values()].flat().map((u) => u.input))];
  const fetched = wanted.filter((n) => n !== graphInput);
  const maxFull = o.diagonal ? 0 : (o.maxFull ?? PUBLISH_DEFAULTS.calibMaxFull);
  const width = (u: Use): number => (u.kind === 'conv' ? u.cin * u.kh * u.kw : u.n);
  const accs = new Map<string, { u: Use; acc: Acc; diag: boolean }[]>();
  for (const [w, us] of uses) {
    accs.set(
      w,
      us.map((u) => {
        const n = width(u);
        const diag = u.kind === 'rows' || n > maxFull;
        return { u, diag, acc: { sum: new Float64Array(diag ? n : n * n), rows: 0 } };
      }),
    );
  }
  const per = samples.sampleShape.reduce((a, b) => a * b, 1);
  await runSamples(
    fetched.length ? withOutputs(model, fetched) : modelBytes,
    samples,
    (start, b, out) => {
      const value = (name: string): OutputBatch => (name === graphInput ? { data: samples.inputs.subarray(start * per, (start + b) * per), dims: [b, ...samples.sampleShape] } : out[name]);
      for (const list of accs.values()) {
        for (const { u, acc, diag } of list) {
          const x = value(u.input);
          const rows = u.kind === 'conv' ? unfold(x, u) : x.data;
          if (rows.length % width(u) !== 0) throw new RefusalError('unsupported-model', `${u.op}: input [${x.dims}] is not rows of ${width(u)}`);
          accumulate(acc, rows, width(u), diag);
        }
      }
    },
    fetched.length ? fetched : undefined,
  );

  const tensors: TensorInput[] = [];
  const layers: CalibLayer[] = [];
  const f32 = (x: Float64Array, rows: number): Uint8Array => new Uint8Array(Float32Array.from(x, (v) => v / rows).buffer);
  for (const [w, list] of accs) {
    // Several nodes reading one weight: their statistics summed (each normalised by its own rows).
    for (const kind of ['cols', 'rows'] as const) {
      const part = list.filter((e) => (kind === 'rows') === (e.u.kind === 'rows'));
      if (part.length === 0) continue;
      const n = width(part[0].u);
      const diag = part.some((e) => e.diag);
      const sum = new Float64Array(diag ? n : n * n);
      let rows = 0;
      for (const e of part) {
        const src = e.diag || !diag ? e.acc.sum : Float64Array.from({ length: n }, (_, j) => e.acc.sum[j * n + j]);
        src.forEach((v, i) => (sum[i] += v / Math.max(1, e.acc.rows)));
        rows += e.acc.rows;
      }
      const name = kind === 'rows' ? `${w}${OUTPUTS_SUFFIX}` : w;
      tensors.push({ name, dtype: 'F32', shape: diag ? [n] : [n, n], data: f32(sum, 1) });
      layers.push({ weight: w, op: part.map((e) => e.u.op).join(' + '), kind: kind === 'rows' ? 'rows' : diag ? 'diagonal' : 'gram', n, rows });
    }
  }
  return { file: writeSafetensors(tensors, { producer: 'fleet calib', samples: String(samples.count) }), layers, skipped };
}
