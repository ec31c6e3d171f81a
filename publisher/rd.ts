/**
 * One rate–distortion allocation across all changed tensors and methods (fleet build
 * --method auto|mixed|sign|dense): every tensor is in one state — skipped, mixed-precision
 * factors (the first r8 singular triplets at 8 bits, the next r4 at 4, the next r2 at 2),
 * sign + scales, or dense f32 — and the builder greedily takes, across all tensors, the
 * move (add a triplet, raise a triplet's bits, switch to sign or dense) that removes the
 * most estimated error per byte among those that still fit, until none does. Errors are
 * squared, in weight space or, with calibration, in output space (‖E·L‖², G = L·Lᵀ).
 */
import { packedBytes, type MixedBits } from '../protocol/compact.ts';
import { encodePayload, type TensorDelta } from '../protocol/lowrank.ts';
import { rowWeight, unwhitenRow, weighted, whiten, type Metric } from './calib.ts';
import { encodeMixed, encodeSign, quantizeVector, type TripletVectors } from './compact-encode.ts';
import { DeltaScratch, type ChangedTensor, type DeltaSource } from './delta-source.ts';
import { denseBytes, entryOverhead, PAYLOAD_OVERHEAD } from './quantize.ts';
import { frobeniusNorm2, randomizedSvd } from './rsvd.ts';

export type Method = 'auto' | 'mixed' | 'sign' | 'dense';

type State = { kind: 'skip' } | { kind: 'ladder'; r8: number; r4: number; r2: number } | { kind: 'sign' } | { kind: 'dense' };

interface Triplet {
  sigma2: number;
  a: Float64Array;
  b: Float64Array;
  err: Record<MixedBits, number>;
}

interface Item {
  c: ChangedTensor;
  metric: Metric;
  /** Squared error of skipping the tensor (weighted). */
  energy: number;
  state: State;
  /** Mixed ladder: the triplets computed so far, and whether more exist. */
  triplets?: Triplet[];
  kMax: number;
  /** Sign: fitted f32 scales and the squared error they leave. */
  sign?: { scales: Float64Array; err: number };
}

/** CBOR bytes of one mixed group apart from its data (keys, rank, bits, headers), about; the encode-and-check loop of build.ts makes up for any shortfall. */
const GROUP_OVERHEAD = 40;
const BITS: readonly MixedBits[] = [8, 4, 2];

function ladderBytes(it: Item, s: { r8: number; r4: number; r2: number }): number {
  const { m, n } = it.c;
  let bytes = entryOverhead(it.c.info.name, it.c.info.shape, true);
  for (const [c, b] of [
    [s.r8, 8],
    [s.r4, 4],
    [s.r2, 2],
  ] as const) {
    if (c > 0) bytes += GROUP_OVERHEAD + packedBytes(m * c, b) + packedBytes(c * n, b) + 8 * c;
  }
  return bytes;
}

function bytesOf(it: Item, s: State): number {
  if (s.kind === 'skip') return 0;
  if (s.kind === 'dense') return denseBytes(it.c.m * it.c.n) + entryOverhead(it.c.info.name, it.c.info.shape, false);
  if (s.kind === 'sign') return packedBytes(it.c.m * it.c.n, 1) + 4 * it.c.m + entryOverhead(it.c.info.name, it.c.info.shape, false) + 16;
  return ladderBytes(it, s);
}

function errorOf(it: Item, s: State): number {
  if (s.kind === 'skip') return it.energy;
  if (s.kind === 'dense') return 0;
  if (s.kind === 'sign') return it.sign!.err;
  let e = it.energy;
  const t = it.triplets!;
  for (let k = 0; k < s.r8 + s.r4 + s.r2; k++) e += t[k].err[k < s.r8 ? 8 : k < s.r8 + s.r4 ? 4 : 2] - t[k].sigma2;
  return Math.max(0, e);
}

/** ‖(ã·b̃ᵀ − a·bᵀ)·L‖² for a quantised triplet, exactly. */
function tripletError(a: Float64Array, b: Float64Array, bw: Float64Array, bits: MixedBits, metric: Metric, m: number): number {
  const qa = quantizeVector(a, bits).values;
  const qbw = whiten(quantizeVector(b, bits).values, 1, metric);
  let aa = 0,
    qq = 0,
    aq = 0,
    bb = 0,
    pp = 0,
    bp = 0;
  for (let i = 0; i < m; i++) {
    const o = rowWeight(metric, i);
    aa += o * a[i] * a[i];
    qq += o * qa[i] * qa[i];
    aq += o * a[i] * qa[i];
  }
  for (let j = 0; j < bw.length; j++) {
    bb += bw[j] * bw[j];
    pp += qbw[j] * qbw[j];
    bp += bw[j] * qbw[j];
  }
  return Math.max(0, qq * pp - 2 * aq * bp + aa * bb);
}

/** `delta`: the tensor's ΔW if at hand, else read into `scratch` (the SVD does not keep it). */
async function computeTriplets(it: Item, src: DeltaSource, k: number, powerIterations: number, delta?: Float64Array, scratch = new DeltaScratch()): Promise<void> {
  const { m, n } = it.c;
  const y = weighted(delta ?? (await src.delta(it.c, scratch.get(m * n))), m, it.metric);
  const svd = randomizedSvd(y, m, n, k, { powerIterations, seed: 1 });
  const out: Triplet[] = [];
  for (let t = 0; t < svd.k; t++) {
    const root = Math.sqrt(svd.s[t]);
    const a = new Float64Array(m);
    for (let i = 0; i < m; i++) a[i] = (svd.u[i * svd.k + t] * root) / Math.sqrt(rowWeight(it.metric, i));
    const bw = new Float64Array(n);
    for (let j = 0; j < n; j++) bw[j] = svd.vt[t * n + j] * root;
    const b = unwhitenRow(bw, it.metric);
    const err = { 8: 0, 4: 0, 2: 0 } as Record<MixedBits, number>;
    for (const bits of BITS) err[bits] = tripletError(a, b, bw, bits, it.metric, m);
    out.push({ sigma2: svd.s[t] * svd.s[t], a, b, err });
  }
  it.triplets = out;
}

/** Per-row sign scales minimising the (weighted) squared error, and that error. */
function fitSign(delta: Float64Array, m: number, metric: Metric): { scales: Float64Array; err: number } {
  const n = metric.n;
  const scales = new Float64Array(m);
  let err = 0;
  const y = metric.kind === 'full' ? whiten(delta, m, metric) : undefined;
  for (let i = 0; i < m; i++) {
    const row = delta.subarray(i * n, (i + 1) * n);
    const sg = Float64Array.from(row, (x) => (x > 0 ? 1 : -1));
    let s: number;
    if (metric.kind === 'full') {
      const z = whiten(sg, 1, metric);
      const yr = y!.subarray(i * n, (i + 1) * n);
      let zy = 0,
        zz = 0;
      for (let j = 0; j < n; j++) {
        zy += z[j] * yr[j];
        zz += z[j] * z[j];
      }
      s = Math.fround(Math.max(0, zz > 0 ? zy / zz : 0));
      let e = 0;
      for (let j = 0; j < n; j++) e += (yr[j] - s * z[j]) ** 2;
      err += rowWeight(metric, i) * e;
    } else {
      const w = metric.kind === 'diag' ? metric.d : undefined;
      let num = 0,
        den = 0;
      for (let j = 0; j < n; j++) {
        const wj = w ? w[j] : 1;
        num += wj * Math.abs(row[j]);
        den += wj;
      }
      s = Math.fround(den > 0 ? num / den : 0);
      let e = 0;
      for (let j = 0; j < n; j++) e += (w ? w[j] : 1) * (row[j] - s * sg[j]) ** 2;
      err += rowWeight(metric, i) * e;
    }
    scales[i] = s;
  }
  return { scales, err };
}

export interface RdOptions {
  method: Method;
  metrics: Map<string, Metric>;
  powerIterations: number;
  onAnalysed?: (name: string) => void;
}

export interface RdPlan {
  items: Item[];
  /** Estimated total squared error left (weighted). */
  error: number;
  bytes: number;
}

/** Analyse every changed tensor once (SVD of the whitened delta, sign fit). */
export async function analyse(src: DeltaSource, budget: number, o: RdOptions): Promise<Item[]> {
  const items: Item[] = [];
  const matrices = src.changed.filter((c) => c.info.shape.length >= 2).length;
  const scratch = new DeltaScratch();
  for (const c of src.changed) {
    const isMatrix = c.info.shape.length >= 2;
    const metric: Metric = (isMatrix && o.metrics.get(c.info.name)) || { kind: 'none', n: c.n };
    // Not kept: the triplets and the sign scales are what the item holds.
    const delta = await src.delta(c, scratch.get(c.m * c.n));
    const energy = frobeniusNorm2(weighted(delta, c.m, metric));
    const it: Item = { c, metric, energy, state: { kind: 'skip' }, kMax: isMatrix ? Math.min(c.m, c.n) : 0 };
    if (isMatrix && (o.method === 'auto' || o.method === 'mixed')) {
      // Enough triplets for 1.5× an even share of the budget at 4 bits; the allocation asks for more if it needs them.
      const perTriplet = ((c.m + c.n) * 4) / 8 + 8;
      const k = Math.min(it.kMax, Math.max(8, Math.ceil((1.5 * budget) / Math.max(1, matrices) / perTriplet)));
      await computeTriplets(it, src, k, o.powerIterations, delta);
    }
    if (isMatrix && (o.method === 'auto' || o.method === 'sign')) it.sign = fitSign(delta, c.m, metric);
    items.push(it);
    o.onAnalysed?.(c.info.name);
  }
  return items;
}

/** The mixed ladder's moves from a state: add a triplet (2 bits, or more while no lower class exists), or raise one class boundary. */
function ladderMoves(it: Item, l: { r8: number; r4: number; r2: number }): State[] {
  const out: State[] = [];
  const r = l.r8 + l.r4 + l.r2;
  if (r < it.triplets!.length) {
    out.push({ kind: 'ladder', ...l, r2: l.r2 + 1 });
    if (l.r2 === 0) out.push({ kind: 'ladder', ...l, r4: l.r4 + 1 });
    if (l.r2 === 0 && l.r4 === 0) out.push({ kind: 'ladder', ...l, r8: l.r8 + 1 });
  }
  if (l.r4 > 0) out.push({ kind: 'ladder', ...l, r8: l.r8 + 1, r4: l.r4 - 1 });
  if (l.r2 > 0) out.push({ kind: 'ladder', ...l, r4: l.r4 + 1, r2: l.r2 - 1 });
  return out;
}

interface Point {
  state: State;
  bytes: number;
  err: number;
}

/**
 * A tensor's operating points: skip, the mixed ladder walked by its own greedy (best
 * error per byte first, until the triplets computed so far run out or it costs as much as
 * dense), sign, dense; then only the lower convex hull (each point removes error at a
 * lower rate per byte than the one before).
 */
function pointsOf(it: Item): Point[] {
  const pts: Point[] = [{ state: { kind: 'skip' }, bytes: 0, err: it.energy }];
  const dense: State = { kind: 'dense' };
  const denseCost = bytesOf(it, dense);
  if (it.triplets) {
    let l = { r8: 0, r4: 0, r2: 0 };
    let e0 = it.energy;
    let b0 = 0;
    for (;;) {
      let best: { s: State & { kind: 'ladder' }; e: number; b: number; ratio: number } | undefined;
      for (const s of ladderMoves(it, l) as Array<State & { kind: 'ladder' }>) {
        const e = errorOf(it, s);
        const b = bytesOf(it, s);
        const ratio = (e0 - e) / Math.max(1e-9, b - b0);
        if (e < e0 && (!best || ratio > best.ratio)) best = { s, e, b, ratio };
      }
      if (!best || best.b >= denseCost) break;
      pts.push({ state: best.s, bytes: best.b, err: best.e });
      l = best.s;
      e0 = best.e;
      b0 = best.b;
    }
  }
  if (it.sign) pts.push({ state: { kind: 'sign' }, bytes: bytesOf(it, { kind: 'sign' }), err: it.sign.err });
  pts.push({ state: dense, bytes: denseCost, err: 0 });
  pts.sort((a, b) => a.bytes - b.bytes || a.err - b.err);
  const hull: Point[] = [];
  for (const p of pts) {
    if (hull.length > 0 && p.err >= hull[hull.length - 1].err) continue;
    while (hull.length >= 2) {
      const a = hull[hull.length - 2];
      const b = hull[hull.length - 1];
      // b is above the segment a→p: drop it.
      if ((a.err - b.err) * (p.bytes - a.bytes) <= (a.err - p.err) * (b.bytes - a.bytes)) hull.pop();
      else break;
    }
    hull.push(p);
  }
  return hull;
}

/** The ladder of this tensor has used every triplet computed so far, and there are more. */
function exhausted(it: Item, s: State): boolean {
  return !!it.triplets && s.kind === 'ladder' && s.r8 + s.r4 + s.r2 === it.triplets.length && it.triplets.length < it.kMax;
}

/**
 * The greedy: from every tensor skipped, repeatedly move the tensor to the operating
 * point that removes the most error per extra byte among those that fit in what is left
 * (one that saves bytes and error first), until no move removes error and fits. Never
 * spends more than `budget`.
 */
export async function allocate(items: Item[], budget: number, src: DeltaSource, o: RdOptions): Promise<RdPlan> {
  const hulls = new Map<Item, Point[]>();
  for (const it of items) {
    it.state = { kind: 'skip' };
    hulls.set(it, pointsOf(it));
  }
  let left = budget;
  const scratch = new DeltaScratch();
  for (;;) {
    let best: { it: Item; p: Point; cost: number; ratio: number } | undefined;
    for (const it of items) {
      if (exhausted(it, it.state)) {
        await computeTriplets(it, src, Math.min(it.kMax, 2 * it.triplets!.length), o.powerIterations, undefined, scratch);
        hulls.set(it, pointsOf(it));
      }
      const e0 = errorOf(it, it.state);
      const b0 = bytesOf(it, it.state);
      for (const p of hulls.get(it)!) {
        const gain = e0 - p.err;
        const cost = p.bytes - b0;
        if (!(gain > 0) || cost > left) continue;
        const ratio = cost <= 0 ? Infinity : gain / cost;
        if (!best || ratio > best.ratio) best = { it, p, cost, ratio };
      }
    }
    if (!best) break;
    best.it.state = best.p.state;
    left -= best.cost;
  }
  return { items, error: items.reduce((a, it) => a + errorOf(it, it.state), 0), bytes: budget - left };
}

/** The deltas of a plan, in the order of `src.changed`. */
export async function encodePlan(plan: RdPlan, src: DeltaSource): Promise<TensorDelta[]> {
  const out: TensorDelta[] = [];
  for (const it of plan.items) {
    const s = it.state;
    const { name, shape } = it.c.info;
    if (s.kind === 'skip') continue;
    if (s.kind === 'dense') {
      const d = await src.delta(it.c);
      out.push({ name, shape: shape.slice(), dense: new Uint8Array(Float32Array.from(d).buffer) });
    } else if (s.kind === 'sign') {
      out.push(encodeSign(name, shape.slice(), await src.delta(it.c), it.sign!.scales));
    } else {
      const trips: TripletVectors[] = [];
      for (let k = 0; k < s.r8 + s.r4 + s.r2; k++) {
        const t = it.triplets![k];
        trips.push({ a: t.a, b: t.b, bits: k < s.r8 ? 8 : k < s.r8 + s.r4 ? 4 : 2 });
      }
      out.push(encodeMixed(name, shape.slice(), it.c.m, it.c.n, trips));
    }
  }
  return out;
}

const PLACEHOLDER_DIGEST = '0'.repeat(64);

/** One rate–distortion allocation of `budget` payload bytes; should the CBOR framing come out larger than estimated, allocate again for less. Undefined when nothing fits. */
export async function rdDeltas(src: DeltaSource, budget: number, rd: RdOptions): Promise<{ deltas: TensorDelta[]; error: number } | undefined> {
  const items = await analyse(src, budget - PAYLOAD_OVERHEAD, rd);
  for (let spend = budget - PAYLOAD_OVERHEAD; ;) {
    const plan = await allocate(items, spend, src, rd);
    const deltas = await encodePlan(plan, src);
    if (deltas.length === 0) return undefined;
    const size = encodePayload({ v: 1, base: PLACEHOLDER_DIGEST, target: PLACEHOLDER_DIGEST, tensors: deltas }).byteLength;
    if (size <= budget) return { deltas, error: plan.error };
    spend -= size - budget + 16;
  }
}
