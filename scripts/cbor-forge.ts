/**
 * A raw CBOR writer for forging inputs our encoder never writes (indefinite lengths,
 * long heads, tags, floats, duplicate keys): for refusal vectors and tests only.
 */

const utf8 = new TextEncoder();

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** The head of major type `major` with argument n, in `width` argument bytes (default: the shortest form). */
export function head(major: number, n: number | bigint, width?: 0 | 1 | 2 | 4 | 8): Uint8Array {
  const v = BigInt(n);
  const w = width ?? (v < 24n ? 0 : v < 0x100n ? 1 : v < 0x10000n ? 2 : v < 0x100000000n ? 4 : 8);
  if (w === 0) return Uint8Array.of((major << 5) | Number(v));
  const out = new Uint8Array(1 + w);
  out[0] = (major << 5) | (24 + Math.log2(w));
  for (let i = 0; i < w; i++) out[w - i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return out;
}

export const uint = (n: number | bigint, width?: 0 | 1 | 2 | 4 | 8): Uint8Array => head(0, n, width);
export const bytes = (b: Uint8Array): Uint8Array => concat(head(2, b.byteLength), b);
export const text = (s: string): Uint8Array => {
  const b = utf8.encode(s);
  return concat(head(3, b.byteLength), b);
};
export const array = (items: Uint8Array[]): Uint8Array => concat(head(4, items.length), ...items);
/** A map of already-encoded values; keys are text (or raw encoded keys), written in the order given. */
export const map = (entries: Array<[string | Uint8Array, Uint8Array]>): Uint8Array => concat(head(5, entries.length), ...entries.flatMap(([k, v]) => [typeof k === 'string' ? text(k) : k, v]));
/** An indefinite-length item of major type 2–5 holding these encoded parts. */
export const indefinite = (major: 2 | 3 | 4 | 5, parts: Uint8Array[]): Uint8Array => concat(Uint8Array.of((major << 5) | 31), ...parts, Uint8Array.of(0xff));
export const tag = (n: number, item: Uint8Array): Uint8Array => concat(head(6, n), item);
export const f16 = (bits: number): Uint8Array => Uint8Array.of(0xf9, bits >> 8, bits & 0xff);
export const f32 = (x: number): Uint8Array => {
  const out = new Uint8Array(5);
  out[0] = 0xfa;
  new DataView(out.buffer).setFloat32(1, x);
  return out;
};
export const f64 = (x: number): Uint8Array => {
  const out = new Uint8Array(9);
  out[0] = 0xfb;
  new DataView(out.buffer).setFloat64(1, x);
  return out;
};
