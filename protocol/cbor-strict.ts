/**
 * The CBOR subset every message of the protocol is written in (docs/protocol.md §4.0),
 * checked on the raw bytes before anything is decoded. One data item, and in it:
 * definite lengths only; every integer argument (values, lengths, counts) in its
 * shortest form; integers within ±(2^53 − 1); no tags; no floating-point values; of
 * the simple values only false, true and null; text strings valid UTF-8; map keys text
 * strings, each at most once per map; arrays and maps nested at most MAX_CBOR_DEPTH deep.
 * Map keys may come in any order.
 */
import { FleetError } from '../platform/errors.ts';

/** Why a CBOR input is outside the subset: a stable name per rule. */
export const CBOR_FORMS = [
  'empty',
  'truncated',
  'trailing-bytes',
  'indefinite-length',
  'reserved-info',
  'non-shortest',
  'integer-range',
  'tag',
  'float',
  'simple-value',
  'invalid-utf8',
  'non-text-key',
  'duplicate-key',
  'too-deep',
] as const;
export type CborForm = (typeof CBOR_FORMS)[number];

export const MAX_CBOR_DEPTH = 16;

/** A refusal (platform/errors.ts) whose code is the rule broken. */
export class CborError extends FleetError<CborForm> {
  override readonly name = 'CborError';
  readonly form: CborForm;
  /** Byte offset of the item head that breaks the rule. */
  readonly offset: number;
  readonly detail: string;
  /** For 'truncated': how many more bytes the item needs at least (an incremental reader waits for them). */
  readonly short: number;
  constructor(form: CborForm, offset: number, detail: string, short = 0) {
    super('refusal', form, `CBOR ${form} at byte ${offset}: ${detail}`);
    this.form = form;
    this.offset = offset;
    this.detail = detail;
    this.short = short;
  }

  /** The same error at `by` bytes further into a larger input (an item checked on its own). */
  shifted(by: number): CborError {
    return new CborError(this.form, this.offset + by, this.detail, this.short);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const TWO_32 = 2 ** 32;

interface Head {
  major: number;
  info: number;
  arg: number;
  at: number;
}

class Walker {
  pos = 0;
  constructor(private readonly b: Uint8Array) {}

  private fail(form: CborForm, at: number, detail: string): never {
    throw new CborError(form, at, detail);
  }

  private need(n: number, at: number, what: string): void {
    const left = this.b.byteLength - this.pos;
    if (n > left) throw new CborError('truncated', at, `${what} needs ${n} bytes, ${left} left`, n - left);
  }

  /** The initial byte and its argument, with every rule about the head itself. */
  head(): Head {
    const at = this.pos;
    this.need(1, at, 'an item');
    const ib = this.b[this.pos++];
    const major = ib >> 5;
    const info = ib & 31;
    if (major === 7) return this.simple(info, at);
    if (info < 24) return { major, info, arg: info, at };
    if (info === 31) {
      if (major >= 2 && major <= 5) this.fail('indefinite-length', at, `major type ${major} with indefinite length`);
      this.fail('reserved-info', at, `additional information 31 is not valid for major type ${major}`);
    }
    if (info > 27) this.fail('reserved-info', at, `additional information ${info} is reserved`);
    const size = 1 << (info - 24);
    this.need(size, at, 'an argument');
    let arg = 0;
    for (let i = 0; i < size; i++) arg = arg * 256 + this.b[this.pos++];
    const min = size === 1 ? 24 : size === 2 ? 0x100 : size === 4 ? 0x10000 : TWO_32;
    if (arg < min) this.fail('non-shortest', at, `argument ${arg} written in ${size} bytes`);
    return { major, info, arg, at };
  }

  private simple(info: number, at: number): Head {
    if (info >= 20 && info <= 22) return { major: 7, info, arg: info, at };
    if (info >= 25 && info <= 27) this.fail('float', at, 'floating-point values are not used by the protocol');
    if (info === 31) this.fail('reserved-info', at, 'a break outside an indefinite-length item');
    if (info >= 28) this.fail('reserved-info', at, `additional information ${info} is reserved`);
    this.fail('simple-value', at, 'only false, true and null are allowed');
  }

  /** One whole data item at this.pos; returns the text when it is a text string. */
  item(depth: number): string | undefined {
    const h = this.head();
    switch (h.major) {
      case 0:
      case 1:
        if (h.arg > Number.MAX_SAFE_INTEGER - h.major) this.fail('integer-range', h.at, 'integer beyond ±(2^53 − 1)');
        return undefined;
      case 2:
        this.need(h.arg, h.at, 'a byte string');
        this.pos += h.arg;
        return undefined;
      case 3: {
        this.need(h.arg, h.at, 'a text string');
        const bytes = this.b.subarray(this.pos, this.pos + h.arg);
        this.pos += h.arg;
        try {
          return utf8.decode(bytes);
        } catch {
          return this.fail('invalid-utf8', h.at, 'a text string that is not valid UTF-8');
        }
      }
      case 4:
      case 5:
        return this.container(h, depth + 1);
      case 6:
        return this.fail('tag', h.at, `tag ${h.arg}: the protocol uses no tags`);
      default:
        return undefined; // false, true, null
    }
  }

  private container(h: Head, depth: number): undefined {
    if (depth > MAX_CBOR_DEPTH) this.fail('too-deep', h.at, `arrays and maps nested more than ${MAX_CBOR_DEPTH} deep`);
    const isMap = h.major === 5;
    // Every item takes at least one byte: bound the count before looping.
    this.need(isMap ? h.arg * 2 : h.arg, h.at, isMap ? `a map of ${h.arg} entries` : `an array of ${h.arg} items`);
    if (!isMap) {
      for (let i = 0; i < h.arg; i++) this.item(depth);
      return undefined;
    }
    const keys = new Set<string>();
    for (let i = 0; i < h.arg; i++) {
      const at = this.pos;
      this.need(1, at, 'a map key');
      if (this.b[at] >> 5 !== 3) this.fail('non-text-key', at, 'map keys must be text strings');
      const key = this.item(depth)!;
      if (keys.has(key)) this.fail('duplicate-key', at, `key ${JSON.stringify(key)} appears twice in one map`);
      keys.add(key);
      this.item(depth);
    }
    return undefined;
  }
}

/**
 * Throws CborError unless `bytes` is exactly one data item of the protocol's CBOR subset.
 * `depth`: how deep the item sits in a larger one (its arrays and maps count from there).
 */
export function checkStrictCbor(bytes: Uint8Array, depth = 0): void {
  if (bytes.byteLength === 0) throw new CborError('empty', 0, 'no data item');
  const end = strictItemEnd(bytes, depth).end;
  if (end !== bytes.byteLength) throw new CborError('trailing-bytes', end, `${bytes.byteLength - end} bytes after the data item`);
}

/**
 * The first data item of `bytes`, checked against the subset (at nesting `depth`) as
 * checkStrictCbor checks it, and where it ends; bytes after it are not looked at.
 * `text`: the item's value when it is a text string. A prefix of a valid item throws
 * 'truncated' with `short` set: an incremental reader waits for more and tries again.
 */
export function strictItemEnd(bytes: Uint8Array, depth = 0): { end: number; text: string | undefined } {
  const w = new Walker(bytes);
  const text = w.item(depth);
  return { end: w.pos, text };
}

/** The head (initial byte and argument) at the start of `bytes`, checked; `end`: where its content starts. */
export function strictHead(bytes: Uint8Array): { major: number; arg: number; end: number } {
  const w = new Walker(bytes);
  const h = w.head();
  return { major: h.major, arg: h.arg, end: w.pos };
}
