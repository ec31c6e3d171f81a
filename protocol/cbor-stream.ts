import { cborDecode } from './cbor.ts';
import { CborError, strictHead, strictItemEnd } from './cbor-strict.ts';

/**
 * An incremental reader of one CBOR map (of the protocol's subset, §4.0) whose
 * value under one key is a long array: the low-rank payload `{v, base, target,
 * tensors: [...]}`. Fed the bytes in order, in chunks of any size, it holds at
 * most one item of that array (plus one chunk) at a time: each item is checked
 * against the subset and only its place is kept (offset and length in the
 * input); the other values of the map are small and are decoded. Pure: no I/O.
 *
 * It applies exactly the rules checkStrictCbor applies to the whole input, in the
 * same order (a rule broken earlier in the bytes is the one reported), with
 * offsets counted from the start of the input.
 */

/** Where one item of the streamed array lies in the input. */
export interface StreamedItem {
  index: number;
  offset: number;
  length: number;
}

/** What the map's streamed key holds once read: an array of `length` items (each one a StreamedItem). */
export class StreamedArray {
  constructor(readonly length: number) {}
}

export interface ScannedMap {
  /**
   * The map's entries, decoded, with the streamed key's value a StreamedArray
   * when it is an array (when it is anything else, that value decoded). Not a
   * map at the top: the whole input decoded (`map` false).
   */
  value: unknown;
  map: boolean;
  /** The streamed array's items, the first `maxItems` of them. */
  items: StreamedItem[];
}

type Stage = 'top' | 'key' | 'value' | 'items' | 'done' | 'whole';

export class CborMapScanner {
  private buf: Uint8Array = new Uint8Array(0);
  /** buf[lo, hi) holds the input's bytes from `offset` on that are not yet consumed. */
  private lo = 0;
  private hi = 0;
  private owned = false;
  private offset = 0;
  /** Do not try again before this many bytes are held (a truncated item says how many it needs). */
  private waitFor = 0;
  private fed = 0;
  private stage: Stage = 'top';
  private entries = 0;
  private itemsLeft = 0;
  private count = 0;
  private key = '';
  private readonly keys = new Set<string>();
  private readonly fields: Record<string, unknown> = {};
  private readonly items: StreamedItem[] = [];

  constructor(
    private readonly streamKey: string,
    private readonly maxItems: number,
  ) {}

  /** Bytes of its own it holds now (what it buffers between pushes), for tests and benchmarks. */
  get heldCapacity(): number {
    return this.owned ? this.buf.byteLength : 0;
  }

  /** The next bytes of the input. Throws CborError as soon as they break a rule. */
  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    this.fed += chunk.byteLength;
    this.append(chunk);
    this.run(false);
    if (!this.owned && this.hi > this.lo) this.hold(0); // the caller may reuse its chunk
  }

  /** The input is complete: throws CborError unless it was exactly one map (or item) of the subset. */
  end(): ScannedMap {
    if (this.fed === 0) throw new CborError('empty', 0, 'no data item');
    this.run(true);
    if (this.stage === 'whole') {
      return { value: cborDecode(this.buf.subarray(this.lo, this.hi)), map: false, items: [] };
    }
    return { value: this.fields, map: true, items: this.items };
  }

  private append(chunk: Uint8Array): void {
    if (this.lo === this.hi) {
      // Nothing held: read the chunk where it is (a whole payload decoded at once is never copied);
      // push() keeps what is left of it in a buffer of its own before it returns.
      this.buf = chunk;
      this.lo = 0;
      this.hi = chunk.byteLength;
      this.owned = false;
      return;
    }
    this.hold(chunk.byteLength);
    this.buf.set(chunk, this.hi);
    this.hi += chunk.byteLength;
  }

  /** Hold the unconsumed bytes in a buffer of our own with room for `more` after them. */
  private hold(more: number): void {
    const held = this.hi - this.lo;
    if (this.owned && held + more <= this.buf.byteLength) {
      if (this.hi + more > this.buf.byteLength) {
        this.buf.copyWithin(0, this.lo, this.hi);
        this.lo = 0;
        this.hi = held;
      }
      return;
    }
    // Room for what the item needs (when a truncated item said), else 1.5× as much: few copies, little slack.
    const next = new Uint8Array(Math.max(held + more, this.waitFor, Math.ceil(held * 1.5), 64 * 1024));
    next.set(this.buf.subarray(this.lo, this.hi), 0);
    this.buf = next;
    this.lo = 0;
    this.hi = held;
    this.owned = true;
  }

  private consume(n: number): void {
    this.lo += n;
    this.offset += n;
    this.waitFor = 0;
    if (this.lo === this.hi) {
      this.lo = this.hi = 0;
      if (!this.owned) this.buf = new Uint8Array(0);
    }
  }

  private run(ended: boolean): void {
    for (;;) {
      const held = this.hi - this.lo;
      if (this.stage === 'whole') return; // decoded whole at the end
      if (this.stage === 'done') {
        if (held > 0) throw new CborError('trailing-bytes', this.offset, `${ended ? held : 'more'} bytes after the data item`);
        return;
      }
      if (!ended && held < this.waitFor) return;
      try {
        this.step(this.buf.subarray(this.lo, this.hi));
      } catch (e) {
        if (!(e instanceof CborError)) throw e;
        if (e.form === 'truncated' && !ended) {
          // Wait for what the item says it needs, and never retry on less than half as much again.
          this.waitFor = Math.max(held + e.short, Math.ceil(held * 1.5));
          return;
        }
        throw e.shifted(this.offset);
      }
    }
  }

  /** One step of the map: its head, a key, a small value, the array's head or one of its items. */
  private step(view: Uint8Array): void {
    switch (this.stage) {
      case 'top': {
        const h = strictHead(view);
        if (h.major !== 5) {
          this.stage = 'whole';
          return;
        }
        this.entries = h.arg;
        this.consume(h.end);
        this.stage = this.entries > 0 ? 'key' : 'done';
        return;
      }
      case 'key': {
        if (view.byteLength > 0 && view[0] >> 5 !== 3) throw new CborError('non-text-key', 0, 'map keys must be text strings');
        const r = strictItemEnd(view, 1);
        const key = r.text!;
        if (this.keys.has(key)) throw new CborError('duplicate-key', 0, `key ${JSON.stringify(key)} appears twice in one map`);
        this.keys.add(key);
        this.key = key;
        this.consume(r.end);
        this.stage = 'value';
        return;
      }
      case 'value': {
        if (this.key === this.streamKey && view.byteLength > 0 && view[0] >> 5 === 4) {
          const h = strictHead(view);
          this.set(this.key, new StreamedArray(h.arg));
          this.itemsLeft = h.arg;
          this.consume(h.end);
          if (this.itemsLeft > 0) this.stage = 'items';
          else this.nextEntry();
          return;
        }
        const r = strictItemEnd(view, 1);
        this.set(this.key, cborDecode(view.subarray(0, r.end), 1));
        this.consume(r.end);
        this.nextEntry();
        return;
      }
      case 'items': {
        const r = strictItemEnd(view, 2);
        if (this.count < this.maxItems) this.items.push({ index: this.count, offset: this.offset, length: r.end });
        this.count++;
        this.consume(r.end);
        if (--this.itemsLeft === 0) this.nextEntry();
        return;
      }
      default:
        return;
    }
  }

  private set(key: string, value: unknown): void {
    Object.defineProperty(this.fields, key, { value, enumerable: true, writable: true, configurable: true }); // '__proto__' stays a key
  }

  private nextEntry(): void {
    this.stage = --this.entries > 0 ? 'key' : 'done';
  }
}
