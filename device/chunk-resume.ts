import { chunkRange } from '../protocol/chunks.ts';
import { readChunkPrefix } from '../protocol/chunk-prefix.ts';
import type { ChunkFrame } from '../protocol/frames.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import type { PartialPublish } from '../transport/types.ts';

/**
 * Data bytes of a chunk cut by a reconnect below which it is asked for whole: under this, a tail saves
 * less than the request's `tail` entry and the tail frame's own head are worth the bother.
 */
export const RESUME_MIN_BYTES = 1024;

/** What became of a frame cut short by a reconnect (`ChunkResume.offer`). */
export type CutFate = { kept: number; bytes: number } | { dropped: string };

/**
 * The first bytes of one chunk whose frame a reconnect cut (docs/protocol.md §4.2): kept in memory
 * (at most one chunk), asked for from where they stop (`tail`), and joined to the tail when it comes.
 * The joined chunk is checked against the chunk list like any other before it is stored.
 */
export class ChunkResume {
  private prefix: { index: number; bytes: Uint8Array } | undefined;

  constructor(
    private readonly step: ReleaseStep,
    /** This download's frames topic: a partial of any other is not ours. */
    private readonly topic: string,
  ) {}

  /** The partial frame the transport kept at a close: kept (the chunk's index) or why not. `held`: chunks already received. */
  offer(p: PartialPublish, held: (index: number) => boolean): CutFate {
    if (p.topic !== this.topic) return { dropped: 'another topic' };
    const r = readChunkPrefix(p.bytes);
    if (!r) return { dropped: 'not the start of a chunk frame' };
    const { step } = this;
    if (r.updateId !== step.updateId || r.count !== step.chunks) return { dropped: 'another update' };
    if (held(r.index)) return { dropped: 'chunk already held' };
    const [b, e] = chunkRange(step.size, step.chunkSize, r.index);
    let bytes: Uint8Array;
    if (r.offset === 0) bytes = r.data;
    else if (this.prefix?.index === r.index && this.prefix.bytes.byteLength >= r.offset) {
      // A tail cut in its turn: what we held up to its offset, and what came of it.
      bytes = concat(this.prefix.bytes.subarray(0, r.offset), r.data);
    } else return { dropped: 'a tail of a chunk not held' };
    if (bytes.byteLength < RESUME_MIN_BYTES) return { dropped: 'too little of it' };
    if (bytes.byteLength >= e - b) return { dropped: 'as long as the chunk' };
    // One prefix at a time (memory: one chunk): the longer one.
    if (this.prefix && this.prefix.index !== r.index && this.prefix.bytes.byteLength >= bytes.byteLength) return { dropped: 'a longer prefix of another chunk is held' };
    this.prefix = { index: r.index, bytes: bytes === r.data ? r.data.slice() : bytes };
    return { kept: r.index, bytes: bytes.byteLength };
  }

  /** The `tail` entries of a request for `want` (protocol/frames.ts's ChunkRequest.tail). */
  tails(want: readonly number[]): Array<[number, number]> {
    const p = this.prefix;
    return p && want.includes(p.index) ? [[p.index, p.bytes.byteLength]] : [];
  }

  /**
   * A chunk frame arrived: the whole chunk's data, or undefined when it is a tail that joins nothing
   * held (then the chunk must be asked for whole). A whole copy drops a prefix of the same chunk.
   */
  join(f: ChunkFrame): Uint8Array | undefined {
    const p = this.prefix;
    if (f.offset === undefined) {
      if (p?.index === f.index) this.prefix = undefined;
      return f.data;
    }
    if (p?.index !== f.index || p.bytes.byteLength < f.offset) return undefined;
    this.prefix = undefined;
    return concat(p.bytes.subarray(0, f.offset), f.data);
  }

  /** Bytes held (for tests and logs). */
  get heldBytes(): number {
    return this.prefix?.bytes.byteLength ?? 0;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}
