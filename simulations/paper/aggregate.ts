/**
 * Several seeds' results → mean and spread per method and size, the bytes
 * each method needs for a gain (interpolated on its gain-vs-bytes curve), its
 * ratio to the paper's method, and the headline check.
 */
import type { Precision } from './bytes.ts';
import { OURS, type MethodRow, type PaperResult } from './result.ts';

export interface Stat {
  mean: number;
  sd: number;
  min: number;
  max: number;
  n: number;
}

export function stat(xs: number[]): Stat | null {
  if (xs.length === 0) return null;
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : 0;
  return { mean, sd, min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

/** Points (bytes, gain in accuracy points) of a row, in order of bytes; fixed-size rows: their one point. */
export function curveOf(row: MethodRow, baseField: number): Array<{ bytes: number; gain: number }> {
  if (row.ownBytes !== null && row.ownAccuracy !== null) return [{ bytes: row.ownBytes, gain: 100 * (row.ownAccuracy - baseField) }];
  const pts: Array<{ bytes: number; gain: number }> = [];
  row.accuracy.forEach((a, i) => {
    const b = row.bytes[i];
    if (a !== null && b !== null) pts.push({ bytes: b, gain: 100 * (a - baseField) });
  });
  return pts.sort((p, q) => p.bytes - q.bytes);
}

export interface Needed {
  /** Bytes needed; null when the curve never reaches the gain. */
  bytes: number | null;
  /** True when the first (smallest) point already reaches it: the true need is at most `bytes`. */
  atMost: boolean;
}

/**
 * Fewest bytes at which the curve reaches `gain` points: the first point at or
 * above it, interpolated linearly in log(bytes) against gain from the point
 * before it (the curve between two measured sizes is taken as a straight line
 * on the plot's log-x axis). The first crossing of the raw curve is also the
 * first crossing of its running maximum. A fixed-size method (one point) needs
 * exactly its size if it reaches the gain.
 */
export function bytesToReach(curve: Array<{ bytes: number; gain: number }>, gain: number): Needed {
  for (let i = 0; i < curve.length; i++) {
    if (curve[i].gain < gain - 1e-9) continue;
    if (i === 0) return { bytes: curve[0].bytes, atMost: curve.length > 1 };
    const a = curve[i - 1];
    const b = curve[i];
    const t = (gain - a.gain) / (b.gain - a.gain);
    return { bytes: Math.exp(Math.log(a.bytes) + t * (Math.log(b.bytes) - Math.log(a.bytes))), atMost: false };
  }
  return { bytes: null, atMost: false };
}

export interface MethodSummary {
  key: string;
  label: string;
  fixed: boolean;
  /** Per size column: gain (points) over seeds and bytes used (mean); null where nothing fits in any seed. */
  gain: (Stat | null)[];
  bytes: (number | null)[];
  /** Fixed-size methods: own bytes (mean) and gain. */
  ownBytes: number | null;
  ownGain: Stat | null;
  /** Bytes to reach the target fraction of the full fine-tune's gain, per seed, and their ratio to ours. */
  toTarget: { perSeed: Needed[]; bytes: Stat | null; reachedIn: number; ratio: Stat | null };
  /** Bytes to reach the gain ours reached at the headline size (per seed), and ÷ ours' bytes there. */
  toHeadline: { perSeed: Needed[]; bytes: Stat | null; reachedIn: number; ratio: Stat | null };
}

export interface PrecisionSummary {
  precision: Precision;
  methods: MethodSummary[];
}

export interface Aggregate {
  seeds: number[];
  runs: PaperResult[];
  sizesPercent: number[];
  sizesBytes: number[];
  modelBytes: number;
  modelParams: number;
  baseOriginal: Stat;
  baseField: Stat;
  fullFineTune: Stat;
  fullGain: Stat;
  gainFraction: number;
  /** The headline size: the largest size column ≤ headlinePercent. */
  headlinePercent: number;
  headlineIndex: number;
  sections: PrecisionSummary[];
  headline: Record<string, { oursGain: Stat | null; oursBytes: number | null; minGainOk: boolean; othersAt2x: Record<string, boolean | null>; holds: boolean }>;
  /** The same check at every size column up to the headline size. */
  headlineBySize: Record<string, HeadlineAtSize[]>;
}

export interface HeadlineAtSize {
  percent: number;
  oursBytes: number | null;
  oursGain: Stat | null;
  minGainOk: boolean;
  /** The other compressed method with the lowest ratio (bytes for ours' gain ÷ ours' bytes), over seeds; Infinity: never reaches it. */
  closest: { key: string; ratio: Stat | null; neverIn: number } | null;
  holds: boolean;
}

/** The headline at size column i: ours' gain there ≥ minGain in every seed, and every other compressed method needs ≥ 2× ours' bytes for it. */
function headlineAt(runs: PaperResult[], prec: Precision, i: number, minGain: number): HeadlineAtSize {
  const rowOf = (r: PaperResult, key: string): MethodRow | undefined => r.sections.find((s) => s.precision === prec)!.rows.find((row) => row.key === key);
  const ours = runs.map((r) => {
    const row = rowOf(r, OURS)!;
    const a = row.accuracy[i];
    return a === null ? null : { gain: 100 * (a - r.baseAccuracyField), bytes: row.bytes[i]! };
  });
  const minGainOk = ours.every((h) => h !== null && h.gain >= minGain);
  let closest: HeadlineAtSize['closest'] = null;
  let holds = minGainOk;
  let worst = Infinity;
  for (const key of COMPRESSED) {
    if (!rowOf(runs[0], key)) continue;
    const ratios: number[] = [];
    let never = 0;
    runs.forEach((r, k) => {
      const h = ours[k];
      if (!h) return;
      const need = bytesToReach(curveOf(rowOf(r, key)!, r.baseAccuracyField), h.gain);
      if (need.bytes === null) never++;
      else ratios.push(need.bytes / h.bytes);
    });
    if (ratios.some((x) => x < 2)) holds = false;
    const low = ratios.length ? Math.min(...ratios) : Infinity;
    if (closest === null || low < worst) {
      worst = low;
      closest = { key, ratio: stat(ratios), neverIn: never };
    }
  }
  const got = ours.filter((h): h is { gain: number; bytes: number } => h !== null);
  return {
    percent: runs[0].sizesPercent[i],
    oursBytes: got.length ? got.reduce((a, h) => a + h.bytes, 0) / got.length : null,
    oursGain: stat(got.map((h) => h.gain)),
    minGainOk,
    closest,
    holds: holds && got.length === runs.length,
  };
}

const COMPRESSED = ['fleetSvd', 'fleetAuto', 'fleetAutoCalib', 'fleetAutoMatch', 'fleetAutoMatchBias', 'fleetAutoSeq', 'topK', 'lastLayer', 'denseInt8', 'denseInt4'];

export function aggregate(runs: PaperResult[], headlinePercent = 0.5, headlineGain = 9): Aggregate {
  if (runs.length === 0) throw new Error('no runs to aggregate');
  const r0 = runs[0];
  const headlineIndex = r0.sizesPercent.reduce((best, p, i) => (p <= headlinePercent + 1e-12 ? i : best), -1);
  const sections: PrecisionSummary[] = [];
  const headline: Aggregate['headline'] = {};
  for (const s0 of r0.sections) {
    const prec = s0.precision;
    const rowOf = (r: PaperResult, key: string): MethodRow => r.sections.find((s) => s.precision === prec)!.rows.find((row) => row.key === key)!;
    const oursCurves = runs.map((r) => curveOf(rowOf(r, OURS), r.baseAccuracyField));
    const targets = runs.map((r) => 100 * r.gainFraction * (r.fullFineTuneAccuracy - r.baseAccuracyField));
    const oursNeed = oursCurves.map((c, k) => bytesToReach(c, targets[k]));
    const oursAtHeadline = runs.map((r) => {
      const row = rowOf(r, OURS);
      const a = headlineIndex >= 0 ? row.accuracy[headlineIndex] : null;
      return a === null ? null : { gain: 100 * (a - r.baseAccuracyField), bytes: row.bytes[headlineIndex]! };
    });
    const methods: MethodSummary[] = s0.rows.map((row0) => {
      const rows = runs.map((r) => rowOf(r, row0.key));
      const fixed = row0.ownBytes !== null;
      const gain = r0.sizesPercent.map((_, i) => stat(rows.flatMap((row, k) => (row.accuracy[i] === null ? [] : [100 * (row.accuracy[i]! - runs[k].baseAccuracyField)]))));
      const bytes = r0.sizesPercent.map((_, i) => stat(rows.flatMap((row) => (row.bytes[i] === null ? [] : [row.bytes[i]!])))?.mean ?? null);
      const curves = rows.map((row, k) => curveOf(row, runs[k].baseAccuracyField));
      const perSeed = curves.map((c, k) => bytesToReach(c, targets[k]));
      const ratios = perSeed.flatMap((n, k) => (n.bytes !== null && oursNeed[k].bytes !== null ? [n.bytes / oursNeed[k].bytes!] : []));
      const hPerSeed = curves.map((c, k) => (oursAtHeadline[k] ? bytesToReach(c, oursAtHeadline[k]!.gain) : { bytes: null, atMost: false }));
      const hRatios = hPerSeed.flatMap((n, k) => (n.bytes !== null && oursAtHeadline[k] ? [n.bytes / oursAtHeadline[k]!.bytes] : []));
      return {
        key: row0.key,
        label: row0.label,
        fixed,
        gain,
        bytes,
        ownBytes: fixed ? stat(rows.map((row) => row.ownBytes!))!.mean : null,
        ownGain: fixed ? stat(rows.map((row, k) => 100 * (row.ownAccuracy! - runs[k].baseAccuracyField))) : null,
        toTarget: { perSeed, bytes: stat(perSeed.flatMap((n) => (n.bytes === null ? [] : [n.bytes]))), reachedIn: perSeed.filter((n) => n.bytes !== null).length, ratio: stat(ratios) },
        toHeadline: { perSeed: hPerSeed, bytes: stat(hPerSeed.flatMap((n) => (n.bytes === null ? [] : [n.bytes]))), reachedIn: hPerSeed.filter((n) => n.bytes !== null).length, ratio: stat(hRatios) },
      };
    });
    sections.push({ precision: prec, methods });
    const oursGain = stat(oursAtHeadline.flatMap((h) => (h ? [h.gain] : [])));
    const minGainOk = oursAtHeadline.every((h) => h !== null && h.gain >= headlineGain);
    const othersAt2x: Record<string, boolean | null> = {};
    for (const m of methods) {
      if (!COMPRESSED.includes(m.key)) continue;
      // Every seed: the method never reaches ours' gain, or needs at least 2× ours' bytes.
      othersAt2x[m.key] = m.toHeadline.perSeed.every((n, k) => n.bytes === null || (oursAtHeadline[k] !== null && n.bytes >= 2 * oursAtHeadline[k]!.bytes));
    }
    headline[prec] = {
      oursGain,
      oursBytes: oursAtHeadline[0]?.bytes ?? null,
      minGainOk,
      othersAt2x,
      holds: minGainOk && Object.values(othersAt2x).every((v) => v === true),
    };
  }
  const headlineBySize: Record<string, HeadlineAtSize[]> = {};
  for (const s0 of r0.sections) {
    headlineBySize[s0.precision] = r0.sizesPercent.flatMap((p, i) => (p <= headlinePercent + 1e-12 ? [headlineAt(runs, s0.precision, i, headlineGain)] : []));
  }
  const st = (f: (r: PaperResult) => number): Stat => stat(runs.map(f))!;
  return {
    seeds: runs.map((r) => r.config.seed),
    runs,
    sizesPercent: r0.sizesPercent,
    sizesBytes: r0.sizesBytes,
    modelBytes: r0.modelBytes,
    modelParams: r0.modelParams,
    baseOriginal: st((r) => 100 * r.baseAccuracyOriginal),
    baseField: st((r) => 100 * r.baseAccuracyField),
    fullFineTune: st((r) => 100 * r.fullFineTuneAccuracy),
    fullGain: st((r) => 100 * (r.fullFineTuneAccuracy - r.baseAccuracyField)),
    gainFraction: r0.gainFraction,
    headlinePercent,
    headlineIndex,
    sections,
    headline,
    headlineBySize,
  };
}

const r2 = (x: number): number => Math.round(x * 100) / 100;
const sj = (s: Stat | null): unknown => (s ? { mean: r2(s.mean), sd: r2(s.sd), min: r2(s.min), max: r2(s.max), n: s.n } : null);

/** The one JSON line of figures. */
export function aggregateJson(a: Aggregate, wallSeconds: number): Record<string, unknown> {
  const sections: Record<string, unknown> = {};
  for (const s of a.sections) {
    sections[s.precision] = Object.fromEntries(
      s.methods.map((m) => [
        m.key,
        {
          gainBySize: Object.fromEntries(a.sizesPercent.map((p, i) => [`${p}%`, sj(m.gain[i])])),
          bytesBySize: Object.fromEntries(a.sizesPercent.map((p, i) => [`${p}%`, m.bytes[i] === null ? null : Math.round(m.bytes[i]!)])),
          ...(m.fixed ? { ownBytes: m.ownBytes, ownGain: sj(m.ownGain) } : {}),
          bytesFor90: sj(m.toTarget.bytes),
          reachedIn: m.toTarget.reachedIn,
          ratioToOurs: sj(m.toTarget.ratio),
          bytesForOursHeadlineGain: sj(m.toHeadline.bytes),
          headlineRatioToOurs: sj(m.toHeadline.ratio),
        },
      ]),
    );
  }
  return {
    seeds: a.seeds,
    modelBytes: a.modelBytes,
    modelParams: a.modelParams,
    baseOriginal: sj(a.baseOriginal),
    baseField: sj(a.baseField),
    fullFineTune: sj(a.fullFineTune),
    fullGain: sj(a.fullGain),
    gainFraction: a.gainFraction,
    sizesPercent: a.sizesPercent,
    sizesBytes: a.sizesBytes,
    methods: sections,
    headline: Object.fromEntries(Object.entries(a.headline).map(([k, h]) => [k, { ...h, oursGain: sj(h.oursGain) }])),
    headlineBySize: Object.fromEntries(
      Object.entries(a.headlineBySize).map(([k, hs]) => [
        k,
        hs.map((h) => ({
          percent: h.percent,
          oursBytes: h.oursBytes === null ? null : Math.round(h.oursBytes),
          oursGain: sj(h.oursGain),
          minGainOk: h.minGainOk,
          closest: h.closest ? { key: h.closest.key, ratio: sj(h.closest.ratio), neverIn: h.closest.neverIn } : null,
          holds: h.holds,
        })),
      ]),
    ),
    perSeedWallSeconds: a.runs.map((r) => r.wallSeconds.total),
    wallSeconds,
  };
}
