/**
 * Encoding of the compact delta kinds (protocol/compact.ts): b-bit quantisation of factor
 * vectors with a fitted scale, mixed-precision groups, and sign + scales.
 */
import { packSigned, type MixedBits, type MixedDelta, type SignDelta } from '../protocol/compact.ts';

/** Fractions of max|x|/lim tried as the scale; the one with the least squared error wins. */
const SCALE_FRACTIONS = [1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3];

export interface QuantizedVector {
  q: Int32Array;
  /** The f32 scale. */
  scale: number;
  /** q · scale, as the device decodes it. */
  values: Float64Array;
}

/**
 * Quantise x to signed b-bit integers in ±(2^(b−1) − 1) with one f32 scale, chosen among
 * fractions of max|x|/lim for the least squared error (clipping the largest values
 * can pay at 2 and 4 bits).
 */
export function quantizeVector(x: Float64Array, bits: MixedBits): QuantizedVector {
  const lim = 2 ** (bits - 1) - 1;
  let max = 0;
  for (let i = 0; i < x.length; i++) max = Math.max(max, Math.abs(x[i]));
  let best: QuantizedVector = { q: new Int32Array(x.length), scale: 0, values: new Float64Array(x.length) };
  if (!(max > 0)) return best;
  let bestErr = Infinity;
  for (const f of SCALE_FRACTIONS) {
    const scale = Math.fround((f * max) / lim);
    if (!(scale > 0)) continue;
    const q = new Int32Array(x.length);
    const values = new Float64Array(x.length);
    let err = 0;
    for (let i = 0; i < x.length; i++) {
      q[i] = Math.max(-lim, Math.min(lim, Math.round(x[i] / scale)));
      values[i] = q[i] * scale;
      err += (values[i] - x[i]) ** 2;
    }
    if (err < bestErr) {
      bestErr = err;
      best = { q, scale, values };
    }
  }
  return best;
}

/** One factor pair of a mixed delta: column k of U (m values) and row k of V (n values), in weight space. */
export interface TripletVectors {
  a: Float64Array;
  b: Float64Array;
  bits: MixedBits;
}

/** A mixed delta from consecutive triplets; consecutive triplets of the same bit width form one group. */
export function encodeMixed(name: string, shape: number[], m: number, n: number, triplets: TripletVectors[]): MixedDelta {
  const mixed: MixedDelta['mixed'] = [];
  for (let s = 0; s < triplets.length;) {
    let e = s;
    while (e < triplets.length && triplets[e].bits === triplets[s].bits) e++;
    const bits = triplets[s].bits;
    const c = e - s;
    const qu = new Int32Array(m * c);
    const qv = new Int32Array(c * n);
    const su = new Float32Array(c);
    const sv = new Float32Array(c);
    for (let k = 0; k < c; k++) {
      const a = quantizeVector(triplets[s + k].a, bits);
      const b = quantizeVector(triplets[s + k].b, bits);
      for (let i = 0; i < m; i++) qu[i * c + k] = a.q[i];
      qv.set(b.q, k * n);
      su[k] = a.scale;
      sv[k] = b.scale;
    }
    mixed.push({ rank: c, bits, u: packSigned(qu, bits), v: packSigned(qv, bits), su: new Uint8Array(su.buffer), sv: new Uint8Array(sv.buffer) });
    s = e;
  }
  return { name, shape, mixed };
}

/** Sign + scales: bit 1 where ΔW > 0; scales as given (f32, one per row). */
export function encodeSign(name: string, shape: number[], delta: Float64Array, scales: Float64Array): SignDelta {
  const sign = new Uint8Array(Math.ceil(delta.length / 8));
  for (let e = 0; e < delta.length; e++) if (delta[e] > 0) sign[e >> 3] |= 1 << (e & 7);
  return { name, shape, sign, scales: new Uint8Array(Float32Array.from(scales).buffer) };
}
