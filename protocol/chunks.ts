import { createHash } from 'node:crypto';
import { UPDATE_ID_HEX } from './frames.ts';

export const DEFAULT_CHUNK_SIZE = 16 * 1024;

/**
 * What names one payload and lets a receiver check it: the update id, its
 * size, its SHA-256, how it is cut into chunks, and the SHA-256 of the chunk
 * list. A release step, a stored update, an upload's result and a gateway's
 * needed update each carry exactly these (and add their own fields).
 */
export interface PayloadDescriptor {
  updateId: string;
  /** Payload size in bytes. */
  size: number;
  /** SHA-256 of the whole payload, hex. */
  sha256: string;
  chunkSize: number;
  chunks: number;
  /** SHA-256 of the chunk list, hex. */
  listSha256: string;
}

export function sha256(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest());
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** The update id: the first 128 bits of the payload's SHA-256, in hex. */
export function updateIdOf(payload: Uint8Array): string {
  return sha256Hex(payload).slice(0, UPDATE_ID_HEX);
}

export function chunkCount(size: number, chunkSize: number): number {
  return Math.max(1, Math.ceil(size / chunkSize));
}

/** Byte range [begin, end) of chunk `index`. */
export function chunkRange(size: number, chunkSize: number, index: number): [number, number] {
  const begin = index * chunkSize;
  return [begin, Math.min(size, begin + chunkSize)];
}

/** The chunk list: the SHA-256 of every chunk, concatenated (32 bytes each). */
export function chunkList(payload: Uint8Array, chunkSize: number): Uint8Array {
  const n = chunkCount(payload.byteLength, chunkSize);
  const list = new Uint8Array(n * 32);
  for (let i = 0; i < n; i++) {
    const [b, e] = chunkRange(payload.byteLength, chunkSize, i);
    list.set(sha256(payload.subarray(b, e)), i * 32);
  }
  return list;
}

/** True when `chunk` hashes to entry `index` of `list`. */
export function chunkMatches(list: Uint8Array, index: number, chunk: Uint8Array): boolean {
  if ((index + 1) * 32 > list.byteLength) return false;
  const h = sha256(chunk);
  const want = list.subarray(index * 32, index * 32 + 32);
  for (let k = 0; k < 32; k++) if (h[k] !== want[k]) return false;
  return true;
}

/**
 * A bitmap of received chunks: bit i is bit (i & 7) of byte (i >> 3), least
 * significant first. Stored on the device as these raw bytes.
 */
export class Bitmap {
  readonly bytes: Uint8Array;
  private setCount: number;

  constructor(
    readonly size: number,
    bytes?: Uint8Array,
  ) {
    const len = Math.ceil(size / 8);
    if (bytes && bytes.byteLength !== len) throw new RangeError(`bitmap of ${size} bits needs ${len} bytes, got ${bytes.byteLength}`);
    this.bytes = bytes ? new Uint8Array(bytes) : new Uint8Array(len);
    // Clear any bits past `size` so counts stay honest.
    if (size % 8 !== 0 && len > 0) this.bytes[len - 1] &= (1 << (size % 8)) - 1;
    this.setCount = 0;
    for (let i = 0; i < size; i++) if (this.has(i)) this.setCount++;
  }

  has(i: number): boolean {
    return i >= 0 && i < this.size && (this.bytes[i >> 3] & (1 << (i & 7))) !== 0;
  }

  /** Sets bit i; returns true when it was not set before. */
  set(i: number): boolean {
    if (i < 0 || i >= this.size) throw new RangeError(`bit ${i} outside bitmap of ${this.size}`);
    if (this.has(i)) return false;
    this.bytes[i >> 3] |= 1 << (i & 7);
    this.setCount++;
    return true;
  }

  clear(i: number): void {
    if (!this.has(i)) return;
    this.bytes[i >> 3] &= ~(1 << (i & 7));
    this.setCount--;
  }

  get count(): number {
    return this.setCount;
  }

  get complete(): boolean {
    return this.setCount === this.size;
  }

  /** Up to `limit` missing indices, in increasing order, skipping those in `exclude`. */
  missing(limit: number, exclude?: { has(i: number): boolean }): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.size && out.length < limit; i++) {
      if (!this.has(i) && !exclude?.has(i)) out.push(i);
    }
    return out;
  }
}
