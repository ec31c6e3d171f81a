/** The experiment's results, the bytes-for-gain comparison, and its JSON summary. */
import type { DriftOptions } from './data.ts';
import type { Precision } from './bytes.ts';

export interface MethodRow {
  key: string;
  label: string;
  /** Fixed-size methods: their bytes and accuracy; null for methods sized to each budget. */
  ownBytes: number | null;
  ownAccuracy: number | null;
  /** Per budget column: field test accuracy (null: nothing fits), bytes actually used, and what was shipped. */
  accuracy: (number | null)[];
  bytes: (number | null)[];
  detail: (string | null)[];
}

export interface Section {
  precision: Precision;
  rows: MethodRow[];
}

export interface PaperResult {
  config: {
    baseTrain: number;
    fieldTrain: number;
    test: number;
    hidden: number;
    seed: number;
    baseEpochs: number;
    fineTuneEpochs: number;
    loraEpochs: number;
    batch: number;
    drift: DriftOptions;
  };
  modelParams: number;
  modelBytes: number;
  sizesPercent: number[];
  sizesBytes: number[];
  baseAccuracyOriginal: number;
  baseAccuracyField: number;
  fullFineTuneAccuracy: number;
  sections: Section[];
  gainFraction: number;
  wallSeconds: Record<string, number>;
}

export const OURS = 'lowRankTrained';

export function bytesLabel(b: number): string {
  if (b >= 1024 * 1024) return `${(b / 1024 / 1024).toFixed(2)} MiB`;
  if (b >= 1024) return `${(b / 1024).toFixed(1)} KiB`;
  return `${b} B`;
}

/** Fewest bytes with which a method reaches `gain` over the base's field accuracy; null if it never does. */
export function bytesFor(row: MethodRow, baseField: number, gain: number): number | null {
  let best: number | null = null;
  for (let i = 0; i < row.accuracy.length; i++) {
    const a = row.accuracy[i];
    const b = row.bytes[i];
    if (a === null || b === null) continue;
    if (a - baseField >= gain - 1e-12 && (best === null || b < best)) best = b;
  }
  if (row.ownBytes !== null && row.ownAccuracy !== null && row.ownAccuracy - baseField >= gain - 1e-12) {
    if (best === null || row.ownBytes < best) best = row.ownBytes;
  }
  return best;
}

export interface GainComparison {
  /** Target gain in accuracy points (gainFraction × the full fine-tune's gain). */
  targetGainPoints: number;
  /** Per precision: bytes each method needs (null: never within the sizes tried), and other ÷ ours. */
  [precision: string]: number | { bytes: Record<string, number | null>; ratioToOurs: Record<string, number | null> };
}

export function bytesForGain(r: PaperResult): GainComparison {
  const gain = r.gainFraction * (r.fullFineTuneAccuracy - r.baseAccuracyField);
  const out: GainComparison = { targetGainPoints: round2(100 * gain) };
  for (const s of r.sections) {
    const bytes: Record<string, number | null> = {};
    for (const row of s.rows) bytes[row.key] = bytesFor(row, r.baseAccuracyField, gain);
    const ours = bytes[OURS];
    const ratioToOurs: Record<string, number | null> = {};
    for (const row of s.rows) {
      if (row.key === OURS) continue;
      const b = bytes[row.key];
      ratioToOurs[row.key] = ours && b !== null ? round2(b / ours) : null;
    }
    out[s.precision] = { bytes, ratioToOurs };
  }
  return out;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function round4(x: number | null): number | null {
  return x === null ? null : Math.round(x * 10000) / 10000;
}

/** The one-line JSON the script ends with. */
export function summaryJson(r: PaperResult): Record<string, unknown> {
  const methods: Record<string, Record<string, unknown>> = {};
  for (const s of r.sections) {
    const sec: Record<string, unknown> = {};
    for (const row of s.rows) {
      const accuracyBySize: Record<string, number | null> = {};
      const bytesBySize: Record<string, number | null> = {};
      r.sizesPercent.forEach((p, i) => {
        accuracyBySize[`${p}%`] = round4(row.accuracy[i]);
        bytesBySize[`${p}%`] = row.bytes[i];
      });
      sec[row.key] = {
        accuracy: accuracyBySize,
        bytes: bytesBySize,
        ...(row.ownBytes !== null ? { ownBytes: row.ownBytes, ownAccuracy: round4(row.ownAccuracy) } : {}),
      };
    }
    methods[s.precision] = sec;
  }
  return {
    baseAccuracyOriginal: round4(r.baseAccuracyOriginal),
    baseAccuracyField: round4(r.baseAccuracyField),
    fullFineTuneAccuracy: round4(r.fullFineTuneAccuracy),
    modelParams: r.modelParams,
    modelBytes: r.modelBytes,
    sizesPercent: r.sizesPercent,
    sizesBytes: r.sizesBytes,
    methods,
    bytesForGain: bytesForGain(r),
    config: r.config,
    wallSeconds: r.wallSeconds,
  };
}
