import { cborDecode, cborEncode, isBytes, isHex, isRecord, isUint } from './cbor.ts';
import { CborMapScanner, StreamedArray, type ScannedMap, type StreamedItem } from './cbor-stream.ts';
import { ProtocolError } from './errors.ts';
import { f16BitsToNumber } from './dtypes.ts';
import { isWellFormedName } from './safetensors.ts';
import { canonicalCompact, checkMixedDelta, checkSignDelta, type MixedDelta, type SignDelta } from './compact.ts';

/**
 * The low-rank update payload (CBOR, plain maps, byte strings):
 *   { v: 1, base: digest hex, target: digest hex, tensors: TensorDelta[] }
 * A low-rank delta of a tensor of shape [m, ...rest] (n = product(rest)) is
 * U (m×r) · V (r×n), row-major factors encoded as f32/f16 little-endian or i8
 * with f32 per-row scales (value = q · scale). A dense delta is f32 values.
 */

export type FactorDtype = 'f32' | 'f16' | 'i8';

export interface LowRankDelta {
  name: string;
  /** The model tensor's shape, rank >= 2. */
  shape: number[];
  rank: number;
  dtype: FactorDtype;
  /** m×r row-major. */
  u: Uint8Array;
  /** r×n row-major. */
  v: Uint8Array;
  /** Only for i8: f32 little-endian scale per row of U (m values) and per row of V (r values). */
  scales?: { u: Uint8Array; v: Uint8Array };
}

export interface DenseDelta {
  name: string;
  shape: number[];
  /** f32 little-endian, product(shape) values. */
  dense: Uint8Array;
}

export type { MixedDelta, MixedGroup, SignDelta } from './compact.ts';

/** Low-rank, dense, sign + scales, or mixed-precision low-rank (protocol/compact.ts). */
export type TensorDelta = LowRankDelta | DenseDelta | SignDelta | MixedDelta;

export interface Payload {
  v: 1;
  base: string;
  target: string;
  tensors: TensorDelta[];
}

export interface PayloadLimits {
  /** Most tensors a payload may touch (default 65536). */
  maxTensors?: number;
  /** Most payload bytes (default: no limit). */
  maxBytes?: number;
}

export const DEFAULT_MAX_TENSORS = 65536;
const FACTOR_SIZE: Record<FactorDtype, number> = { f32: 4, f16: 2, i8: 1 };

function bad(detail: string): ProtocolError {
  return new ProtocolError('malformed-payload', detail);
}

export function isLowRank(d: TensorDelta): d is LowRankDelta {
  return 'rank' in d;
}

export function isDense(d: TensorDelta): d is DenseDelta {
  return 'dense' in d;
}

/** m = shape[0], n = product(shape[1..]): the matrix a low-rank delta factors. */
export function lowRankDims(shape: readonly number[]): { m: number; n: number } {
  let n = 1;
  for (let i = 1; i < shape.length; i++) n *= shape[i];
  return { m: shape[0], n };
}

/** The number of elements of a tensor of `shape`. */
export function elementCount(shape: readonly number[]): number {
  let c = 1;
  for (const d of shape) c *= d;
  return c;
}

function checkKeys(o: Record<string, unknown>, allowed: readonly string[], where: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw bad(`${where}: unexpected field ${JSON.stringify(k)}`);
}

function checkShape(v: unknown, where: string): number[] {
  if (!Array.isArray(v)) throw bad(`${where}: shape is not an array`);
  let c = 1;
  for (const d of v) {
    if (!isUint(d)) throw bad(`${where}: shape has a dim that is not a non-negative integer`);
    c *= d;
    if (!Number.isSafeInteger(c)) throw bad(`${where}: shape too large`);
  }
  return (v as number[]).slice();
}

function checkBytes(v: unknown, length: number, where: string, scratch?: FactorScratch, slot: ByteSlot = ByteSlot.Dense): Uint8Array {
  if (!isBytes(v)) throw bad(`${where} is not a byte string`);
  if (v.byteLength !== length) throw bad(`${where} has ${v.byteLength} bytes, expected ${length}`);
  // An aligned copy, not a view into the CBOR input: a new array, or one of the scratch's reused ones.
  return scratch?.reusesBytes ? scratch.copy(slot, v) : new Uint8Array(v);
}

/**
 * Arrays of doubles reused from tensor to tensor (a device decoding and applying a
 * payload one tensor at a time), so that each tensor's factors do not leave a new
 * allocation behind; each slot grows to the largest tensor's need.
 */
export class FactorScratch {
  private readonly slots: Float64Array[] = [];
  private readonly byteSlots: Uint8Array[] = [];
  /**
   * With `reuseBytes`, the factors' bytes are copied into arrays reused too (a device's
   * apply and verify): a delta decoded with this scratch is valid until its next use, like
   * the doubles. Without (decodePayload keeps every delta), each delta gets its own copy.
   */
  readonly reusesBytes: boolean;

  constructor(opts: { reuseBytes?: boolean } = {}) {
    this.reusesBytes = opts.reuseBytes === true;
  }

  /** `length` doubles of slot `slot` (their old values are not cleared). */
  take(slot: number, length: number): Float64Array {
    let b = this.slots[slot];
    if (!b || b.length < length) b = this.slots[slot] = new Float64Array(length);
    return b.length === length ? b : b.subarray(0, length);
  }

  /** `bytes` copied into byte slot `slot` (grown to the largest need; the result is a view of it). */
  copy(slot: number, bytes: Uint8Array): Uint8Array {
    let b = this.byteSlots[slot];
    if (!b || b.byteLength < bytes.byteLength) b = this.byteSlots[slot] = new Uint8Array(bytes.byteLength);
    const out = b.byteLength === bytes.byteLength ? b : b.subarray(0, bytes.byteLength);
    out.set(bytes);
    return out;
  }
}

/** FactorScratch's byte slots: the byte strings of one delta. */
const ByteSlot = { Dense: 0, U: 1, V: 2, ScalesU: 3, ScalesV: 4 } as const;
type ByteSlot = (typeof ByteSlot)[keyof typeof ByteSlot];

/** FactorScratch's slots: what each array holds (several are in use at once within one tensor). */
const Slot = { ScalesU: 0, ScalesV: 1, FactorU: 2, FactorV: 3, Values: 4, Acc: 5 } as const;
type Slot = (typeof Slot)[keyof typeof Slot];

function doubles(length: number, scratch: FactorScratch | undefined, slot: Slot): Float64Array {
  return scratch ? scratch.take(slot, length) : new Float64Array(length);
}

/** `length` doubles for one output row's sums (protocol/delta-apply.ts): the scratch's own slot, or a new array. */
export function rowAccumulator(length: number, scratch?: FactorScratch): Float64Array {
  return doubles(length, scratch, Slot.Acc);
}

/** f32 little-endian bytes to doubles, exactly; throws 'non-finite' on NaN/Inf. */
function f32Values(bytes: Uint8Array, where: string, scratch?: FactorScratch, slot: Slot = Slot.Values): Float64Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = doubles(bytes.byteLength / 4, scratch, slot);
  for (let j = 0; j < out.length; j++) {
    const x = dv.getFloat32(j * 4, true);
    if (!Number.isFinite(x)) throw new ProtocolError('non-finite', `${where}[${j}]`);
    out[j] = x;
  }
  return out;
}

function factorValues(bytes: Uint8Array, dtype: FactorDtype, rowScales: Float64Array | undefined, cols: number, where: string, scratch: FactorScratch | undefined, slot: Slot): Float64Array {
  if (dtype === 'f32') return f32Values(bytes, where, scratch, slot);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = doubles(bytes.byteLength / FACTOR_SIZE[dtype], scratch, slot);
  if (dtype === 'f16') {
    for (let j = 0; j < out.length; j++) {
      const x = f16BitsToNumber(dv.getUint16(j * 2, true));
      if (!Number.isFinite(x)) throw new ProtocolError('non-finite', `${where}[${j}]`);
      out[j] = x;
    }
    return out;
  }
  for (let j = 0; j < out.length; j++) {
    out[j] = dv.getInt8(j) * rowScales![Math.floor(j / cols)]; // exact: 8-bit × 24-bit significands
  }
  return out;
}

/**
 * The factors of a low-rank delta as doubles: U (m×r) and V (r×n), row-major.
 * With `scratch` they are views of its arrays, valid until its next use.
 */
export function decodeFactors(d: LowRankDelta, scratch?: FactorScratch): { u: Float64Array; v: Float64Array } {
  const { m, n } = lowRankDims(d.shape);
  const r = d.rank;
  if (!isUint(r) || r < 1 || r > Math.min(m, n)) throw bad(`${d.name}: rank ${String(r)} is not in 1..min(m, n)`);
  let su: Float64Array | undefined;
  let sv: Float64Array | undefined;
  if (d.dtype === 'i8') {
    if (!d.scales) throw bad(`${d.name}: i8 factors without scales`);
    su = f32Values(d.scales.u, `${d.name}.scales.u`, scratch, Slot.ScalesU);
    sv = f32Values(d.scales.v, `${d.name}.scales.v`, scratch, Slot.ScalesV);
    if (su.length !== m || sv.length !== r) throw bad(`${d.name}: scales have the wrong length`);
  }
  const u = factorValues(d.u, d.dtype, su, r, `${d.name}.u`, scratch, Slot.FactorU);
  const v = factorValues(d.v, d.dtype, sv, n, `${d.name}.v`, scratch, Slot.FactorV);
  if (u.length !== m * r || v.length !== r * n) throw bad(`${d.name}: factors have the wrong length`);
  return { u, v };
}

/** The dense delta's values as doubles (with `scratch`: a view of its array, valid until its next use). */
export function denseValues(d: DenseDelta, scratch?: FactorScratch): Float64Array {
  if (d.dense.byteLength !== elementCount(d.shape) * 4) throw bad(`${d.name}: dense has the wrong length`);
  return f32Values(d.dense, `${d.name}.dense`, scratch, Slot.Values);
}

function checkDelta(x: unknown, i: number, scratch?: FactorScratch): TensorDelta {
  const where = `tensors[${i}]`;
  if (!isRecord(x)) throw bad(`${where} is not a map`);
  if (typeof x.name !== 'string' || x.name.length === 0 || !isWellFormedName(x.name)) throw bad(`${where}.name is not a non-empty string`);
  const name = x.name;
  const at = `tensor ${JSON.stringify(name)}`;
  const shape = checkShape(x.shape, at);
  if ('sign' in x) return checkSignDelta(x, name, shape, at);
  if ('mixed' in x) return checkMixedDelta(x, name, shape, at);
  if ('dense' in x) {
    checkKeys(x, ['name', 'shape', 'dense'], at);
    const d: DenseDelta = { name, shape, dense: checkBytes(x.dense, elementCount(shape) * 4, `${at}.dense`, scratch, ByteSlot.Dense) };
    denseValues(d, scratch);
    return d;
  }
  checkKeys(x, ['name', 'shape', 'rank', 'dtype', 'u', 'v', 'scales'], at);
  if (shape.length < 2) throw bad(`${at}: a low-rank delta needs a shape of rank >= 2`);
  const { m, n } = lowRankDims(shape);
  const r = x.rank;
  if (!isUint(r) || r < 1 || r > Math.min(m, n)) throw bad(`${at}: rank ${String(r)} is not in 1..min(m, n) = ${Math.min(m, n)}`);
  const dtype = x.dtype;
  if (dtype !== 'f32' && dtype !== 'f16' && dtype !== 'i8') throw bad(`${at}: factor dtype ${String(dtype)} is not f32, f16 or i8`);
  const size = FACTOR_SIZE[dtype];
  const d: LowRankDelta = {
    name,
    shape,
    rank: r,
    dtype,
    u: checkBytes(x.u, m * r * size, `${at}.u`, scratch, ByteSlot.U),
    v: checkBytes(x.v, r * n * size, `${at}.v`, scratch, ByteSlot.V),
  };
  if (dtype === 'i8') {
    const s = x.scales;
    if (!isRecord(s)) throw bad(`${at}: i8 factors need scales {u, v}`);
    checkKeys(s, ['u', 'v'], `${at}.scales`);
    d.scales = { u: checkBytes(s.u, m * 4, `${at}.scales.u`, scratch, ByteSlot.ScalesU), v: checkBytes(s.v, r * 4, `${at}.scales.v`, scratch, ByteSlot.ScalesV) };
  } else if ('scales' in x) {
    throw bad(`${at}: scales are only for i8 factors`);
  }
  decodeFactors(d, scratch);
  return d;
}

/** The payload's map without its tensors: version, digests, and the number of tensors within the limit. */
function checkPayloadHead(x: unknown, limits: PayloadLimits): { base: string; target: string; count: number } {
  if (!isRecord(x)) throw bad('payload is not a map');
  checkKeys(x, ['v', 'base', 'target', 'tensors'], 'payload');
  if (x.v !== 1) throw bad(`unknown payload version ${String(x.v)}`);
  if (!isHex(x.base, 64)) throw bad('base is not a 64-digit lowercase hex digest');
  if (!isHex(x.target, 64)) throw bad('target is not a 64-digit lowercase hex digest');
  if (!Array.isArray(x.tensors) && !(x.tensors instanceof StreamedArray)) throw bad('tensors is not an array');
  const max = limits.maxTensors ?? DEFAULT_MAX_TENSORS;
  if (x.tensors.length > max) throw new ProtocolError('payload-too-large', `${x.tensors.length} tensors, limit ${max}`);
  return { base: x.base, target: x.target, count: x.tensors.length };
}

/** Validate a decoded value as a payload; returns a clean copy. */
export function checkPayload(x: unknown, limits: PayloadLimits = {}): Payload {
  const { base, target } = checkPayloadHead(x, limits);
  const names = new Set<string>();
  const scratch = new FactorScratch();
  const tensors = (x as { tensors: unknown[] }).tensors.map((t, i) => uniqueDelta(names, checkDelta(t, i, scratch)));
  return { v: 1, base, target, tensors };
}

function uniqueDelta(names: Set<string>, d: TensorDelta): TensorDelta {
  if (names.has(d.name)) throw bad(`tensor ${JSON.stringify(d.name)} appears twice`);
  names.add(d.name);
  return d;
}

function notCbor(e: unknown): ProtocolError {
  return bad(`not CBOR: ${(e as Error)?.message ?? String(e)}`);
}

/** What a payload's first pass found: its digests and where each tensor's CBOR item lies in the bytes. */
export interface PayloadOutline {
  base: string;
  target: string;
  items: StreamedItem[];
}

/**
 * A payload decoded without ever holding it whole (docs/protocol.md §6): first its
 * bytes are pushed in order, in chunks of any size (`push`, then `end`), which
 * checks the CBOR subset throughout and the map around the tensors and gives each
 * tensor's place; then each tensor's item is read back and given to `tensor`, in
 * order, which checks it as decodePayload does. The same rules in the same order
 * as decodePayload (which is this, on bytes in memory): the same reason codes.
 */
export class PayloadDecoder {
  private readonly scanner: CborMapScanner;
  private readonly names = new Set<string>();
  private readonly scratch = new FactorScratch();

  constructor(private readonly limits: PayloadLimits = {}) {
    this.scanner = new CborMapScanner('tensors', limits.maxTensors ?? DEFAULT_MAX_TENSORS);
  }

  /** Bytes it buffers between pushes (at most about one tensor's item and one chunk). */
  get heldCapacity(): number {
    return this.scanner.heldCapacity;
  }

  push(chunk: Uint8Array): void {
    try {
      this.scanner.push(chunk);
    } catch (e) {
      throw notCbor(e);
    }
  }

  end(): PayloadOutline {
    let scanned: ScannedMap;
    try {
      scanned = this.scanner.end();
    } catch (e) {
      throw notCbor(e);
    }
    const { base, target } = checkPayloadHead(scanned.value, this.limits);
    return { base, target, items: scanned.items };
  }

  /** The tensor at `item` (its bytes), checked; each name may come once. `scratch`: see FactorScratch (default: the decoder's own). */
  tensor(item: StreamedItem, bytes: Uint8Array, scratch: FactorScratch = this.scratch): TensorDelta {
    return uniqueDelta(this.names, decodeTensorItem(item, bytes, scratch));
  }
}

/** One tensor of a payload already decoded once (PayloadDecoder): its CBOR item's bytes to its delta, checked. */
export function decodeTensorItem(item: StreamedItem, bytes: Uint8Array, scratch?: FactorScratch): TensorDelta {
  if (bytes.byteLength !== item.length) throw bad(`tensors[${item.index}]: ${bytes.byteLength} bytes, the item has ${item.length}`);
  let x: unknown;
  try {
    x = cborDecode(bytes, 2);
  } catch (e) {
    throw notCbor(e);
  }
  return checkDelta(x, item.index, scratch);
}

function canonical(p: Payload): unknown {
  return {
    v: p.v,
    base: p.base,
    target: p.target,
    tensors: p.tensors.map((d) => {
      if (!isRecord(d)) return d;
      if ('sign' in d || 'mixed' in d) return canonicalCompact(d as SignDelta | MixedDelta);
      if ('dense' in d) return { name: d.name, shape: d.shape, dense: d.dense };
      const l = d as LowRankDelta;
      const out: Record<string, unknown> = { name: l.name, shape: l.shape, rank: l.rank, dtype: l.dtype, u: l.u, v: l.v };
      if (l.scales !== undefined) out.scales = isRecord(l.scales) ? { u: l.scales.u, v: l.scales.v } : l.scales;
      return out;
    }),
  };
}

/** CBOR bytes of a payload; validates it first (same rules as decodePayload). Field order is fixed. */
export function encodePayload(p: Payload): Uint8Array {
  const c = canonical(p);
  checkPayload(c, { maxTensors: Number.MAX_SAFE_INTEGER });
  return cborEncode(c);
}

/** Decode and strictly validate a payload held in memory (PayloadDecoder, fed it all at once). */
export function decodePayload(bytes: Uint8Array, limits: PayloadLimits = {}): Payload {
  if (limits.maxBytes !== undefined && bytes.byteLength > limits.maxBytes) {
    throw new ProtocolError('payload-too-large', `${bytes.byteLength} bytes, limit ${limits.maxBytes}`);
  }
  const decoder = new PayloadDecoder(limits);
  decoder.push(bytes);
  const { base, target, items } = decoder.end();
  const tensors = items.map((it) => decoder.tensor(it, bytes.subarray(it.offset, it.offset + it.length)));
  return { v: 1, base, target, tensors };
}

/**
 * Quantize a rows×cols row-major matrix to i8 with one f32 scale per row
 * (scale = fround(max|x| / 127), q = clamp(round(x / scale))). For publishers.
 */
export function quantizeRowsI8(values: ArrayLike<number>, rows: number, cols: number): { q: Uint8Array; scales: Uint8Array } {
  if (values.length !== rows * cols) throw new RangeError(`${values.length} values for ${rows}×${cols}`);
  const q = new Int8Array(rows * cols);
  const scales = new Float32Array(rows);
  for (let i = 0; i < rows; i++) {
    let max = 0;
    for (let j = 0; j < cols; j++) max = Math.max(max, Math.abs(values[i * cols + j]));
    const s = Math.fround(max / 127);
    scales[i] = s;
    if (s === 0 || !Number.isFinite(s)) continue;
    for (let j = 0; j < cols; j++) q[i * cols + j] = Math.max(-127, Math.min(127, Math.round(values[i * cols + j] / s)));
  }
  const sb = new Uint8Array(rows * 4);
  const dv = new DataView(sb.buffer);
  for (let i = 0; i < rows; i++) dv.setFloat32(i * 4, scales[i], true);
  return { q: new Uint8Array(q.buffer), scales: sb };
}
