import { PUBLISH_DEFAULTS } from './defaults.ts';
import { InternalError } from '../platform/errors.ts';
import { ModelDigest } from '../protocol/digest.ts';
import { elementReader } from '../protocol/dtypes.ts';
import { encodePayload, type Payload, type TensorDelta } from '../protocol/lowrank.ts';
import { applyTensor } from '../protocol/delta-apply.ts';
import { describeDelta, type DeltaKind } from '../protocol/delta-info.ts';
import { allocateBudget, planOf, type Choice, type DenseItem, type MatrixItem } from './allocate.ts';
import { BuildError } from './build-error.ts';
import { DeltaScratch, type ChangedTensor, type DeltaSource } from './delta-source.ts';
import { balanceFactors, denseBytes, encodeFactors, entryOverhead, factorBytes, PAYLOAD_OVERHEAD, type Quant } from './quantize.ts';
import { frobeniusNorm2, randomizedSvd, type TruncatedSvd } from './rsvd.ts';
import type { Metric } from './calib.ts';
import { rdDeltas, type Method } from './rd.ts';
import { refitSource } from './refit.ts';
import { chainOf, sequentialPlan } from './sequential.ts';

export type BuildMode = { kind: 'rank'; rank: number } | { kind: 'budget'; bytes: number } | { kind: 'energy'; fraction: number } | { kind: 'factors' };

export interface BuildOptions {
  source: DeltaSource;
  mode: BuildMode;
  quant: Quant;
  /** Under --budget: 'lowrank' (factors in `quant`, the default) or one rate–distortion allocation over the compact kinds (publisher/rd.ts). */
  method?: 'lowrank' | Method;
  /** Calibration (publisher/calib.ts): per weight tensor, how its output error weighs its columns. With method ≠ lowrank. */
  metrics?: Map<string, Metric>;
  /** Power iterations of the randomized SVD (default 2). */
  powerIterations?: number;
  onProgress?: (done: number, total: number, tensor: string) => void;
}

export interface TensorReport {
  name: string;
  shape: number[];
  kind: DeltaKind;
  rank: number | null;
  dtype: string;
  /** Stored data bytes (factors and scales, or dense values). */
  bytes: number;
  /** ||applied − (base + ΔW)||_F / ||ΔW||_F, as the device will build it. */
  relError: number;
}

export interface BuildReport {
  baseDigest: string;
  targetDigest: string;
  mode: BuildMode;
  quant: Quant;
  method: 'lowrank' | Method;
  calibrated: boolean;
  /** Weights re-fitted to the target's outputs (publisher/refit.ts) instead of approximating their ΔW; their relError is against ΔW. */
  refitted: string[];
  modelBytes: number;
  modelParams: number;
  updateBytes: number;
  updateParams: number;
  tensors: TensorReport[];
  unchanged: number;
}

const count = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/**
 * Build a low-rank update: factorise each changed matrix's ΔW by randomized
 * SVD (or take a LoRA adapter's factors), choose ranks by the mode, encode
 * the factors, and compute the target digest by running the device's own
 * apply on the base, tensor by tensor.
 */
export async function buildUpdate(o: BuildOptions): Promise<{ payload: Uint8Array; report: BuildReport }> {
  const src = o.source;
  const total = src.changed.length * 2;
  let done = 0;
  const tick = (name: string): void => o.onProgress?.(++done, total, name);
  const svdOf = svdCache(src, o.powerIterations ?? PUBLISH_DEFAULTS.powerIterations);
  const matrices = src.changed.filter((c) => c.info.shape.length >= 2);
  checkMode(o.mode, matrices, src);
  const plan = await planFixedMode(o, matrices, svdOf, tick);

  const method = o.method ?? 'lowrank';
  if (method !== 'lowrank' && o.mode.kind !== 'budget') throw new BuildError('bad-options', `--method ${method} needs --budget (it allocates one budget across tensors and methods)`);
  if (o.metrics && method === 'lowrank') throw new BuildError('bad-options', '--calib needs --method auto, mixed or sign (the plain low-rank build minimises weight error)');
  let deltas: TensorDelta[];
  let refitted: string[] = [];
  if (o.mode.kind === 'budget' && method !== 'lowrank') ({ deltas, refitted } = await buildRd(o, o.mode.bytes, method, tick));
  else if (o.mode.kind === 'budget') deltas = await buildLowRankBudget(o, o.mode.bytes, svdOf, tick);
  else deltas = await encodeDeltas(src, plan, o.quant, svdOf);

  const { baseDigest, targetDigest, reports } = await digestPass(src, deltas, tick);
  // The model digest of the format (for ONNX, the tensors' digest bound to the graph's hash).
  const payload: Payload = { v: 1, base: src.base.digestOf(baseDigest), target: src.base.digestOf(targetDigest), tensors: deltas };
  const bytes = encodePayload(payload);
  if (o.mode.kind === 'budget' && bytes.byteLength > o.mode.bytes) throw new InternalError('budget-exceeded', 'internal: budget exceeded after the digest pass');
  return {
    payload: bytes,
    report: {
      baseDigest: payload.base,
      targetDigest: payload.target,
      mode: o.mode,
      quant: o.quant,
      method,
      calibrated: o.metrics !== undefined,
      refitted,
      modelBytes: src.base.fileSize,
      modelParams: src.base.tensors.reduce((a, t) => a + count(t.shape), 0),
      updateBytes: bytes.byteLength,
      updateParams: deltas.reduce((a, d) => a + describeDelta(d).params, 0),
      tensors: reports,
      unchanged: src.base.tensors.length - src.changed.length,
    },
  };
}

type SvdOf = (c: ChangedTensor, k: number) => Promise<TruncatedSvd>;

/** The truncated SVD of a changed tensor's ΔW with at least k triplets, computed once per tensor (again only for more). */
function svdCache(src: DeltaSource, powerIterations: number): SvdOf {
  const svds = new Map<string, TruncatedSvd>();
  const scratch = new DeltaScratch();
  return async (c, k) => {
    const have = svds.get(c.info.name);
    if (have && have.k >= Math.min(k, c.m, c.n)) return have;
    const d = await src.delta(c, scratch.get(c.m * c.n));
    const svd = randomizedSvd(d, c.m, c.n, k, { powerIterations, seed: 1 });
    svds.set(c.info.name, svd);
    return svd;
  };
}

/** Per tensor, rank or dense under --rank, --energy or factors mode (1-D tensors dense); empty under --budget. */
async function planFixedMode(o: BuildOptions, matrices: ChangedTensor[], svdOf: SvdOf, tick: (name: string) => void): Promise<Map<string, Choice>> {
  const plan = new Map<string, Choice>();
  const denseCost = (c: ChangedTensor): number => denseBytes(c.m * c.n);
  const mode = o.mode;
  if (mode.kind === 'budget') return plan;
  for (const c of matrices) {
    if (mode.kind === 'rank') {
      const r = mode.rank;
      if (r >= Math.min(c.m, c.n) || factorBytes(c.m, c.n, r, o.quant) >= denseCost(c)) plan.set(c.info.name, { kind: 'dense' });
      else {
        await svdOf(c, r);
        plan.set(c.info.name, { kind: 'low-rank', rank: r });
      }
    } else if (mode.kind === 'energy') {
      plan.set(c.info.name, await chooseByEnergy(c, mode.fraction, o.quant, svdOf, o.source));
    } else {
      // A tensor without factors (one a LoRA adapter saved whole) is sent as it is: dense.
      const r = c.factors?.rank ?? Infinity;
      plan.set(c.info.name, factorBytes(c.m, c.n, r, o.quant) >= denseCost(c) ? { kind: 'dense' } : { kind: 'low-rank', rank: r });
    }
    tick(c.info.name);
  }
  for (const c of o.source.changed) if (c.info.shape.length < 2) plan.set(c.info.name, { kind: 'dense' });
  return plan;
}

/**
 * --method auto|mixed|sign|dense: one rate–distortion allocation (publisher/rd.ts); with cross
 * statistics, also the plan that re-fits those layers to the target's outputs
 * (publisher/refit.ts), and with a chain the sequential plan (publisher/sequential.ts); the
 * lower output error wins (exact on the calibration samples when they cover every changed
 * tensor, else estimated).
 */
async function buildRd(o: BuildOptions, budget: number, method: Method, tick: (name: string) => void): Promise<{ deltas: TensorDelta[]; refitted: string[] }> {
  const src = o.source;
  const rd = { method, metrics: o.metrics ?? new Map<string, Metric>(), powerIterations: o.powerIterations ?? PUBLISH_DEFAULTS.powerIterations, onAnalysed: tick };
  const candidates: { deltas: TensorDelta[]; error: number; refitted: string[] }[] = [];
  const usual = await rdDeltas(src, budget, rd);
  if (usual) candidates.push({ ...usual, refitted: [] });
  const refit = await refitSource(src, rd.metrics);
  if (refit) {
    const other = await rdDeltas(refit.source, budget, { ...rd, onAnalysed: undefined });
    if (other) candidates.push({ deltas: other.deltas, error: other.error + refit.residual, refitted: refit.refitted.filter((n) => other.deltas.some((d) => d.name === n)) });
  }
  const chain = await chainOf(src, rd.metrics);
  const seq = chain && (await sequentialPlan(src, budget, rd, chain));
  if (seq) candidates.push(seq);
  if (candidates.length === 0) throw new BuildError('budget-too-small', `a budget of ${budget} bytes cannot hold even the smallest update (${smallestUpdate(src, o.quant)} bytes)`);
  // With the calibration samples covering every changed tensor, plans are compared by their exact output error on them; else by the estimates.
  const scores = chain?.covers ? await Promise.all(candidates.map((c) => chain.exact(c.deltas))) : candidates.map((c) => c.error);
  const best = scores.indexOf(Math.min(...scores));
  return { deltas: candidates[best].deltas, refitted: candidates[best].refitted };
}

/** --budget with low-rank factors: ranks allocated across tensors (publisher/allocate.ts); the last (least valuable) takes dropped until the CBOR fits. */
async function buildLowRankBudget(o: BuildOptions, budget: number, svdOf: SvdOf, tick: (name: string) => void): Promise<TensorDelta[]> {
  const src = o.source;
  const items: MatrixItem[] = [];
  const denses: DenseItem[] = [];
  const scratch = new DeltaScratch();
  for (const c of src.changed) {
    const energy = frobeniusNorm2(await src.delta(c, scratch.get(c.m * c.n)));
    if (c.info.shape.length >= 2) items.push({ name: c.info.name, shape: c.info.shape, m: c.m, n: c.n, energy });
    else denses.push({ name: c.info.name, shape: c.info.shape, count: c.m * c.n, energy });
    tick(c.info.name);
  }
  const byName = new Map(src.changed.map((c) => [c.info.name, c]));
  const perTriplet = (m: MatrixItem): number => (m.m + m.n) * 4;
  const share = (budget - PAYLOAD_OVERHEAD) / Math.max(1, items.length);
  const { takes } = await allocateBudget(
    budget - PAYLOAD_OVERHEAD,
    items,
    denses,
    o.quant,
    (m) => Math.min(Math.min(m.m, m.n), Math.max(8, Math.ceil((2 * share) / perTriplet(m)))),
    async (m, k) => (await svdOf(byName.get(m.name)!, k)).s,
  );
  const tooSmall = (): BuildError => new BuildError('budget-too-small', `a budget of ${budget} bytes cannot hold even the smallest update (${smallestUpdate(src, o.quant)} bytes)`);
  if (takes.length === 0) throw tooSmall();
  let deltas = await encodeDeltas(src, planOf(takes), o.quant, svdOf);
  for (let n = takes.length; encodePayload({ v: 1, base: baseDigestPlaceholder, target: baseDigestPlaceholder, tensors: deltas }).byteLength > budget;) {
    if (--n <= 0) throw tooSmall();
    deltas = await encodeDeltas(src, planOf(takes, n), o.quant, svdOf);
  }
  return deltas;
}

/** The device's own apply, tensor by tensor: the base and target digests, and per delta the relative error it leaves against ΔW. */
async function digestPass(src: DeltaSource, deltas: TensorDelta[], tick: (name: string) => void): Promise<{ baseDigest: string; targetDigest: string; reports: TensorReport[] }> {
  const byName = new Map(deltas.map((d) => [d.name, d]));
  const changedByName = new Map(src.changed.map((c) => [c.info.name, c]));
  const baseDigest = new ModelDigest();
  const targetDigest = new ModelDigest();
  const reports: TensorReport[] = [];
  // One buffer each for the base's bytes, the applied bytes and ΔW, reused tensor after tensor (the digests keep nothing).
  const largest = src.base.tensors.reduce((a, t) => Math.max(a, t.end - t.begin), 0);
  const [readBuf, applyBuf] = [new Uint8Array(largest), new Uint8Array(largest)];
  const scratch = new DeltaScratch();
  for (const t of src.base.tensors) {
    const bytes = await src.base.read(t, readBuf);
    baseDigest.addTensor(t, bytes);
    const delta = byName.get(t.name);
    const applied = delta ? applyTensor(t, bytes, delta, applyBuf) : bytes;
    targetDigest.addTensor(t, applied);
    const c = changedByName.get(t.name);
    if (!c) continue;
    const want = await src.delta(c, scratch.get(c.m * c.n));
    // Read in place: decoded copies of base and applied would be two more arrays of doubles per tensor.
    const bv = elementReader(bytes, t.dtype);
    const av = delta ? elementReader(applied, t.dtype) : bv;
    let err2 = 0;
    let ref2 = 0;
    for (let i = 0; i < want.length; i++) {
      const e = av(i) - bv(i) - want[i];
      err2 += e * e;
      ref2 += want[i] * want[i];
    }
    if (delta) reports.push(reportOf(delta, Math.sqrt(err2 / (ref2 || 1))));
    tick(t.name);
  }
  return { baseDigest: baseDigest.digest(), targetDigest: targetDigest.digest(), reports };
}

const baseDigestPlaceholder = '0'.repeat(64);

function checkMode(mode: BuildMode, matrices: ChangedTensor[], src: DeltaSource): void {
  if (src.changed.length === 0) throw new BuildError('mismatched-models', 'the base and target are identical: there is nothing to update');
  if (mode.kind === 'rank') {
    if (!Number.isInteger(mode.rank) || mode.rank < 1) throw new BuildError('bad-rank', `rank ${mode.rank}: the rank must be a whole number of at least 1`);
    const largest = matrices.reduce<ChangedTensor | undefined>((best, c) => (!best || Math.min(c.m, c.n) > Math.min(best.m, best.n) ? c : best), undefined);
    if (largest && mode.rank > Math.min(largest.m, largest.n)) {
      throw new BuildError('bad-rank', `rank ${mode.rank} is above min(m, n) = ${Math.min(largest.m, largest.n)} of the largest changed matrix, ${largest.info.name} [${largest.info.shape}]`);
    }
  }
  if (mode.kind === 'energy' && !(mode.fraction > 0 && mode.fraction <= 1)) {
    throw new BuildError('bad-energy', `energy ${mode.fraction}: the fraction of ||ΔW||² to keep must be in (0, 1]`);
  }
}

/** Smallest r keeping the fraction of ||ΔW||²; dense when those factors would cost as much. */
async function chooseByEnergy(c: ChangedTensor, fraction: number, quant: Quant, svdOf: (c: ChangedTensor, k: number) => Promise<TruncatedSvd>, src: DeltaSource): Promise<Choice> {
  const kMax = Math.min(c.m, c.n);
  const dense = denseBytes(c.m * c.n);
  const want = fraction * frobeniusNorm2(await src.delta(c)) * (1 - 1e-12);
  for (let k = Math.min(16, kMax); ; k = Math.min(kMax, k * 2)) {
    const svd = await svdOf(c, k);
    let kept = 0;
    for (let r = 1; r <= svd.k; r++) {
      kept += svd.s[r - 1] * svd.s[r - 1];
      if (kept >= want) return factorBytes(c.m, c.n, r, quant) < dense ? { kind: 'low-rank', rank: r } : { kind: 'dense' };
    }
    if (k >= kMax || factorBytes(c.m, c.n, k, quant) >= dense) return { kind: 'dense' };
  }
}

async function encodeDeltas(src: DeltaSource, plan: Map<string, Choice>, quant: Quant, svdOf: (c: ChangedTensor, k: number) => Promise<TruncatedSvd>): Promise<TensorDelta[]> {
  const out: TensorDelta[] = [];
  for (const c of src.changed) {
    const choice = plan.get(c.info.name);
    if (!choice) continue;
    const shape = c.info.shape.slice();
    if (choice.kind === 'dense') {
      const d = await src.delta(c);
      const f = new Float32Array(d.length);
      for (let i = 0; i < d.length; i++) f[i] = d[i];
      out.push({ name: c.info.name, shape, dense: new Uint8Array(f.buffer) });
    } else if (c.factors && choice.rank === c.factors.rank) {
      out.push(encodeFactors(c.info.name, shape, c.factors.u, c.factors.v, c.m, c.n, choice.rank, quant));
    } else {
      const svd = await svdOf(c, choice.rank);
      const { u, v } = balanceFactors(svd.u, svd.s, svd.vt, c.m, c.n, svd.k, choice.rank);
      out.push(encodeFactors(c.info.name, shape, u, v, c.m, c.n, choice.rank, quant));
    }
  }
  return out;
}

function reportOf(d: TensorDelta, relError: number): TensorReport {
  const x = describeDelta(d);
  return { name: d.name, shape: d.shape, kind: x.kind, rank: x.rank, dtype: x.dtype, bytes: x.bytes, relError };
}

/** The smallest update that changes anything: one rank-1 factor pair or one dense tensor. */
function smallestUpdate(src: DeltaSource, quant: Quant): number {
  let best = Infinity;
  for (const c of src.changed) {
    const lr = c.info.shape.length >= 2 ? factorBytes(c.m, c.n, 1, quant) + entryOverhead(c.info.name, c.info.shape, true) : Infinity;
    best = Math.min(best, lr, denseBytes(c.m * c.n) + entryOverhead(c.info.name, c.info.shape, false));
  }
  return PAYLOAD_OVERHEAD + best;
}
