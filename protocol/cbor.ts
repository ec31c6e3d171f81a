import { InternalError } from '../platform/errors.ts';
import { Encoder } from 'cbor-x';
import { checkStrictCbor } from './cbor-strict.ts';

/**
 * One CBOR configuration for every message: plain maps with text keys, byte
 * strings for binary, no cbor-x record extensions, so any CBOR library reads it.
 */
const codec = new Encoder({
  // Integers of 2^32 and over arrive as 8-byte heads (the subset caps them at 2^53 − 1): decode
  // them as numbers, not BigInts. int64AsNumber is a cbor-x decoder option its typings omit.
  ...({ int64AsNumber: true } as object),
  useRecords: false,
  mapsAsObjects: true,
  tagUint8Array: false,
  variableMapSize: true,
  pack: false,
});

/** cbor-x writes integers of 2^32 and over as float64; as BigInts it writes them as integers (shortest form). */
function wideIntegers(value: unknown): unknown {
  if (typeof value === 'number') {
    return Number.isSafeInteger(value) && (value >= 2 ** 32 || value < -(2 ** 32)) ? BigInt(value) : value;
  }
  if (Array.isArray(value)) return value.map(wideIntegers);
  if (typeof value === 'object' && value !== null && !(value instanceof Uint8Array) && Object.getPrototypeOf(value) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      Object.defineProperty(out, k, { value: wideIntegers(v), enumerable: true, writable: true, configurable: true }); // '__proto__' stays a key
    }
    return out;
  }
  return value;
}

/**
 * Encode in the protocol's subset (§4.0): shortest heads, definite lengths, no tags,
 * integers as integers. (Non-integer numbers are written as floats, which every
 * decoder refuses: encoders validate their fields first; tests use that to forge input.)
 */
export function cborEncode(value: unknown): Uint8Array {
  const b = codec.encode(wideIntegers(value));
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * Decode one CBOR item of the protocol's subset (§4.0, protocol/cbor-strict.ts);
 * throws CborError (naming the rule) on anything outside it, including trailing bytes.
 * `depth`: how deep the item sits in a larger one that is decoded piece by piece.
 */
export function cborDecode(bytes: Uint8Array, depth = 0): unknown {
  checkStrictCbor(bytes, depth);
  const values = codec.decodeMultiple(bytes) as unknown[] | undefined;
  if (!Array.isArray(values) || values.length !== 1) throw new InternalError('cbor-items', 'expected exactly one CBOR item after the strict check');
  return values[0];
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

export function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array;
}

export function isUint(v: unknown, max = Number.MAX_SAFE_INTEGER): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;
}

export function isHex(v: unknown, length: number): v is string {
  return typeof v === 'string' && v.length === length && /^[0-9a-f]*$/.test(v);
}
