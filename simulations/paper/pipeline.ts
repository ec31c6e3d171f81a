/**
 * The whole experiment: base model on original digits, field drift, a full
 * fine-tune on field digits, and every update method at every byte budget.
 */
import { mulberry32 } from '../../util/random.ts';
import { bytesLabel, type PaperResult, type MethodRow, type Section } from './result.ts';
import { loadAllDigits, splitDigits, drift, DEFAULT_DRIFT, PIXELS, CLASSES, type Dataset, type DriftOptions } from './data.ts';
import { accuracy, cloneMlp, initMlp, paramCount, type Mlp } from './mlp.ts';
import { train, fullTrainable, lastLayerTrainable, loraTrainable, initLora } from './train.ts';
import { deltaOf, loraBytes, loraConfigFor, quantizedDense, topK, topKCount, addDelta, quantizeRows } from './compress.ts';
import { denseBytes, vectorBytes, type Precision } from './bytes.ts';
import { fleetBuilder, type FleetBuilder } from './fleet-build.ts';
import { productPath, type ProductPath } from './adapter.ts';
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

/** Wall time per phase (summed over calls with the same key) and the step counter behind onStep. */
interface Clock {
  timed: <T>(key: string, f: () => T | Promise<T>) => Promise<T>;
  step: () => void;
  wall: Record<string, number>;
}

function paperClock(o: PaperOptions): Clock {
  const wall: Record<string, number> = {};
  const timed = async <T>(key: string, f: () => T | Promise<T>): Promise<T> => {
    const t = Date.now();
    const v = await f();
    wall[key] = (wall[key] ?? 0) + (Date.now() - t) / 1000;
    return v;
  };
  const totalSteps = 2 + 2 * 2 * o.sizesPercent.length + 5 * o.sizesPercent.length;
  let doneSteps = 0;
  return { timed, step: () => o.onStep?.(++doneSteps, totalSteps), wall };
}

/** The seed's digits, the base model on the original ones, and the two models trained on the field ones. */
async function trainModels(o: PaperOptions, clock: Clock) {
  const { timed, step } = clock;
  const log = o.log;
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

  // Last layer only.
  const last = await timed('lastLayer', () => {
    const m = cloneMlp(base);
    train(lastLayerTrainable(m), fieldTrain, smallOpts);
    return m;
  });
  return { fieldTrain, fieldTest, base, baseAccuracyOriginal, baseAccuracyField, fine, fullFineTuneAccuracy, last, smallOpts };
}

/** `fleet build` over base → fine-tune, with the calibration files `--calib` reads: the base model's layer inputs on unlabelled field digits. */
async function calibratedFleetBuilder(clock: Clock, base: Mlp, fine: Mlp, fieldTrain: Dataset): Promise<FleetBuilder> {
  const { timed } = clock;
  const calib = await timed('calibStats', () => calibrationStats(base, fieldTrain, CALIB_SAMPLES));
  // The same samples through the fine-tuned model too: the output-matching statistics of the last layer;
  // and with the mean hidden activations too, so that fc2.bias is re-fitted with fc2.weight.
  const calibMatch = await timed('calibStats', () => calibrationStats(base, fieldTrain, CALIB_SAMPLES, fine));
  const calibMatchBias = await timed('calibStats', () => calibrationStats(base, fieldTrain, CALIB_SAMPLES, fine, true));
  // And with the samples themselves (fc1's inputs) and the chain fc2 = relu(fc1): the sequential re-fit.
  const calibSeq = await timed('calibStats', () => calibrationStats(base, fieldTrain, CALIB_SAMPLES, fine, false, true));
  return fleetBuilder(base, fine, { gram: calib, match: calibMatch, matchBias: calibMatchBias, seq: calibSeq });
}

type Models = Awaited<ReturnType<typeof trainModels>>;
type RdRow = Pick<MethodRow, 'accuracy' | 'bytes' | 'detail'>;

/** What every method of a section needs. */
interface Bench extends Models {
  o: PaperOptions;
  clock: Clock;
  sizes: number[];
  modelBytes: number;
  delta: Mlp;
  fleet: FleetBuilder;
  product: ProductPath;
  /** The rate–distortion builds do not depend on --quant: built once, listed in both sections. */
  rdRows: Map<string, RdRow>;
}

/** The rows of one section, and the two ways of adding one: a value per size, or one fixed size. */
function sectionRows(sizes: number[]) {
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
  return { rows, grid, fixed };
}

/**
 * 1. Low-rank factors trained directly on the frozen base, shipped through the product
 *    (PEFT adapter → fleet build's LoRA import → payload → the device's apply).
 */
async function lowRankTrained(b: Bench, precision: Precision, lr: MethodRow): Promise<void> {
  const { o, clock, base, sizes, fieldTrain, fieldTest, smallOpts, product } = b;
  const { timed, step } = clock;
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
    o.log(`[seed ${o.seed} ${precision}] low-rank trained @ ${bytesLabel(sizes[i])}: ${lr.detail[i]}, ${bytes} B → ${pct(acc)}`);
    step();
  }
}

/** 2. Truncated SVD of the fine-tune's ΔW, by the product's own build. */
async function fleetSvd(b: Bench, precision: Precision, sv: MethodRow): Promise<void> {
  const { o, clock, sizes, fieldTest, fleet } = b;
  const { timed, step } = clock;
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
    o.log(`[seed ${o.seed} ${precision}] fleet build @ ${bytesLabel(sizes[i])}: ${sv.detail[i]}, ${built.bytes} B payload → ${pct(sv.accuracy[i]!)}`);
    step();
  }
}

/** 2b. The same ΔW through `fleet build --method auto` at every size (built on the first call, the same rows after). */
async function fleetAutoRow(b: Bench, key: string, label: string, calibrated: 'gram' | 'match' | 'matchBias' | 'seq' | undefined): Promise<RdRow> {
  const { o, clock, sizes, fieldTest, fleet, rdRows } = b;
  const { timed, step } = clock;
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
      o.log(`[seed ${o.seed}] ${label} @ ${bytesLabel(sizes[i])}: ${r.detail[i]}, ${built.bytes} B payload → ${pct(r.accuracy[i]!)}`);
    }
    rdRows.set(key, r);
  }
  return rdRows.get(key)!;
}

/** 3. Top-k sparse ΔW. */
async function topKRow(b: Bench, precision: Precision, tk: MethodRow): Promise<void> {
  const { clock, base, sizes, fieldTest, delta } = b;
  for (let i = 0; i < sizes.length; i++) {
    const k = topKCount(sizes[i], precision, 4);
    if (k === 0) continue;
    const r = await clock.timed(`topK.${precision}`, () => topK(base, delta, k, precision));
    tk.accuracy[i] = await clock.timed('evaluate', () => accuracy(r.model, fieldTest));
    tk.bytes[i] = r.bytes;
    tk.detail[i] = `k=${r.k}`;
  }
}

/** Every method at every size with numbers of one precision. */
async function precisionSection(b: Bench, precision: Precision): Promise<Section> {
  const { base, fieldTest, last, modelBytes, delta } = b;
  const { rows, grid, fixed } = sectionRows(b.sizes);
  await lowRankTrained(b, precision, grid('lowRankTrained', 'low-rank trained (ΔW = U·V, base frozen)'));
  await fleetSvd(b, precision, grid('fleetSvd', 'SVD of fine-tune ΔW (fleet build --budget)'));
  // 2b. without and with calibration.
  for (const [key, label, calibrated] of [
    ['fleetAuto', 'fleet build --method auto (no data)', undefined],
    ['fleetAutoCalib', `fleet build --method auto --calib (${CALIB_SAMPLES} unlabelled field digits)`, 'gram'],
    ['fleetAutoMatch', `fleet build --method auto --calib + last layer's cross statistics (output matching, same digits)`, 'match'],
    ['fleetAutoMatchBias', 'the same + the mean hidden activations (fc2.bias re-fitted too)', 'matchBias'],
    ['fleetAutoSeq', `--calib + the ${CALIB_SAMPLES} digits themselves (sequential re-fit: fc1 partly updated, fc2 re-fitted to its hidden units)`, 'seq'],
  ] as const) {
    const row = grid(key, label);
    const r = await fleetAutoRow(b, key, label, calibrated);
    row.accuracy = r.accuracy.slice();
    row.bytes = r.bytes.slice();
    row.detail = r.detail.slice();
  }
  await topKRow(b, precision, grid('topK', `top-k of fine-tune ΔW (${precision === 'f32' ? '4+4' : '1+4'} B/entry)`));

  // 5. Last layer only (its size is fixed).
  const lastDelta = deltaOf(base, last);
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
  fixed('fullFineTune', 'full fine-tuned model (f32)', modelBytes, b.fullFineTuneAccuracy);
  return { precision, rows };
}

export async function runPaper(opts: Partial<PaperOptions> = {}): Promise<PaperResult> {
  const o: PaperOptions = { ...DEFAULT_OPTIONS, ...opts };
  const started = Date.now();
  const clock = paperClock(o);
  const models = await trainModels(o, clock);
  const { base } = models;
  const modelBytes = paramCount(base) * 4;
  const sizes = o.sizesPercent.map((p) => Math.floor((p / 100) * modelBytes));
  const delta = deltaOf(base, models.fine);
  const fleet = await calibratedFleetBuilder(clock, base, models.fine, models.fieldTrain);
  const product = await productPath(base);
  const bench: Bench = { ...models, o, clock, sizes, modelBytes, delta, fleet, product, rdRows: new Map() };
  const sections: Section[] = [];
  try {
    for (const precision of ['f32', 'int8'] as Precision[]) sections.push(await precisionSection(bench, precision));
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
    baseAccuracyOriginal: models.baseAccuracyOriginal,
    baseAccuracyField: models.baseAccuracyField,
    fullFineTuneAccuracy: models.fullFineTuneAccuracy,
    sections,
    gainFraction: o.gainFraction,
    wallSeconds: { ...roundAll(clock.wall), total: round((Date.now() - started) / 1000) },
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
