/**
 * Randomized truncated SVD (Halko, Martinsson & Tropp 2011, Algorithms 4.4 + 5.1)
 * of a dense float64 row-major matrix, for factorising weight deltas ΔW ≈ U·diag(s)·Vᵀ.
 *
 * Layout notes. The large products run over the flat row-major `a` with
 * register-blocked loops whose inner loop is contiguous. Tall-thin matrices
 * (Ω, Y, Q, Z: m×l or n×l) are kept "column-contiguous" (stored as their l×m /
 * l×n transpose), which makes both A·Z (blocked dot products of rows of A with
 * columns of Z) and Xᵀ·A (blocked row axpys) contiguous, and lets our own thin
 * Householder QR walk columns sequentially. ml-matrix is used only for the
 * l×l SVD (and for the exact baseline); measured on 1024×1024, l = 26, its
 * `mmul` is ~5-7× slower than these loops and its `QrDecomposition` ~10×
 * slower than the column-contiguous Householder below.
 */
import { PUBLISH_DEFAULTS } from './defaults.ts';
import { Matrix, SingularValueDecomposition } from 'ml-matrix';
import { mulberry32 } from '../util/random.ts';

export interface TruncatedSvd {
  m: number;
  n: number;
  k: number;
  /** m×k row-major, orthonormal columns. */
  u: Float64Array;
  /** k singular values, descending, >= 0. */
  s: Float64Array;
  /** k×n row-major, orthonormal rows. */
  vt: Float64Array;
}

export interface RandomizedSvdOptions {
  /** Extra sample columns beyond k (default 10). */
  oversample?: number;
  /** Subspace (power) iterations, each re-orthonormalised (default 2). */
  powerIterations?: number;
  /** Seed of the Gaussian test matrix (default fixed: deterministic). */
  seed?: number;
}

const DEFAULT_SEED = 0x5eed_1234;

function checkShape(a: Float64Array, m: number, n: number): void {
  if (!Number.isInteger(m) || !Number.isInteger(n) || m < 0 || n < 0) throw new RangeError(`bad shape ${m}×${n}`);
  if (a.length !== m * n) throw new RangeError(`matrix has ${a.length} values, expected ${m}×${n} = ${m * n}`);
}

/** Standard normal deviates (Box–Muller over mulberry32). */
function gaussian(count: number, seed: number): Float64Array {
  const rand = mulberry32(seed);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i += 2) {
    const u1 = 1 - rand(); // (0, 1]
    const u2 = rand();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/**
 * Yᵀ = (A·Z)ᵀ, l×m, where A is m×n row-major and Z (n×l) is given as zt (l×n).
 * Blocked 2 rows of A × 4 columns of Z: 8 accumulators, contiguous inner loop.
 */
function mulAZ(a: Float64Array, m: number, n: number, zt: Float64Array, l: number): Float64Array {
  const y = new Float64Array(l * m);
  let i = 0;
  for (; i + 1 < m; i += 2) {
    const r0 = i * n,
      r1 = r0 + n;
    let j = 0;
    for (; j + 3 < l; j += 4) {
      const z0 = j * n,
        z1 = z0 + n,
        z2 = z1 + n,
        z3 = z2 + n;
      let s0 = 0,
        s1 = 0,
        s2 = 0,
        s3 = 0,
        t0 = 0,
        t1 = 0,
        t2 = 0,
        t3 = 0;
      for (let p = 0; p < n; p++) {
        const v = a[r0 + p],
          w = a[r1 + p];
        const q0 = zt[z0 + p],
          q1 = zt[z1 + p],
          q2 = zt[z2 + p],
          q3 = zt[z3 + p];
        s0 += v * q0;
        s1 += v * q1;
        s2 += v * q2;
        s3 += v * q3;
        t0 += w * q0;
        t1 += w * q1;
        t2 += w * q2;
        t3 += w * q3;
      }
      const y0 = j * m + i,
        y1 = y0 + m,
        y2 = y1 + m,
        y3 = y2 + m;
      y[y0] = s0;
      y[y1] = s1;
      y[y2] = s2;
      y[y3] = s3;
      y[y0 + 1] = t0;
      y[y1 + 1] = t1;
      y[y2 + 1] = t2;
      y[y3 + 1] = t3;
    }
    for (; j < l; j++) {
      const z0 = j * n;
      let s = 0,
        t = 0;
      for (let p = 0; p < n; p++) {
        const q = zt[z0 + p];
        s += a[r0 + p] * q;
        t += a[r1 + p] * q;
      }
      y[j * m + i] = s;
      y[j * m + i + 1] = t;
    }
  }
  for (; i < m; i++) {
    const r0 = i * n;
    for (let j = 0; j < l; j++) {
      const z0 = j * n;
      let s = 0;
      for (let p = 0; p < n; p++) s += a[r0 + p] * zt[z0 + p];
      y[j * m + i] = s;
    }
  }
  return y;
}

/**
 * C = Xᵀ·A, l×n row-major (= (Aᵀ·X)ᵀ), where X (m×l) is given as xt (l×m).
 * Blocked 4 rows of A × 2 rows of C: each C row pair is read and written once
 * per 4 rows of A.
 */
function mulXtA(a: Float64Array, m: number, n: number, xt: Float64Array, l: number): Float64Array {
  const c = new Float64Array(l * n);
  let i = 0;
  for (; i + 3 < m; i += 4) {
    const r0 = i * n,
      r1 = r0 + n,
      r2 = r1 + n,
      r3 = r2 + n;
    let j = 0;
    for (; j + 1 < l; j += 2) {
      const xo = j * m + i,
        xp = xo + m;
      const x0 = xt[xo],
        x1 = xt[xo + 1],
        x2 = xt[xo + 2],
        x3 = xt[xo + 3];
      const w0 = xt[xp],
        w1 = xt[xp + 1],
        w2 = xt[xp + 2],
        w3 = xt[xp + 3];
      const c0 = j * n,
        c1 = c0 + n;
      for (let p = 0; p < n; p++) {
        const a0 = a[r0 + p],
          a1 = a[r1 + p],
          a2 = a[r2 + p],
          a3 = a[r3 + p];
        c[c0 + p] += x0 * a0 + x1 * a1 + x2 * a2 + x3 * a3;
        c[c1 + p] += w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3;
      }
    }
    if (j < l) {
      const xo = j * m + i;
      const x0 = xt[xo],
        x1 = xt[xo + 1],
        x2 = xt[xo + 2],
        x3 = xt[xo + 3];
      const c0 = j * n;
      for (let p = 0; p < n; p++) c[c0 + p] += x0 * a[r0 + p] + x1 * a[r1 + p] + x2 * a[r2 + p] + x3 * a[r3 + p];
    }
  }
  for (; i < m; i++) {
    const r0 = i * n;
    for (let j = 0; j < l; j++) {
      const x = xt[j * m + i],
        c0 = j * n;
      for (let p = 0; p < n; p++) c[c0 + p] += x * a[r0 + p];
    }
  }
  return c;
}

/**
 * Apply the Householder reflector stored in v[vo+k .. vo+len) (scaled so that
 * H = I − v·vᵀ/v[vo+k]) to columns j0..j1-1 of the column-contiguous x, rows
 * k..len-1. Columns go in pairs so each pass over v serves two columns.
 */
function reflect(v: Float64Array, vo: number, vkk: number, x: Float64Array, j0: number, j1: number, k: number, len: number): void {
  let j = j0;
  for (; j + 1 < j1; j += 2) {
    const c0 = j * len,
      c1 = c0 + len;
    let s = 0,
      t = 0;
    for (let i = k; i < len; i++) {
      const w = v[vo + i];
      s += w * x[c0 + i];
      t += w * x[c1 + i];
    }
    s = -s / vkk;
    t = -t / vkk;
    for (let i = k; i < len; i++) {
      const w = v[vo + i];
      x[c0 + i] += s * w;
      x[c1 + i] += t * w;
    }
  }
  if (j < j1) {
    const c0 = j * len;
    let s = 0;
    for (let i = k; i < len; i++) s += v[vo + i] * x[c0 + i];
    s = -s / vkk;
    for (let i = k; i < len; i++) x[c0 + i] += s * v[vo + i];
  }
}

/**
 * Thin Householder QR of a len×l matrix (l <= len) stored column-contiguous
 * (column j at cols[j*len .. j*len+len)); `cols` is overwritten. Returns the
 * thin Q (len×l, column-contiguous, always orthonormal, also for rank-deficient
 * input: a zero column just skips its reflector) and, if asked, R (l×l row-major).
 */
function householderQr(cols: Float64Array, len: number, l: number, wantR = false): { q: Float64Array; r?: Float64Array } {
  const h = cols;
  const rdiag = new Float64Array(l);
  for (let k = 0; k < l; k++) {
    const ck = k * len;
    let big = 0;
    for (let i = k; i < len; i++) big = Math.max(big, Math.abs(h[ck + i]));
    if (!(big > 1e-300)) {
      // zero (or denormal) column: identity reflector
      for (let i = k; i < len; i++) h[ck + i] = 0;
      continue;
    }
    const inv = 1 / big;
    let ss = 0;
    for (let i = k; i < len; i++) {
      const v = h[ck + i] * inv;
      ss += v * v;
    }
    let nrm = big * Math.sqrt(ss);
    if (h[ck + k] < 0) nrm = -nrm;
    const invNrm = 1 / nrm;
    for (let i = k; i < len; i++) h[ck + i] *= invNrm;
    h[ck + k] += 1;
    const hkk = h[ck + k];
    reflect(h, ck, hkk, h, k + 1, l, k, len);
    rdiag[k] = -nrm;
  }
  let r: Float64Array | undefined;
  if (wantR) {
    r = new Float64Array(l * l);
    for (let i = 0; i < l; i++) {
      r[i * l + i] = rdiag[i];
      for (let j = i + 1; j < l; j++) r[i * l + j] = h[j * len + i];
    }
  }
  // Accumulate Q = H_0 ⋯ H_{l-1} applied to the first l unit vectors, backwards.
  const q = new Float64Array(l * len);
  for (let k = l - 1; k >= 0; k--) {
    const ck = k * len;
    q[ck + k] = 1;
    const hkk = h[ck + k];
    if (hkk !== 0) reflect(h, ck, hkk, q, k, l, k, len);
  }
  return { q, r };
}

function emptySvd(m: number, n: number): TruncatedSvd {
  return { m, n, k: 0, u: new Float64Array(0), s: new Float64Array(0), vt: new Float64Array(0) };
}

/**
 * Rank-k randomized SVD of the m×n row-major matrix `a`. Returns
 * k' = min(k, m, n) components. Deterministic for a given seed.
 */
export function randomizedSvd(a: Float64Array, m: number, n: number, k: number, opts: RandomizedSvdOptions = {}): TruncatedSvd {
  checkShape(a, m, n);
  const kk = Math.max(0, Math.min(Math.floor(k), m, n));
  if (kk === 0) return emptySvd(m, n);
  const oversample = Math.max(0, Math.floor(opts.oversample ?? PUBLISH_DEFAULTS.rsvdOversample));
  const q = Math.max(0, Math.floor(opts.powerIterations ?? PUBLISH_DEFAULTS.powerIterations));
  const l = Math.min(kk + oversample, m, n);

  // Stage A: an orthonormal basis Q (m×l) of the range of A (Algorithm 4.4).
  const omegaT = gaussian(l * n, opts.seed ?? DEFAULT_SEED); // Ω (n×l), column-contiguous
  let qt = householderQr(mulAZ(a, m, n, omegaT, l), m, l).q;
  for (let it = 0; it < q; it++) {
    const zt = householderQr(mulXtA(a, m, n, qt, l), n, l).q; // orth(Aᵀ Q)
    qt = householderQr(mulAZ(a, m, n, zt, l), m, l).q; // orth(A Z)
  }

  // Stage B (Algorithm 5.1): B = QᵀA (l×n). Its rows are the columns of Bᵀ,
  // so Bᵀ = Q₂R by thin QR (n×l, l×l), and only the l×l R goes to ml-matrix:
  // R = W Σ Xᵀ  ⇒  B = X Σ (Q₂W)ᵀ, U = Q·X, Vᵀ = (Q₂W)ᵀ.
  const b = mulXtA(a, m, n, qt, l);
  const { q: q2, r } = householderQr(b, n, l, true);
  const R = new Matrix(l, l);
  for (let i = 0; i < l; i++) for (let j = 0; j < l; j++) R.set(i, j, r![i * l + j]);
  const svd = new SingularValueDecomposition(R);
  const sig = svd.diagonal;
  const W = svd.leftSingularVectors; // l×l
  const X = svd.rightSingularVectors; // l×l

  const s = new Float64Array(kk);
  for (let c = 0; c < kk; c++) s[c] = Math.max(0, sig[c] ?? 0);
  // U = Q·X[:, :kk], m×kk row-major.
  const u = new Float64Array(m * kk);
  for (let j = 0; j < l; j++) {
    const cj = j * m;
    for (let c = 0; c < kk; c++) {
      const x = X.get(j, c);
      if (x === 0) continue;
      for (let i = 0; i < m; i++) u[i * kk + c] += x * qt[cj + i];
    }
  }
  // Vᵀ row c = Σ_j W[j, c]·(column j of Q₂).
  const vt = new Float64Array(kk * n);
  for (let c = 0; c < kk; c++) {
    const vo = c * n;
    for (let j = 0; j < l; j++) {
      const w = W.get(j, c);
      if (w === 0) continue;
      const cj = j * n;
      for (let p = 0; p < n; p++) vt[vo + p] += w * q2[cj + p];
    }
  }
  return { m, n, k: kk, u, s, vt };
}

/** Full (thin) SVD by ml-matrix: the baseline. Returns min(m, n) components. */
export function exactSvd(a: Float64Array, m: number, n: number): TruncatedSvd {
  checkShape(a, m, n);
  const k = Math.min(m, n);
  if (k === 0) return emptySvd(m, n);
  // ml-matrix's one-sided Golub–Kahan wants rows >= columns: factor Aᵀ when wide.
  const tall = m >= n;
  const rows = tall ? m : n,
    cols = tall ? n : m;
  const M = new Matrix(rows, cols);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      if (tall) M.set(i, j, a[i * n + j]);
      else M.set(j, i, a[i * n + j]);
    }
  }
  const svd = new SingularValueDecomposition(M);
  const L = svd.leftSingularVectors; // rows×k
  const V = svd.rightSingularVectors; // cols×cols
  const sig = svd.diagonal;
  const Um = tall ? L : V; // m×(≥k)
  const Vm = tall ? V : L; // n×(≥k)
  const u = new Float64Array(m * k);
  const vt = new Float64Array(k * n);
  const s = new Float64Array(k);
  for (let c = 0; c < k; c++) {
    s[c] = Math.max(0, sig[c]);
    for (let i = 0; i < m; i++) u[i * k + c] = Um.get(i, c);
    for (let j = 0; j < n; j++) vt[c * n + j] = Vm.get(j, c);
  }
  return { m, n, k, u, s, vt };
}

/** ||a||_F². */
export function frobeniusNorm2(a: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return s;
}

/**
 * ||A − U_k diag(s_k) Vt_k||_F², exactly (one reconstructed row at a time),
 * using the first min(k, svd.k) components of `svd`.
 */
export function lowRankError2(a: Float64Array, m: number, n: number, svd: TruncatedSvd, k: number): number {
  checkShape(a, m, n);
  if (svd.m !== m || svd.n !== n) throw new RangeError(`svd is ${svd.m}×${svd.n}, matrix is ${m}×${n}`);
  const kk = Math.max(0, Math.min(Math.floor(k), svd.k));
  const row = new Float64Array(n);
  let err = 0;
  for (let i = 0; i < m; i++) {
    row.fill(0);
    for (let c = 0; c < kk; c++) {
      const coef = svd.u[i * svd.k + c] * svd.s[c];
      if (coef === 0) continue;
      const vo = c * n;
      for (let p = 0; p < n; p++) row[p] += coef * svd.vt[vo + p];
    }
    const ro = i * n;
    for (let p = 0; p < n; p++) {
      const d = a[ro + p] - row[p];
      err += d * d;
    }
  }
  return err;
}
