/**
 * The calibration file `fleet build --calib` reads (docs/compression.md, "Calibration"),
 * written from the simulation's own MLP: per weight tensor, the Gram matrix G = XᵀX / N of
 * that layer's inputs in the base model on N unlabelled samples — fc1.weight: the pixels
 * [784, 784]; fc2.weight: the hidden activations after ReLU [hidden, hidden]. F32.
 * And how much each output of fc1 matters downstream, so that errors in both layers are
 * measured at the logits: fc1.weight:outputs [hidden], o_j = P(h_j > 0) · Σ_k W2[k, j]² (an
 * error e in pre-activation j moves the logits by W2[:, j]·e while the unit is active);
 * fc2.weight:outputs [outputs] = 1 (its outputs are the logits).
 * With the fine-tuned model, also the output-matching statistics of the last layer
 * (publisher/refit.ts): fc2.weight:cross = H_bᵀH_t / N (hidden activations of the base and
 * of the fine-tuned model on the same samples) and fc2.weight:target = H_tᵀH_t / N.
 */
import { writeSafetensors } from '../../protocol/safetensors.ts';
import type { Dataset } from './data.ts';
import { hiddenOf, inputsOf, type Mlp } from './mlp.ts';
import { TENSOR_NAMES } from './fleet-build.ts';

/** Σ_s xᵀ·y / N over paired rows (the Gram matrix when ys = xs). */
function gram(rows: Float64Array[], n: number, ys: Float64Array[] = rows): Float32Array {
  const g = new Float64Array(n * n);
  rows.forEach((x, s) => {
    const y = ys[s];
    for (let a = 0; a < n; a++) {
      const xa = x[a];
      if (xa === 0) continue;
      for (let b = 0; b < n; b++) g[a * n + b] += xa * y[b];
    }
  });
  return Float32Array.from(g, (v) => v / rows.length);
}

/** Per-column mean of the rows. */
function meanOf(rows: Float64Array[], n: number): Float32Array {
  const m = new Float64Array(n);
  for (const x of rows) for (let j = 0; j < n; j++) m[j] += x[j] / rows.length;
  return Float32Array.from(m);
}

/**
 * `means`: with the target, also the mean hidden activations (fc2.weight:base-mean, :target-mean), so that fc2.bias is re-fitted too.
 * `chain`: also the samples themselves (fc1.weight:inputs [N, pixels]) and the metadata `fc2.weight:upstream` = `relu(fc1.weight)`, for the sequential re-fit (publisher/sequential.ts).
 */
export function calibrationStats(base: Mlp, ds: Dataset, samples: number, target?: Mlp, means = false, chain = false): Uint8Array {
  const n = Math.min(samples, ds.n);
  const inp = inputsOf(ds, base.inputs);
  const pixels: Float64Array[] = [];
  const hidden: Float64Array[] = [];
  const hiddenT: Float64Array[] = [];
  const active = new Float64Array(base.hidden);
  for (let s = 0; s < n; s++) {
    pixels.push(Float64Array.from(ds.x.subarray(s * base.inputs, (s + 1) * base.inputs)));
    const h = new Float64Array(base.hidden);
    hiddenOf(base, inp, s, h);
    hidden.push(h);
    if (target) {
      const ht = new Float64Array(base.hidden);
      hiddenOf(target, inp, s, ht);
      hiddenT.push(ht);
    }
    for (let j = 0; j < base.hidden; j++) if (h[j] > 0) active[j] += 1 / n;
  }
  const out1 = new Float32Array(base.hidden);
  for (let j = 0; j < base.hidden; j++) {
    let w = 0;
    for (let k = 0; k < base.outputs; k++) w += base.w2[k * base.hidden + j] ** 2;
    out1[j] = active[j] * w;
  }
  const v = (name: string, x: Float32Array) => ({ name, dtype: 'F32' as const, shape: [x.length], data: new Uint8Array(x.buffer) });
  const t = (name: string, g: Float32Array, k: number) => ({ name, dtype: 'F32' as const, shape: [k, k], data: new Uint8Array(g.buffer) });
  const match = target
    ? [
        t(`${TENSOR_NAMES.w2}:cross`, gram(hidden, base.hidden, hiddenT), base.hidden),
        t(`${TENSOR_NAMES.w2}:target`, gram(hiddenT, base.hidden), base.hidden),
        ...(means ? [v(`${TENSOR_NAMES.w2}:base-mean`, meanOf(hidden, base.hidden)), v(`${TENSOR_NAMES.w2}:target-mean`, meanOf(hiddenT, base.hidden))] : []),
      ]
    : [];
  return writeSafetensors(
    [
      t(TENSOR_NAMES.w1, gram(pixels, base.inputs), base.inputs),
      t(TENSOR_NAMES.w2, gram(hidden, base.hidden), base.hidden),
      v(`${TENSOR_NAMES.w1}:outputs`, out1),
      v(`${TENSOR_NAMES.w2}:outputs`, new Float32Array(base.outputs).fill(1)),
      ...match,
      ...(chain ? [{ name: `${TENSOR_NAMES.w1}:inputs`, dtype: 'F32' as const, shape: [n, base.inputs], data: new Uint8Array(Float32Array.from(ds.x.subarray(0, n * base.inputs)).buffer) }] : []),
    ],
    chain ? { [`${TENSOR_NAMES.w2}:upstream`]: `relu(${TENSOR_NAMES.w1})` } : {},
  );
}
