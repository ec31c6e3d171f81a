import { ProtocolError } from './errors.ts';

/**
 * Tensor element types, spelled as safetensors spells them. Every one can be
 * read (as a double) and digested; only the float types can be written, and
 * only F32, F16 and BF16 can be updated.
 */
export type Dtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

/** The dtypes a low-rank update may touch. */
export type UpdatableDtype = 'F32' | 'F16' | 'BF16';

/** The dtypes a double can be written to (rounded once, to nearest, ties to even). */
export type WritableDtype = 'F64' | UpdatableDtype;

const SIZES: Record<Dtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

export const DTYPES: readonly Dtype[] = Object.freeze(Object.keys(SIZES) as Dtype[]);

export function isDtype(d: unknown): d is Dtype {
  return typeof d === 'string' && Object.prototype.hasOwnProperty.call(SIZES, d);
}

export function isUpdatableDtype(d: unknown): d is UpdatableDtype {
  return d === 'F32' || d === 'F16' || d === 'BF16';
}

export function isWritableDtype(d: unknown): d is WritableDtype {
  return d === 'F64' || isUpdatableDtype(d);
}

/** Bytes per element. */
export function dtypeSize(d: Dtype): number {
  const s = isDtype(d) ? SIZES[d] : undefined;
  if (s === undefined) throw new ProtocolError('unsupported-dtype', `unknown dtype ${String(d)}`);
  return s;
}

// ---------------------------------------------------------------------------
// Exact powers of two and exponents, built from bit patterns (no Math.pow).

const scratch = new DataView(new ArrayBuffer(8));
const POW2_MIN = -1022;
const POW2 = new Float64Array(2046);
for (let k = POW2_MIN; k <= 1023; k++) {
  scratch.setUint32(0, (k + 1023) * 0x100000);
  scratch.setUint32(4, 0);
  POW2[k - POW2_MIN] = scratch.getFloat64(0);
}

/** 2^k exactly, for integer k in [-1022, 1023]. */
function pow2(k: number): number {
  return POW2[k - POW2_MIN];
}

/** floor(log2(a)) for a finite normal double a > 0; -1023 for subnormal doubles. */
function exponentOf(a: number): number {
  scratch.setFloat64(0, a);
  const e = (scratch.getUint32(0) >>> 20) & 0x7ff;
  return e === 0 ? -1023 : e - 1023;
}

/** Round a non-negative double below 2^52 to an integer, ties to even. Exact. */
function roundHalfEven(s: number): number {
  let q = Math.floor(s);
  const f = s - q; // exact: s < 2^52
  if (f > 0.5 || (f === 0.5 && q % 2 === 1)) q += 1;
  return q;
}

/**
 * A binary float format of 16 bits: 1 sign bit, E exponent bits, M mantissa bits.
 * f16: M = 10, bias 15, all-ones exponent 31. bf16: M = 7, bias 127, all-ones 255.
 */
interface Small {
  m: number;
  bias: number;
  expMax: number;
}
const F16: Small = { m: 10, bias: 15, expMax: 31 };
const BF16: Small = { m: 7, bias: 127, expMax: 255 };

function smallToNumber(bits: number, f: Small): number {
  const b = bits & 0xffff;
  const neg = (b & 0x8000) !== 0;
  const e = (b >>> f.m) & f.expMax;
  const frac = b & ((1 << f.m) - 1);
  let v: number;
  if (e === f.expMax) v = frac === 0 ? Infinity : NaN;
  else if (e === 0) v = frac * pow2(1 - f.bias - f.m);
  else v = ((1 << f.m) + frac) * pow2(e - f.bias - f.m);
  if (Number.isNaN(v)) return NaN;
  return neg ? -v : v;
}

/** Round a double to the format once: to nearest, ties to even; overflow to infinity; NaN to the quiet NaN. */
function numberToSmall(x: number, f: Small): number {
  if (Number.isNaN(x)) return (f.expMax << f.m) | (1 << (f.m - 1));
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const inf = sign | (f.expMax << f.m);
  if (a === Infinity) return inf;
  if (a === 0) return sign;
  const minNormalExp = 1 - f.bias;
  let e = exponentOf(a);
  if (e < minNormalExp) {
    // Subnormal (or zero) in the target: integer multiples of 2^(minNormalExp - m).
    // Scaling up by a power of two is exact; q = 2^m is the smallest normal, encoded naturally.
    const q = roundHalfEven(a * pow2(f.m - minNormalExp));
    return sign | q;
  }
  if (e + f.bias >= f.expMax) return inf;
  let q = roundHalfEven(a * pow2(f.m - e)); // a * 2^(m-e) is in [2^m, 2^(m+1)), exact
  if (q === 1 << (f.m + 1)) {
    q = 1 << f.m;
    e += 1;
  }
  const expField = e + f.bias;
  if (expField >= f.expMax) return inf;
  return sign | (expField << f.m) | (q - (1 << f.m));
}

/** IEEE binary16 bits (0..65535) to its exact value as a double. */
export function f16BitsToNumber(bits: number): number {
  return smallToNumber(bits, F16);
}

/** Double to IEEE binary16 bits, rounded once from the double (nearest, ties to even). NaN → 0x7e00. */
export function numberToF16Bits(x: number): number {
  return numberToSmall(x, F16);
}

/** bfloat16 bits (0..65535) to its exact value as a double. */
export function bf16BitsToNumber(bits: number): number {
  return smallToNumber(bits, BF16);
}

/** Double to bfloat16 bits, rounded once from the double (nearest, ties to even). NaN → 0x7fc0. */
export function numberToBf16Bits(x: number): number {
  return numberToSmall(x, BF16);
}

/** The value x becomes when stored as the dtype (one rounding). */
export function roundToDtype(x: number, d: WritableDtype): number {
  switch (d) {
    case 'F64':
      return x;
    case 'F32':
      return Math.fround(x);
    case 'F16':
      return f16BitsToNumber(numberToF16Bits(x));
    case 'BF16':
      return bf16BitsToNumber(numberToBf16Bits(x));
    default:
      throw new ProtocolError('unsupported-dtype', `cannot write ${String(d)}`);
  }
}

// ---------------------------------------------------------------------------
// Element access. Always little-endian; DataView has no alignment needs.

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A reader of element j (as a double) of a little-endian tensor byte array. */
export function elementReader(bytes: Uint8Array, dtype: Dtype): (j: number) => number {
  const dv = viewOf(bytes);
  switch (dtype) {
    case 'F64':
      return (j) => dv.getFloat64(j * 8, true);
    case 'F32':
      return (j) => dv.getFloat32(j * 4, true);
    case 'F16':
      return (j) => f16BitsToNumber(dv.getUint16(j * 2, true));
    case 'BF16':
      return (j) => bf16BitsToNumber(dv.getUint16(j * 2, true));
    case 'I64':
      return (j) => Number(dv.getBigInt64(j * 8, true));
    case 'I32':
      return (j) => dv.getInt32(j * 4, true);
    case 'I16':
      return (j) => dv.getInt16(j * 2, true);
    case 'I8':
      return (j) => dv.getInt8(j);
    case 'U64':
      return (j) => Number(dv.getBigUint64(j * 8, true));
    case 'U32':
      return (j) => dv.getUint32(j * 4, true);
    case 'U16':
      return (j) => dv.getUint16(j * 2, true);
    case 'U8':
      return (j) => dv.getUint8(j);
    case 'BOOL':
      return (j) => (dv.getUint8(j) !== 0 ? 1 : 0);
    default:
      throw new ProtocolError('unsupported-dtype', `unknown dtype ${String(dtype)}`);
  }
}

/** A writer of element j of a little-endian tensor byte array: the double is rounded once to the dtype. */
export function elementWriter(bytes: Uint8Array, dtype: Dtype): (j: number, x: number) => void {
  const dv = viewOf(bytes);
  switch (dtype) {
    case 'F64':
      return (j, x) => dv.setFloat64(j * 8, x, true);
    case 'F32':
      return (j, x) => dv.setFloat32(j * 4, Math.fround(x), true);
    case 'F16':
      return (j, x) => dv.setUint16(j * 2, numberToF16Bits(x), true);
    case 'BF16':
      return (j, x) => dv.setUint16(j * 2, numberToBf16Bits(x), true);
    default:
      throw new ProtocolError('unsupported-dtype', `cannot write ${String(dtype)}`);
  }
}

export function readElement(bytes: Uint8Array, dtype: Dtype, j: number): number {
  return elementReader(bytes, dtype)(j);
}

export function writeElement(bytes: Uint8Array, dtype: Dtype, j: number, x: number): void {
  elementWriter(bytes, dtype)(j, x);
}

/** Number of elements in a byte array of the dtype; throws if the length is not a multiple of the size. */
export function elementCount(bytes: Uint8Array, dtype: Dtype): number {
  const size = dtypeSize(dtype);
  if (bytes.byteLength % size !== 0) {
    throw new ProtocolError('malformed-model', `${bytes.byteLength} bytes is not a whole number of ${dtype}`);
  }
  return bytes.byteLength / size;
}

/** All elements as doubles. */
export function decodeValues(bytes: Uint8Array, dtype: Dtype): Float64Array {
  const count = elementCount(bytes, dtype);
  const read = elementReader(bytes, dtype);
  const out = new Float64Array(count);
  for (let j = 0; j < count; j++) out[j] = read(j);
  return out;
}

/** Doubles to little-endian bytes of a float dtype, each rounded once. */
export function encodeValues(values: ArrayLike<number>, dtype: WritableDtype): Uint8Array {
  const out = new Uint8Array(values.length * dtypeSize(dtype));
  const write = elementWriter(out, dtype);
  for (let j = 0; j < values.length; j++) write(j, values[j]);
  return out;
}
