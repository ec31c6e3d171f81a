/**
 * Benchmark: randomized truncated SVD vs ml-matrix's full SVD on a 1024×1024
 * weight delta ΔW = (1024×16)·(16×1024) + Gaussian noise.
 *
 *   npx tsx bench/rsvd.ts
 *
 * Ends with one JSON line:
 *   {"rsvdSeconds":…,"fullSvdSeconds":…,"speedup":…,"rsvdRelErr":…,"fullSvdRelErr":…}
 * Targets: speedup >= 30 and rsvdRelErr <= 1.01 · fullSvdRelErr.
 */
import { pathToFileURL } from 'node:url';
import { exactSvd, frobeniusNorm2, lowRankError2, randomizedSvd } from '../publisher/rsvd.ts';
import { mulberry32 } from '../util/random.ts';

export interface RsvdBenchResult {
  rsvdSeconds: number;
  fullSvdSeconds: number;
  speedup: number;
  rsvdRelErr: number;
  fullSvdRelErr: number;
}

const M = 1024,
  N = 1024,
  RANK = 16;
/**
 * Entries of the rank-16 part have variance 16; noise of std 0.12 puts the
 * rank-16 truncation error at ≈ 0.12/4 ≈ 3 % of ||ΔW||_F.
 */
const NOISE = 0.12;

function randn(count: number, rand: () => number): Float64Array {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - rand()));
    const t = 2 * Math.PI * rand();
    out[i] = r * Math.cos(t);
    if (i + 1 < count) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

/** The benchmark ΔW (m×n, row-major), reproducible. */
export function makeDelta(m = M, n = N, rank = RANK, noise = NOISE, seed = 2024): Float64Array {
  const rand = mulberry32(seed);
  const x = randn(m * rank, rand);
  const y = randn(rank * n, rand);
  const w = randn(m * n, rand);
  for (let i = 0; i < w.length; i++) w[i] *= noise;
  for (let i = 0; i < m; i++) {
    for (let t = 0; t < rank; t++) {
      const v = x[i * rank + t];
      const yo = t * n,
        wo = i * n;
      for (let j = 0; j < n; j++) w[wo + j] += v * y[yo + j];
    }
  }
  return w;
}

function seconds(t0: number): number {
  return (performance.now() - t0) / 1000;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/**
 * Wall time of randomizedSvd on `a` at rank k: the first (cold) call and the
 * median of `reps` further calls.
 */
export function timeRsvd(a: Float64Array, m: number, n: number, k: number, reps = 3): { cold: number; warm: number } {
  let t0 = performance.now();
  randomizedSvd(a, m, n, k, { powerIterations: 2 });
  const cold = seconds(t0);
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    t0 = performance.now();
    randomizedSvd(a, m, n, k, { powerIterations: 2 });
    times.push(seconds(t0));
  }
  return { cold, warm: median(times) };
}

/** rsvd (k = 16, q = 2) vs ml-matrix's full SVD on the 1024×1024 ΔW. */
export async function benchRsvd(log: (line: string) => void = console.log): Promise<RsvdBenchResult> {
  const a = makeDelta();
  const norm2 = frobeniusNorm2(a);

  const { cold, warm } = timeRsvd(a, M, N, RANK);
  const rsvd = randomizedSvd(a, M, N, RANK, { powerIterations: 2 });
  const rsvdRelErr = Math.sqrt(lowRankError2(a, M, N, rsvd, RANK) / norm2);
  log(`rsvd k=${RANK} q=2: ${(warm * 1000).toFixed(1)} ms (median of 3 warm; first call ${(cold * 1000).toFixed(1)} ms), rel err ${rsvdRelErr.toExponential(6)}`);

  log('ml-matrix full SVD of 1024×1024 (one run, ~1 min)…');
  const t0 = performance.now();
  const full = exactSvd(a, M, N);
  const fullSvdSeconds = seconds(t0);
  const fullSvdRelErr = Math.sqrt(lowRankError2(a, M, N, full, RANK) / norm2);
  log(`full SVD: ${fullSvdSeconds.toFixed(2)} s, rank-${RANK} rel err ${fullSvdRelErr.toExponential(6)}`);
  let maxDs = 0;
  for (let c = 0; c < RANK; c++) maxDs = Math.max(maxDs, Math.abs(rsvd.s[c] - full.s[c]) / full.s[0]);
  log(`max |s_rsvd − s_full| / s_1 over the top ${RANK}: ${maxDs.toExponential(3)}`);

  const speedup = fullSvdSeconds / warm;
  log(`speedup ${speedup.toFixed(1)}× (target >= 30), error ratio ${(rsvdRelErr / fullSvdRelErr).toFixed(6)} (target <= 1.01)`);
  return { rsvdSeconds: warm, fullSvdSeconds, speedup, rsvdRelErr, fullSvdRelErr };
}

async function main(): Promise<void> {
  const a = makeDelta();
  for (const k of [16, 32, 64]) {
    const { cold, warm } = timeRsvd(a, M, N, k);
    console.log(`rsvd 1024×1024 k=${k}: ${(warm * 1000).toFixed(1)} ms (first call ${(cold * 1000).toFixed(1)} ms)`);
  }
  const result = await benchRsvd();
  console.log(JSON.stringify(result));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}
