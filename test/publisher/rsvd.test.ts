import { describe, it, expect } from 'vitest';
import { exactSvd, frobeniusNorm2, lowRankError2, randomizedSvd, type TruncatedSvd } from '../../publisher/rsvd.ts';
import { mulberry32 } from '../../util/random.ts';

// ---------------------------------------------------------------------------
// Helpers (plain loops, independent of the code under test).

function randn(count: number, seed: number): Float64Array {
  const rand = mulberry32(seed);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const u1 = 1 - rand();
    const u2 = rand();
    out[i] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return out;
}

/** (m×p)·(p×n), row-major. */
function matmul(x: Float64Array, y: Float64Array, m: number, p: number, n: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let t = 0; t < p; t++) {
      const v = x[i * p + t];
      for (let j = 0; j < n; j++) c[i * n + j] += v * y[t * n + j];
    }
  }
  return c;
}

/** Exactly rank-r m×n matrix from random Gaussian factors. */
function rankR(m: number, n: number, r: number, seed: number): Float64Array {
  return matmul(randn(m * r, seed), randn(r * n, seed + 1), m, r, n);
}

/** Max |GᵀG − I| over the columns of the rows×cols row-major g. */
function orthColsError(g: Float64Array, rows: number, cols: number): number {
  let e = 0;
  for (let a = 0; a < cols; a++) {
    for (let b = 0; b < cols; b++) {
      let s = 0;
      for (let i = 0; i < rows; i++) s += g[i * cols + a] * g[i * cols + b];
      e = Math.max(e, Math.abs(s - (a === b ? 1 : 0)));
    }
  }
  return e;
}

/** Max |GGᵀ − I| over the rows of the rows×cols row-major g. */
function orthRowsError(g: Float64Array, rows: number, cols: number): number {
  let e = 0;
  for (let a = 0; a < rows; a++) {
    for (let b = 0; b < rows; b++) {
      let s = 0;
      for (let j = 0; j < cols; j++) s += g[a * cols + j] * g[b * cols + j];
      e = Math.max(e, Math.abs(s - (a === b ? 1 : 0)));
    }
  }
  return e;
}

function relErr(a: Float64Array, m: number, n: number, svd: TruncatedSvd, k: number): number {
  return Math.sqrt(lowRankError2(a, m, n, svd, k) / frobeniusNorm2(a));
}

function expectWellFormed(svd: TruncatedSvd, m: number, n: number, k: number): void {
  expect(svd.m).toBe(m);
  expect(svd.n).toBe(n);
  expect(svd.k).toBe(k);
  expect(svd.u.length).toBe(m * k);
  expect(svd.s.length).toBe(k);
  expect(svd.vt.length).toBe(k * n);
  for (const x of [...svd.u, ...svd.s, ...svd.vt]) expect(Number.isFinite(x)).toBe(true);
  for (let c = 0; c < k; c++) {
    expect(svd.s[c]).toBeGreaterThanOrEqual(0);
    if (c > 0) expect(svd.s[c]).toBeLessThanOrEqual(svd.s[c - 1]);
  }
}

// ---------------------------------------------------------------------------

describe('randomizedSvd', () => {
  it('recovers an exactly rank-r matrix with k = r', () => {
    for (const [m, n, r, seed] of [
      [120, 80, 7, 1],
      [50, 90, 5, 3],
      [200, 200, 12, 5],
    ]) {
      const a = rankR(m, n, r, seed);
      const svd = randomizedSvd(a, m, n, r);
      expectWellFormed(svd, m, n, r);
      expect(relErr(a, m, n, svd, r)).toBeLessThan(1e-10);
      const ex = exactSvd(a, m, n);
      for (let c = 0; c < r; c++) expect(Math.abs(svd.s[c] - ex.s[c])).toBeLessThan(1e-10 * ex.s[0]);
    }
  });

  it('matches the full SVD singular values on 60×40 matrices with a decaying spectrum', () => {
    const m = 60,
      n = 40;
    for (const seed of [11, 12, 13]) {
      // A = U0 diag(σ) V0ᵀ with random orthonormal U0, V0 and σ_i = 10·0.7^i.
      const basis = exactSvd(randn(m * n, seed), m, n);
      const sigma = Array.from({ length: n }, (_, i) => 10 * 0.7 ** i);
      const us = new Float64Array(m * n);
      for (let i = 0; i < m; i++) for (let c = 0; c < n; c++) us[i * n + c] = basis.u[i * n + c] * sigma[c];
      const a = matmul(us, basis.vt, m, n, n);
      const full = exactSvd(a, m, n);
      for (let c = 0; c < n; c++) expect(Math.abs(full.s[c] - sigma[c])).toBeLessThan(1e-12);
      const svd = randomizedSvd(a, m, n, 10, { seed });
      expectWellFormed(svd, m, n, 10);
      for (let c = 0; c < 10; c++) expect(Math.abs(svd.s[c] - full.s[c])).toBeLessThan(1e-8);
    }
  });

  it('returns orthonormal u columns and vt rows', () => {
    for (const [m, n, k] of [
      [60, 40, 10],
      [40, 60, 10],
      [128, 96, 32],
      [33, 17, 17],
    ]) {
      const a = randn(m * n, m + n);
      const svd = randomizedSvd(a, m, n, k);
      expectWellFormed(svd, m, n, k);
      expect(orthColsError(svd.u, m, k)).toBeLessThan(1e-10);
      expect(orthRowsError(svd.vt, k, n)).toBeLessThan(1e-10);
    }
  });

  it('is within 1 % of the exact truncation error on a rank-16-plus-noise 256×256 matrix', () => {
    const m = 256,
      n = 256,
      k = 16;
    const a = rankR(m, n, k, 21);
    const noise = randn(m * n, 23);
    for (let i = 0; i < a.length; i++) a[i] += 0.3 * noise[i];
    const exact = exactSvd(a, m, n);
    const exactErr = Math.sqrt(lowRankError2(a, m, n, exact, k));
    // Cross-check: the exact truncation error is the tail of the spectrum.
    let tail = 0;
    for (let c = k; c < exact.k; c++) tail += exact.s[c] ** 2;
    expect(Math.abs(exactErr ** 2 - tail) / tail).toBeLessThan(1e-9);
    const svd = randomizedSvd(a, m, n, k);
    const rsvdErr = Math.sqrt(lowRankError2(a, m, n, svd, k));
    expect(rsvdErr).toBeGreaterThanOrEqual(exactErr * (1 - 1e-12));
    expect(rsvdErr).toBeLessThanOrEqual(exactErr * 1.01);
    // The noise is not negligible: the check above is meaningful.
    expect(exactErr / Math.sqrt(frobeniusNorm2(a))).toBeGreaterThan(0.01);
  }, 60_000);

  it('is deterministic for a given seed', () => {
    const m = 70,
      n = 50;
    const a = randn(m * n, 31);
    const x = randomizedSvd(a, m, n, 8, { seed: 7 });
    const y = randomizedSvd(a, m, n, 8, { seed: 7 });
    expect(y.u).toEqual(x.u);
    expect(y.s).toEqual(x.s);
    expect(y.vt).toEqual(x.vt);
    const d1 = randomizedSvd(a, m, n, 8);
    const d2 = randomizedSvd(a, m, n, 8);
    expect(d2.u).toEqual(d1.u);
    const z = randomizedSvd(a, m, n, 8, { seed: 8, powerIterations: 0 });
    expect(z.u).not.toEqual(x.u);
  });

  it('handles a zero matrix', () => {
    for (const [m, n] of [
      [40, 30],
      [30, 40],
    ]) {
      const svd = randomizedSvd(new Float64Array(m * n), m, n, 5);
      expectWellFormed(svd, m, n, 5);
      expect([...svd.s]).toEqual([0, 0, 0, 0, 0]);
      expect(orthColsError(svd.u, m, 5)).toBeLessThan(1e-12);
      expect(orthRowsError(svd.vt, 5, n)).toBeLessThan(1e-12);
      expect(lowRankError2(new Float64Array(m * n), m, n, svd, 5)).toBe(0);
    }
  });

  it('handles 1×n and m×1 matrices', () => {
    for (const [m, n] of [
      [1, 37],
      [37, 1],
      [1, 1],
    ]) {
      const a = randn(m * n, 41);
      const svd = randomizedSvd(a, m, n, 4);
      expectWellFormed(svd, m, n, 1);
      expect(Math.abs(svd.s[0] - Math.sqrt(frobeniusNorm2(a)))).toBeLessThan(1e-12);
      expect(relErr(a, m, n, svd, 1)).toBeLessThan(1e-12);
      expect(orthColsError(svd.u, m, 1)).toBeLessThan(1e-12);
      expect(orthRowsError(svd.vt, 1, n)).toBeLessThan(1e-12);
    }
  });

  it('clamps k to min(m, n) and is then exact', () => {
    for (const [m, n] of [
      [30, 12],
      [12, 30],
    ]) {
      const a = randn(m * n, 51);
      const svd = randomizedSvd(a, m, n, 50, { oversample: 3 });
      expectWellFormed(svd, m, n, 12);
      expect(relErr(a, m, n, svd, 12)).toBeLessThan(1e-12);
      const ex = exactSvd(a, m, n);
      for (let c = 0; c < 12; c++) expect(Math.abs(svd.s[c] - ex.s[c])).toBeLessThan(1e-10);
      expect(orthColsError(svd.u, m, 12)).toBeLessThan(1e-10);
      expect(orthRowsError(svd.vt, 12, n)).toBeLessThan(1e-10);
    }
    expect(randomizedSvd(randn(6, 1), 2, 3, 0).k).toBe(0);
  });

  it('rejects a buffer that does not match the shape', () => {
    expect(() => randomizedSvd(new Float64Array(10), 3, 4, 2)).toThrow(RangeError);
  });
});

describe('exactSvd and error helpers', () => {
  it('factorises tall and wide matrices exactly', () => {
    for (const [m, n] of [
      [20, 9],
      [9, 20],
    ]) {
      const a = randn(m * n, 61);
      const svd = exactSvd(a, m, n);
      expectWellFormed(svd, m, n, 9);
      expect(relErr(a, m, n, svd, 9)).toBeLessThan(1e-12);
      expect(orthColsError(svd.u, m, 9)).toBeLessThan(1e-10);
      expect(orthRowsError(svd.vt, 9, n)).toBeLessThan(1e-10);
    }
  });

  it('lowRankError2 matches a direct reconstruction', () => {
    const m = 15,
      n = 11,
      k = 3;
    const a = randn(m * n, 71);
    const svd = randomizedSvd(a, m, n, 6);
    const us = new Float64Array(m * k);
    for (let i = 0; i < m; i++) for (let c = 0; c < k; c++) us[i * k + c] = svd.u[i * 6 + c] * svd.s[c];
    const approx = matmul(us, svd.vt.subarray(0, k * n), m, k, n);
    let direct = 0;
    for (let i = 0; i < a.length; i++) direct += (a[i] - approx[i]) ** 2;
    expect(Math.abs(lowRankError2(a, m, n, svd, k) - direct)).toBeLessThan(1e-12 * frobeniusNorm2(a));
    expect(lowRankError2(a, m, n, svd, 0)).toBeCloseTo(frobeniusNorm2(a), 10);
    expect(frobeniusNorm2(new Float64Array([3, 4]))).toBe(25);
  });
});
