import { Encoder } from 'cbor-x';

/**
 * One CBOR configuration for every message: plain maps with text keys, byte
 * strings for binary, no cbor-x record extensions, so any CBOR library reads it.
 */
const codec = new Encoder({
  useRecords: false,
  mapsAsObjects: true,
  tagUint8Array: false,
  variableMapSize: true,
  pack: false,
});

export function cborEncode(value: unknown): Uint8Array {
  const b = codec.encode(value);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** Decode one CBOR item; throws (any error) on malformed input or trailing bytes. */
export function cborDecode(bytes: Uint8Array): unknown {
  if (bytes.byteLength === 0) throw new Error('empty input');
  const values = codec.decodeMultiple(bytes) as unknown[] | undefined;
  if (!Array.isArray(values) || values.length !== 1) throw new Error('expected exactly one CBOR item');
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
