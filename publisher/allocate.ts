import { BYTES_PER_VALUE, denseBytes, entryOverhead, type Quant } from './quantize.ts';

/** A changed matrix (2-D or reshaped conv kernel) that may travel as factors or dense. */
export interface MatrixItem {
  name: string;
  shape: number[];
  m: number;
  n: number;
  /** ||ΔW||_F². */
  energy: number;
}

/** A changed tensor that can only travel dense (1-D: biases, norms). */
export interface DenseItem {
  name: string;
  shape: number[];
  count: number;
  energy: number;
}

/** One decision of the greedy allocation, in the order taken. */
export type Take = { kind: 'triplet'; name: string } | { kind: 'dense'; name: string };

export type Choice = { kind: 'low-rank'; rank: number } | { kind: 'dense' };

/** The plan after the first `n` takes. */
export function planOf(takes: readonly Take[], n = takes.length): Map<string, Choice> {
  const plan = new Map<string, Choice>();
  for (const t of takes.slice(0, n)) {
    if (t.kind === 'dense') plan.set(t.name, { kind: 'dense' });
    else {
      const c = plan.get(t.name);
      plan.set(t.name, { kind: 'low-rank', rank: c?.kind === 'low-rank' ? c.rank + 1 : 1 });
    }
  }
  return plan;
}

/** Relative precision of each number format: triplets smaller than this are noise. */
const NOISE_FLOOR: Record<Quant, number> = { f32: 2 ** -24, f16: 2 ** -11, int8: 1 / 254 };

interface Candidate {
  ratio: number;
  cost: number;
  gain: number;
  take: Take;
  item: MatrixItem | DenseItem;
}

/** Candidates by ratio, largest first (a binary max-heap). */
class RatioHeap {
  private readonly items: Candidate[] = [];

  push(c: Candidate): void {
    const q = this.items;
    q.push(c);
    let i = q.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (q[p].ratio >= q[i].ratio) break;
      [q[p], q[i]] = [q[i], q[p]];
      i = p;
    }
  }

  pop(): Candidate | undefined {
    const q = this.items;
    const top = q[0];
    const last = q.pop();
    if (q.length > 0 && last) {
      q[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let b = i;
        if (l < q.length && q[l].ratio > q[b].ratio) b = l;
        if (r < q.length && q[r].ratio > q[b].ratio) b = r;
        if (b === i) break;
        [q[b], q[i]] = [q[i], q[b]];
        i = b;
      }
    }
    return top;
  }
}

/**
 * Spend a byte budget where it removes the most squared error: greedily take
 * the next singular triplet (or a whole dense tensor) with the largest σ² per
 * byte, across all tensors. The first triplet of a matrix also pays the
 * entry's fixed costs; when more factors would cost as much as the dense
 * delta, the matrix's next candidate is "go dense" instead. `spectrum`
 * returns at least `k` singular values of a matrix (fewer only when
 * k > min(m, n)); it is called again with a larger k when the greedy
 * reaches the end of what it has.
 */
export async function allocateBudget(
  budget: number,
  matrices: MatrixItem[],
  denses: DenseItem[],
  quant: Quant,
  initialK: (m: MatrixItem) => number,
  spectrum: (m: MatrixItem, k: number) => Promise<Float64Array>,
): Promise<{ takes: Take[]; estimatedBytes: number }> {
  const bpv = BYTES_PER_VALUE[quant];
  const spectra = new Map<string, Float64Array>();
  const taken = new Map<string, number>();
  const takenEnergy = new Map<string, number>();
  const queue = new RatioHeap();
  const push = (c: Candidate | undefined): void => {
    if (c && c.gain > 0) queue.push(c);
  };

  const denseCostOf = (m: MatrixItem): number => denseBytes(m.m * m.n) + entryOverhead(m.name, m.shape, false);
  const factorCostOf = (m: MatrixItem, r: number): number => (r === 0 ? 0 : r * (m.m + m.n) * bpv + (quant === 'int8' ? 4 * (m.m + r) : 0) + entryOverhead(m.name, m.shape, true));

  const next = async (m: MatrixItem): Promise<Candidate | undefined> => {
    const r = taken.get(m.name) ?? 0;
    const kMax = Math.min(m.m, m.n);
    const cost = factorCostOf(m, r + 1) - factorCostOf(m, r);
    if (r + 1 > kMax || factorCostOf(m, r + 1) >= denseCostOf(m)) {
      const gain = m.energy - (takenEnergy.get(m.name) ?? 0);
      const c = denseCostOf(m) - factorCostOf(m, r);
      return { ratio: gain / c, cost: c, gain, take: { kind: 'dense', name: m.name }, item: m };
    }
    let s = spectra.get(m.name);
    if (!s || s.length <= r) {
      s = await spectrum(m, Math.min(kMax, Math.max(initialK(m), 2 * (s?.length ?? 0), r + 1)));
      spectra.set(m.name, s);
    }
    if (s.length <= r) return undefined;
    const gain = s[r] * s[r];
    // Below the precision of the factors' number format a triplet buys nothing.
    if (gain < m.energy * NOISE_FLOOR[quant] ** 2) return undefined;
    return { ratio: gain / cost, cost, gain, take: { kind: 'triplet', name: m.name }, item: m };
  };

  for (const m of matrices) push(await next(m));
  for (const d of denses) {
    const cost = denseBytes(d.count) + entryOverhead(d.name, d.shape, false);
    push({ ratio: d.energy / cost, cost, gain: d.energy, take: { kind: 'dense', name: d.name }, item: d });
  }

  let left = budget;
  const takes: Take[] = [];
  for (let c = queue.pop(); c; c = queue.pop()) {
    if (c.cost > left) continue; // does not fit; cheaper candidates elsewhere may
    left -= c.cost;
    takes.push(c.take);
    const isMatrix = 'm' in c.item;
    if (c.take.kind === 'triplet' && isMatrix) {
      taken.set(c.item.name, (taken.get(c.item.name) ?? 0) + 1);
      takenEnergy.set(c.item.name, (takenEnergy.get(c.item.name) ?? 0) + c.gain);
      push(await next(c.item as MatrixItem));
    }
  }
  return { takes, estimatedBytes: budget - left };
}
