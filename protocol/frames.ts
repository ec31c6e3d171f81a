import { cborDecode, cborEncode, isBytes, isHex, isRecord, isUint } from './cbor.ts';
import { ProtocolError } from './errors.ts';

export const PROTOCOL_VERSION = 1;
/** Length in hex characters of an updateId (the first 128 bits of the payload's SHA-256). */
export const UPDATE_ID_HEX = 32;
/** Most chunk indices one request may name. */
export const MAX_WANT = 1024;
/** Largest chunk index the protocol allows (2^24 chunks). */
export const MAX_CHUNKS = 1 << 24;
/** Largest byte offset of a chunk's tail (a chunk is at most 16 MiB, protocol/manifest.ts's MAX_CHUNK_BYTES). */
export const MAX_TAIL_OFFSET = 16 * 1024 * 1024;

/** Server -> device (and publisher -> server on upload): one chunk of a payload. */
export interface ChunkFrame {
  kind: 'chunk';
  updateId: string;
  index: number;
  count: number;
  /**
   * A tail (docs/protocol.md §4.1): `data` is the chunk's bytes from this offset on (at least 1),
   * answering a request's `tail` entry. Absent: `data` is the whole chunk.
   */
  offset?: number;
  data: Uint8Array;
}
/** Server -> device: the chunk list (SHA-256 of every chunk, concatenated). */
export interface ListFrame {
  kind: 'list';
  updateId: string;
  count: number;
  list: Uint8Array;
}
/** Server -> device: the request could not be served. */
export interface ErrorFrame {
  kind: 'error';
  updateId: string;
  error: 'unknown-update' | 'bad-request';
}
export type Frame = ChunkFrame | ListFrame | ErrorFrame;

export function encodeFrame(f: Frame): Uint8Array {
  switch (f.kind) {
    case 'chunk':
      // `d` last, always: a frame cut short then still names its chunk (protocol/chunk-prefix.ts).
      if (f.offset !== undefined) return cborEncode({ v: PROTOCOL_VERSION, u: f.updateId, i: f.index, n: f.count, o: f.offset, d: f.data });
      return cborEncode({ v: PROTOCOL_VERSION, u: f.updateId, i: f.index, n: f.count, d: f.data });
    case 'list':
      return cborEncode({ v: PROTOCOL_VERSION, u: f.updateId, n: f.count, l: f.list });
    case 'error':
      return cborEncode({ v: PROTOCOL_VERSION, u: f.updateId, e: f.error });
  }
}

function decodeMap(bytes: Uint8Array, what: string): Record<string, unknown> {
  let m: unknown;
  try {
    m = cborDecode(bytes);
  } catch (e) {
    throw new ProtocolError('malformed-frame', `${what}: ${(e as Error).message}`);
  }
  if (!isRecord(m)) throw new ProtocolError('malformed-frame', `${what}: not a CBOR map`);
  if (m.v !== PROTOCOL_VERSION) throw new ProtocolError('malformed-frame', `${what}: unsupported version ${typeof m.v === 'object' ? typeof m.v : String(m.v)}`);
  return m;
}

export function isUpdateId(v: unknown): v is string {
  return isHex(v, UPDATE_ID_HEX);
}

/**
 * A frame (docs/protocol.md §4.1), of §4.0's CBOR subset: recognised by the presence of
 * `d` (chunk, 0 ≤ i < n ≤ 2^24), then `l` (list, 32·n bytes), then `e` (error).
 */
export function decodeFrame(bytes: Uint8Array): Frame {
  const m = decodeMap(bytes, 'frame');
  if (!isUpdateId(m.u)) throw new ProtocolError('malformed-frame', 'frame: u must be a 32-hex-digit update id');
  if ('d' in m) {
    if (!isUint(m.n, MAX_CHUNKS) || m.n === 0) throw new ProtocolError('malformed-frame', 'frame: bad n');
    if (!isUint(m.i, MAX_CHUNKS) || m.i >= m.n) throw new ProtocolError('malformed-frame', 'frame: bad i');
    if (!isBytes(m.d)) throw new ProtocolError('malformed-frame', 'frame: d must be bytes');
    if ('o' in m) {
      if (!isUint(m.o, MAX_TAIL_OFFSET) || m.o === 0) throw new ProtocolError('malformed-frame', `frame: o must be 1..${MAX_TAIL_OFFSET}`);
      return { kind: 'chunk', updateId: m.u, index: m.i, count: m.n, offset: m.o, data: m.d };
    }
    return { kind: 'chunk', updateId: m.u, index: m.i, count: m.n, data: m.d };
  }
  if ('l' in m) {
    if (!isUint(m.n, MAX_CHUNKS) || m.n === 0) throw new ProtocolError('malformed-frame', 'list: bad n');
    if (!isBytes(m.l) || m.l.byteLength !== m.n * 32) throw new ProtocolError('malformed-frame', 'list: l must be n*32 bytes');
    return { kind: 'list', updateId: m.u, count: m.n, list: m.l };
  }
  if (m.e === 'unknown-update' || m.e === 'bad-request') return { kind: 'error', updateId: m.u, error: m.e };
  throw new ProtocolError('malformed-frame', 'frame: neither chunk (d), list (l) nor error (e)');
}

/** Device -> server: which chunks (and/or the chunk list) it wants. */
export interface ChunkRequest {
  want: number[];
  list: boolean;
  /**
   * Chunks of `want` asked for from a byte offset on: `[index, offset]`, the device holding the
   * chunk's first `offset` bytes (a frame cut by a reconnect). An index at most once, each in `want`:
   * a server that does not know `tail` sends those chunks whole.
   */
  tail?: Array<[number, number]>;
}

export function encodeRequest(r: ChunkRequest): Uint8Array {
  const m: Record<string, unknown> = { v: PROTOCOL_VERSION, want: r.want };
  if (r.list) m.list = true;
  if (r.tail?.length) m.tail = r.tail;
  return cborEncode(m);
}

/** A request's `tail` (§4.2): pairs [index, offset], offset 1..MAX_TAIL_OFFSET, each index in `want` and at most once. */
function decodeTail(tail: unknown, want: readonly number[]): Array<[number, number]> {
  if (!Array.isArray(tail) || tail.length === 0 || tail.length > want.length) throw new ProtocolError('malformed-frame', 'request: tail must be a non-empty array of at most len(want) pairs');
  const wanted = new Set(want);
  const seen = new Set<number>();
  for (const p of tail) {
    if (!Array.isArray(p) || p.length !== 2 || !isUint(p[0], MAX_CHUNKS - 1) || !isUint(p[1], MAX_TAIL_OFFSET) || p[1] === 0) {
      throw new ProtocolError('malformed-frame', `request: a tail entry must be [index, offset] with offset 1..${MAX_TAIL_OFFSET}`);
    }
    if (!wanted.has(p[0]) || seen.has(p[0])) throw new ProtocolError('malformed-frame', 'request: a tail index must be wanted, and named once');
    seen.add(p[0]);
  }
  return tail as Array<[number, number]>;
}

/** A request (docs/protocol.md §4.2): at most MAX_WANT indices, and it must ask for something. */
export function decodeRequest(bytes: Uint8Array): ChunkRequest {
  const m = decodeMap(bytes, 'request');
  const want = m.want ?? [];
  if (!Array.isArray(want) || want.length > MAX_WANT) {
    throw new ProtocolError('malformed-frame', `request: want must be an array of at most ${MAX_WANT} indices`);
  }
  for (const i of want) if (!isUint(i, MAX_CHUNKS - 1)) throw new ProtocolError('malformed-frame', 'request: bad index');
  if (m.list !== undefined && typeof m.list !== 'boolean') throw new ProtocolError('malformed-frame', 'request: list must be a boolean');
  const list = m.list === true;
  if (!list && want.length === 0) throw new ProtocolError('malformed-frame', 'request: asks for nothing');
  if (m.tail !== undefined) return { want: want as number[], list, tail: decodeTail(m.tail, want as number[]) };
  return { want: want as number[], list };
}

/** Server -> publisher: the state of an upload. */
export interface UploadReceipt {
  updateId: string;
  /** Complete and verified (payload SHA-256 matches the update id). */
  stored: boolean;
  count: number;
  have: number;
  /** Some of the missing indices (at most MAX_WANT), when not stored. */
  missing: number[];
  /** Set when the upload was refused (e.g. hash mismatch); the publisher must restart it. */
  error?: string;
}

export function encodeReceipt(r: UploadReceipt): Uint8Array {
  const m: Record<string, unknown> = { v: PROTOCOL_VERSION, u: r.updateId, ok: r.stored, n: r.count, have: r.have, missing: r.missing };
  if (r.error) m.err = r.error;
  return cborEncode(m);
}

export function decodeReceipt(bytes: Uint8Array): UploadReceipt {
  const m = decodeMap(bytes, 'receipt');
  if (!isUpdateId(m.u) || typeof m.ok !== 'boolean' || !isUint(m.n) || !isUint(m.have) || !Array.isArray(m.missing)) {
    throw new ProtocolError('malformed-frame', 'receipt: bad fields');
  }
  for (const i of m.missing) if (!isUint(i, MAX_CHUNKS)) throw new ProtocolError('malformed-frame', 'receipt: bad index');
  if (m.err !== undefined && typeof m.err !== 'string') throw new ProtocolError('malformed-frame', 'receipt: bad err');
  return { updateId: m.u, stored: m.ok, count: m.n, have: m.have, missing: m.missing as number[], error: m.err as string | undefined };
}
