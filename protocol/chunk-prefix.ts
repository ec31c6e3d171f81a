import { MAX_CHUNKS, MAX_TAIL_OFFSET, PROTOCOL_VERSION, UPDATE_ID_HEX } from './frames.ts';

/**
 * What the first bytes of a chunk frame cut short say (a connection that closed in the middle of
 * its PUBLISH): the chunk it carried and the first bytes of its data. `offset` is the frame's own
 * (a tail frame, §4.1; 0 for a whole chunk): `data` are the chunk's bytes from `offset` on.
 */
export interface ChunkPrefix {
  updateId: string;
  index: number;
  count: number;
  offset: number;
  data: Uint8Array;
}

/** Byte length of a CBOR head's argument by its additional information (shortest forms only up to 4 bytes). */
const ARG_BYTES: Record<number, number> = { 24: 1, 25: 2, 26: 4 };

/**
 * Reads the start of a chunk frame (docs/protocol.md §4.1: a map of `v`, `u`, `i`, `n`, maybe `o`,
 * and `d` last, as our encoder writes it), leniently: the bytes may stop anywhere inside `d`. Returns
 * the chunk named and the data received, or undefined for anything else (no `d` reached yet, keys
 * out of the chunk frame's set, a key twice, values out of range, heads longer than needed, `d`
 * not last, bytes after `d`). Never throws. The data is not checked here: the receiver joins it to a tail and checks
 * the chunk's SHA-256 as for any chunk.
 */
export function readChunkPrefix(bytes: Uint8Array): ChunkPrefix | undefined {
  let p = 0;
  /** One head of `major` at p: its argument (shortest form, at most 4 bytes), or -1. */
  const head = (major: number): number => {
    if (p >= bytes.length || bytes[p] >> 5 !== major) return -1;
    const info = bytes[p++] & 0x1f;
    if (info < 24) return info;
    const n = ARG_BYTES[info];
    if (n === undefined || p + n > bytes.length) return -1;
    let v = 0;
    for (let k = 0; k < n; k++) v = v * 256 + bytes[p++];
    // Shortest form (RFC 8949 §4.2.1), as every frame is (§4.0).
    return v < (n === 1 ? 24 : 2 ** (8 * (n / 2))) ? -1 : v;
  };
  const pairs = head(5);
  if (pairs !== 5 && pairs !== 6) return undefined;
  const got = new Map<string, number | string>();
  for (let k = 0; k < pairs; k++) {
    if (head(3) !== 1) return undefined;
    const key = String.fromCharCode(bytes[p++] ?? 0);
    if (got.has(key)) return undefined;
    if (key === 'd') return k === pairs - 1 ? finish(got, pairs, bytes, head(2), p) : undefined;
    if (key === 'u') {
      if (head(3) !== UPDATE_ID_HEX || p + UPDATE_ID_HEX > bytes.length) return undefined;
      const u = String.fromCharCode(...bytes.subarray(p, p + UPDATE_ID_HEX));
      if (!/^[0-9a-f]*$/.test(u)) return undefined;
      got.set('u', u);
      p += UPDATE_ID_HEX;
      continue;
    }
    if (key !== 'v' && key !== 'i' && key !== 'n' && key !== 'o') return undefined;
    const v = head(0);
    if (v < 0) return undefined;
    got.set(key, v);
  }
  return undefined;
}

/** The prefix, once `d`'s head (declaring `length` bytes) is read and p is at its first byte. */
function finish(got: Map<string, number | string>, pairs: number, bytes: Uint8Array, length: number, p: number): ChunkPrefix | undefined {
  const { v, u, i, n, o } = Object.fromEntries(got) as Record<string, number | string | undefined>;
  // Bytes after d's end: not a frame as we write it.
  if (length < 0 || p + length < bytes.length || v !== PROTOCOL_VERSION || typeof u !== 'string' || typeof i !== 'number' || typeof n !== 'number') return undefined;
  if (n === 0 || n > MAX_CHUNKS || i >= n) return undefined;
  // Five pairs: no `o`; six: `o` among them, 1..MAX_TAIL_OFFSET.
  if ((pairs === 6) !== (o !== undefined)) return undefined;
  if (o !== undefined && (typeof o !== 'number' || o === 0 || o > MAX_TAIL_OFFSET)) return undefined;
  const data = bytes.subarray(p, Math.min(bytes.length, p + length));
  return { updateId: u, index: i, count: n, offset: o ?? 0, data };
}
