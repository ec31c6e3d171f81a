/**
 * The whole experiment: base model on original digits, field drift, a full
 * fine-tune on field digits, and every update method at every byte budget.
 */
import { mulberry32 } from '../../util/random.ts';
import { bytesLabel, type PaperResult, type MethodRow, type Section } from './result.ts';
import { loadAllDigits, splitDigits, drift, DEFAULT_DRIFT, PIXELS, CLASSES, type DriftOptions } from './data.ts';
import { accuracy, cloneMlp, initMlp, paramCount } from './mlp.ts';
import { train, fullTrainable, lastLayerTrainable, loraTrainable, initLora } from './train.ts';
import { deltaOf, loraBytes, loraConfigFor, quantizedDense, topK, topKCount, addDelta, quantizeRows } from './compress.ts';
import { denseBytes, vectorBytes, type Precision } from './bytes.ts';
import { fleetBuilder } from './fleet-build.ts';
import { productPath } from './adapter.ts';
import { calibrationStats } from './calib-stats.ts';

/** Unlabelled field-training digits whose layer inputs make the calibration file. */
const CALIB_SAMPLES = 256;

export interface PaperOptions {
  baseTrain: number;
  fieldTrain: number;
  test: number;
  hidden: number;
  seed: number;
  baseEpochs: number;
  fineTuneEpochs: number;
  loraEpochs: number;
  batch: number;
  /** Update sizes, in % of the model's float32 bytes. */
  sizesPercent: number[];
  drift: DriftOptions;
  /** bytesForGain's target: this fraction of the full fine-tune's gain. */
  gainFraction: number;
  log: (line: string) => void;
  /** Called after each step: base, full fine-tune, and every (method, precision, size) trained or built. */
  onStep?: (done: number, total: number) => void;
}

export const DEFAULT_OPTIONS: PaperOptions = {
  baseTrain: 6000,
  fieldTrain: 2000,
  test: 2000,
  hidden: 128,
  seed: 1,
  baseEpochs: 20,
  fineTuneEpochs: 20,
  loraEpochs: 20,
  batch: 64,
  sizesPercent: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
  drift: DEFAULT_DRIFT,
  gainFraction: 0.9,
  log: () => {},
};

const BASE_LR = 2e-3;
const FT_LR = 1e-3;
const SMALL_LR = 5e-3;

export async function runPaper(opts: Partial<PaperOptions> = {}): Promise<PaperResult> {
  const o: PaperOptions = { ...DEFAULT_OPTIONS, ...opts };
  const started = Date.now();
  const wall: Record<string, number> = {};
  const timed = async <T>(key: string, f: () => T | Promise<T>): Promise<T> => {
    const t = Date.now();
    const v = await f();
    wall[key] = (wall[key] ?? 0) + (Date.now() - t) / 1000;
    return v;
  };
  const log = o.log;
  const totalSteps = 2 + 2 * 2 * o.sizesPercent.length + 4 * o.sizesPercent.length;
  let doneSteps = 0;
  const step = (): void => o.onStep?.(++doneSteps, totalSteps);

  // Data.
  const { split, fieldTrain, fieldTest } = await timed('data', () => {
    const split = splitDigits(loadAllDigits(), { baseTrain: o.baseTrain, fieldTrain: o.fieldTrain, test: o.test }, o.seed);
    return { split, fieldTrain: drift(split.fieldTrain, o.seed + 1, o.drift), fieldTest: drift(split.test, o.seed + 2, o.drift) };
  });

  // Base model on the original digits.
  const base = await timed('base', () => {
    const m = initMlp(mulberry32(o.seed + 3), PIXELS, o.hidden, CLASSES);
    const losses = train(fullTrainable(m), split.baseTrain, { epochs: o.baseEpochs, batch: o.batch, lr: BASE_LR, lrFloor: 0.05, seed: o.seed + 4 });
    log(`base: ${o.baseEpochs} epochs, final loss ${losses[losses.length - 1]?.toFixed(4)}`);
    return m;
  });
  const baseAccuracyOriginal = accuracy(base, split.test);
  const baseAccuracyField = accuracy(base, fieldTest);
  log(`base accuracy: original ${pct(baseAccuracyOriginal)}, field ${pct(baseAccuracyField)}`);
  step();

  const modelBytes = paramCount(base) * 4;
  const sizes = o.sizesPercent.map((p) => Math.floor((p / 100) * modelBytes));
  const ftOpts = { epochs: o.fineTuneEpochs, batch: o.batch, lr: FT_LR, lrFloor: 0.1, seed: o.seed + 5 };
  const smallOpts = { epochs: o.loraEpochs, batch: o.batch, lr: SMALL_LR, lrFloor: 0.1, seed: o.seed + 5 };

  // Full fine-tune (upper bound, and the source of every post-hoc compression).
  const fine = await timed('fullFineTune', () => {
    const m = cloneMlp(base);
    train(fullTrainable(m), fieldTrain, ftOpts);
    return m;
  });
  const fullFineTuneAccuracy = accuracy(fine, fieldTest);
  log(`full fine-tune: field ${pct(fullFineTuneAccuracy)}`);
  step();
  const delta = deltaOf(base, fine);

  // Last layer only.
  const last = await timed('lastLayer', () => {
    const m = cloneMlp(base);
    train(lastLayerTrainable(m), fieldTrain, smallOpts);
    return m;
  });
  const lastDelta = deltaOf(base, last);

  // Calibration for `fleet build --calib`: the base model's layer inputs on unlabelled field digits.
  const calib = await timed('calibStats', () => calibrationStats(base, fieldTrain, CALIB_SAMPLES));
  // The same samples through the fine-tuned model too: the output-matching statistics of the last layer;
  // and with the mean hidden activations too, so that fc2.bias is re-fitted with fc2.weight.
  const calibMatch = await timed('calibStats', () => calibrationStats(base, fieldTrain, CALIB_SAMPLES, fine));
  const calibMatchBias = await timed('calibStats', () => calibrationStats(base, fieldTrain, CALIB_SAMPLES, fine, true));
  const fleet = await fleetBuilder(base, fine, { gram: calib, match: calibMatch, matchBias: calibMatchBias });
  // The rate–distortion builds do not depend on --quant: built once, listed in both sections.
  const rdRows = new Map<string, { accuracy: Array<number | null>; bytes: Array<number | null>; detail: Array<string | null> }>();
  const product = await productPath(base);
  const sections: Section[] = [];
  try {
    for (const precision of ['f32', 'int8'] as Precision[]) {
      const rows: MethodRow[] = [];
      const grid = (key: string, label: string): MethodRow => {
        const r: MethodRow = { key, label, ownBytes: null, ownAccuracy: null, accuracy: sizes.map(() => null), bytes: sizes.map(() => null), detail: sizes.map(() => null) };
        rows.push(r);
        return r;
      };
      const fixed = (key: string, label: string, bytes: number, acc: number): MethodRow => {
        const r: MethodRow = {
          key,
          label,
          ownBytes: bytes,
          ownAccuracy: acc,
          accuracy: sizes.map((s) => (bytes <= s ? acc : null)),
          bytes: sizes.map((s) => (bytes <= s ? bytes : null)),
          detail: sizes.map(() => null),
        };
        rows.push(r);
        return r;
      };

      // 1. Low-rank factors trained directly on the frozen base, shipped through the product
      //    (PEFT adapter → fleet build's LoRA import → payload → the device's apply).
      const lr = grid('lowRankTrained', 'low-rank trained (ΔW = U·V, base frozen)');
      for (let i = 0; i < sizes.length; i++) {
        const cfg = loraConfigFor(base, sizes[i], precision);
        const bytes = loraBytes(base, cfg, precision);
        if (bytes === 0) {
          step();
          continue;
        }
        const s = await timed(`lowRankTrained.${precision}`, () => {
          const s = initLora(base, cfg, mulberry32(o.seed + 6));
          train(loraTrainable(base, s), fieldTrain, smallOpts);
          return s;
        });
        const built = await timed('productPath', () => product.build(s, precision === 'f32' ? 'f32' : 'int8'));
        if (built.dataBytes !== bytes) throw new Error(`internal: the payload holds ${built.dataBytes} data bytes, the budget rule counted ${bytes}`);
        const acc = await timed('evaluate', () => accuracy(built.model, fieldTest));
        lr.accuracy[i] = acc;
        lr.bytes[i] = bytes;
        lr.detail[i] = `r1=${cfg.r1} r2=${cfg.r2}${cfg.b1 ? ' b1' : ''}${cfg.b2 ? ' b2' : ''} (payload ${built.payload.byteLength} B)`;
        log(`[seed ${o.seed} ${precision}] low-rank trained @ ${bytesLabel(sizes[i])}: ${lr.detail[i]}, ${bytes} B → ${pct(acc)}`);
        step();
      }

      // 2. Truncated SVD of the fine-tune's ΔW, by the product's own build.
      const sv = grid('fleetSvd', 'SVD of fine-tune ΔW (fleet build --budget)');
      for (let i = 0; i < sizes.length; i++) {
        const built = await timed(`fleetSvd.${precision}`, () => fleet.build(sizes[i], precision === 'f32' ? 'f32' : 'int8'));
        if (!built) {
          step();
          continue;
        }
        sv.accuracy[i] = await timed('evaluate', () => accuracy(built.model, fieldTest));
        sv.bytes[i] = built.bytes;
        sv.detail[i] = Object.entries(built.ranks)
          .map(([n, r]) => `${n}:${r}`)
          .join(' ');
        log(`[seed ${o.seed} ${precision}] fleet build @ ${bytesLabel(sizes[i])}: ${sv.detail[i]}, ${built.bytes} B payload → ${pct(sv.accuracy[i]!)}`);
        step();
      }

      // 2b. The same ΔW through `fleet build --method auto`, without and with calibration.
      for (const [key, label, calibrated] of [
        ['fleetAuto', 'fleet build --method auto (no data)', undefined],
        ['fleetAutoCalib', `fleet build --method auto --calib (${CALIB_SAMPLES} unlabelled field digits)`, 'gram'],
        ['fleetAutoMatch', `fleet build --method auto --calib + last layer's cross statistics (output matching, same digits)`, 'match'],
        ['fleetAutoMatchBias', 'the same + the mean hidden activations (fc2.bias re-fitted too)', 'matchBias'],
      ] as const) {
        const row = grid(key, label);
        if (!rdRows.has(key)) {
          const r = { accuracy: sizes.map((): number | null => null), bytes: sizes.map((): number | null => null), detail: sizes.map((): string | null => null) };
          for (let i = 0; i < sizes.length; i++) {
            const built = await timed(key, () => fleet.build(sizes[i], 'f32', { method: 'auto', calib: calibrated }));
            step();
            if (!built) continue;
            r.accuracy[i] = await timed('evaluate', () => accuracy(built.model, fieldTest));
            r.bytes[i] = built.bytes;
            r.detail[i] = Object.entries(built.ranks)
              .map(([n, k]) => `${n}:${k}`)
              .join(' ');
            log(`[seed ${o.seed}] ${label} @ ${bytesLabel(sizes[i])}: ${r.detail[i]}, ${built.bytes} B payload → ${pct(r.accuracy[i]!)}`);
          }
          rdRows.set(key, r);
        }
        const r = rdRows.get(key)!;
        row.accuracy = r.accuracy.slice();
        row.bytes = r.bytes.slice();
        row.detail = r.detail.slice();
      }

      // 3. Top-k sparse ΔW.
      const tk = grid('topK', `top-k of fine-tune ΔW (${precision === 'f32' ? '4+4' : '1+4'} B/entry)`);
      for (let i = 0; i < sizes.length; i++) {
        const k = topKCount(sizes[i], precision, 4);
        if (k === 0) continue;
        const r = await timed(`topK.${precision}`, () => topK(base, delta, k, precision));
        tk.accuracy[i] = await timed('evaluate', () => accuracy(r.model, fieldTest));
        tk.bytes[i] = r.bytes;
        tk.detail[i] = `k=${r.k}`;
      }

      // 5. Last layer only (its size is fixed).
      const lastBytes = precision === 'f32' ? denseBytes(base.outputs, base.hidden, 32) + vectorBytes(base.outputs, 'f32') : denseBytes(base.outputs, base.hidden, 8) + vectorBytes(base.outputs, 'int8');
      const lastModel = precision === 'f32' ? last : addDelta(base, { ...lastDelta, w2: quantizeRows(lastDelta.w2, base.outputs, base.hidden, 8), b2: quantizeRows(lastDelta.b2, 1, base.outputs, 8) });
      fixed('lastLayer', 'last layer retrained', lastBytes, accuracy(lastModel, fieldTest));

      // 4. Quantised dense ΔW (8-bit and 4-bit; listed with the 8-bit methods).
      if (precision === 'int8') {
        for (const bits of [8, 4] as const) {
          const q = quantizedDense(base, delta, bits);
          fixed(`dense${bits === 8 ? 'Int8' : 'Int4'}`, `dense fine-tune ΔW, ${bits}-bit`, q.bytes, accuracy(q.model, fieldTest));
        }
      }

      // 6. The full fine-tune (f32, full size).
      fixed('fullFineTune', 'full fine-tuned model (f32)', modelBytes, fullFineTuneAccuracy);
      sections.push({ precision, rows });
    }
  } finally {
    await fleet.close();
    await product.close();
  }

  const result: PaperResult = {
    config: {
      baseTrain: o.baseTrain,
      fieldTrain: o.fieldTrain,
      test: o.test,
      hidden: o.hidden,
      seed: o.seed,
      baseEpochs: o.baseEpochs,
      fineTuneEpochs: o.fineTuneEpochs,
      loraEpochs: o.loraEpochs,
      batch: o.batch,
      drift: o.drift,
    },
    modelParams: paramCount(base),
    modelBytes,
    sizesPercent: o.sizesPercent,
    sizesBytes: sizes,
    baseAccuracyOriginal,
    baseAccuracyField,
    fullFineTuneAccuracy,
    sections,
    gainFraction: o.gainFraction,
    wallSeconds: { ...roundAll(wall), total: round((Date.now() - started) / 1000) },
  };
  return result;
}

function pct(x: number): string {
  return `${(100 * x).toFixed(2)} %`;
}

function round(x: number): number {
  return Math.round(x * 10) / 10;
}

function roundAll(w: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(w).map(([k, v]) => [k, round(v)]));
}
