import { isBytes, isRecord, isUint } from './cbor.ts';
import { ProtocolError } from './errors.ts';

/**
 * The two compact delta kinds of the payload (docs/protocol.md §6):
 *
 * - sign + scales (BitDelta): {name, shape, sign: bytes, scales: bytes}. Element e of the
 *   m×n matrix (row-major, e = i·n + j) is bit (e mod 8) of byte ⌊e/8⌋ (least significant
 *   bit first); ΔW[i,j] = bit ? +s_i : −s_i with s_i the f32 scale of row i.
 * - mixed-precision low-rank: {name, shape, mixed: [group…]}, group = {rank: c, bits: 8|4|2,
 *   u, v, su, sv}. The groups' columns, in order, make U (m×r) and V (r×n), r = Σ c. A group
 *   holds signed b-bit integers q in [−(2^(b−1) − 1), 2^(b−1) − 1], two's complement, packed
 *   row-major, element e at bit offset e·b (least significant bits first); su holds one f32
 *   scale per column of the group's U, sv one per row of its V; the value is q · scale in
 *   double (exact). The apply is then exactly the low-rank one.
 */

export interface SignDelta {
  name: string;
  shape: number[];
  /** ⌈m·n/8⌉ bytes, bit e = element e (row-major), least significant bit first; 1 = +scale. */
  sign: Uint8Array;
  /** m f32 little-endian scales, one per row, finite and not negative. */
  scales: Uint8Array;
}

export type MixedBits = 8 | 4 | 2;

export interface MixedGroup {
  /** Columns of U (rows of V) in this group. */
  rank: number;
  bits: MixedBits;
  /** m×rank row-major b-bit integers, packed. */
  u: Uint8Array;
  /** rank×n row-major b-bit integers, packed. */
  v: Uint8Array;
  /** rank f32 scales: one per column of this group's U. */
  su: Uint8Array;
  /** rank f32 scales: one per row of this group's V. */
  sv: Uint8Array;
}

export interface MixedDelta {
  name: string;
  shape: number[];
  mixed: MixedGroup[];
}

export const MIXED_BITS: readonly MixedBits[] = [8, 4, 2];

function bad(detail: string): ProtocolError {
  return new ProtocolError('malformed-payload', detail);
}

function matrixDims(shape: readonly number[]): { m: number; n: number } {
  let n = 1;
  for (let i = 1; i < shape.length; i++) n *= shape[i];
  return { m: shape[0], n };
}

function checkKeys(o: Record<string, unknown>, allowed: readonly string[], where: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw bad(`${where}: unexpected field ${JSON.stringify(k)}`);
}

function checkBytes(v: unknown, length: number, where: string): Uint8Array {
  if (!isBytes(v)) throw bad(`${where} is not a byte string`);
  if (v.byteLength !== length) throw bad(`${where} has ${v.byteLength} bytes, expected ${length}`);
  return new Uint8Array(v);
}

/** f32 scales as doubles: non-finite → 'non-finite', negative → malformed. */
function scaleValues(bytes: Uint8Array, where: string): Float64Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float64Array(bytes.byteLength / 4);
  for (let j = 0; j < out.length; j++) {
    const x = dv.getFloat32(j * 4, true);
    if (!Number.isFinite(x)) throw new ProtocolError('non-finite', `${where}[${j}]`);
    if (x < 0) throw bad(`${where}[${j}] is negative (${x}): scales are not negative`);
    out[j] = x;
  }
  return out;
}

/** Bytes holding `count` values of `bits` bits. */
export function packedBytes(count: number, bits: number): number {
  return Math.ceil((count * bits) / 8);
}

/** The bits after the last value in the last byte must be zero (one encoding per delta). */
function checkPadding(bytes: Uint8Array, count: number, bits: number, where: string): void {
  const used = (count * bits) % 8;
  if (used !== 0 && bytes[bytes.length - 1] >> used !== 0) throw bad(`${where}: the padding bits after the last value are not zero`);
}

/** Signed b-bit integers (two's complement, LSB first) → doubles q · scale[row or column]. */
function unpackSigned(bytes: Uint8Array, rows: number, cols: number, bits: MixedBits, scale: Float64Array, perColumn: boolean, where: string): Float64Array {
  const out = new Float64Array(rows * cols);
  const per = 8 / bits;
  const mask = (1 << bits) - 1;
  const half = 1 << (bits - 1);
  for (let e = 0; e < out.length; e++) {
    const raw = (bytes[Math.floor(e / per)] >> ((e % per) * bits)) & mask;
    const q = raw >= half ? raw - (1 << bits) : raw;
    if (q === -half) throw bad(`${where}[${e}] is ${q}, outside ±${half - 1}`);
    out[e] = q * scale[perColumn ? e % cols : Math.floor(e / cols)]; // exact: ≤ 8-bit × 24-bit significands
  }
  return out;
}

/** Pack signed integers in ±(2^(b−1) − 1) as b-bit two's complement, LSB first. For publishers. */
export function packSigned(q: ArrayLike<number>, bits: MixedBits): Uint8Array {
  const out = new Uint8Array(packedBytes(q.length, bits));
  const per = 8 / bits;
  const mask = (1 << bits) - 1;
  const lim = (1 << (bits - 1)) - 1;
  for (let e = 0; e < q.length; e++) {
    if (!Number.isInteger(q[e]) || Math.abs(q[e]) > lim) throw new RangeError(`value ${q[e]} is not a ${bits}-bit integer in ±${lim}`);
    out[Math.floor(e / per)] |= (q[e] & mask) << ((e % per) * bits);
  }
  return out;
}

export function isSignDelta(d: object): d is SignDelta {
  return 'sign' in d;
}

export function isMixedDelta(d: object): d is MixedDelta {
  return 'mixed' in d;
}

/** The delta of a sign tensor as doubles, row-major (m·n values). */
export function signValues(d: SignDelta): Float64Array {
  const { m, n } = matrixDims(d.shape);
  if (d.sign.byteLength !== packedBytes(m * n, 1) || d.scales.byteLength !== m * 4) throw bad(`${d.name}: sign or scales have the wrong length`);
  checkPadding(d.sign, m * n, 1, `${d.name}.sign`);
  const s = scaleValues(d.scales, `${d.name}.scales`);
  const out = new Float64Array(m * n);
  for (let e = 0; e < out.length; e++) {
    const si = s[Math.floor(e / n)];
    out[e] = (d.sign[e >> 3] >> (e & 7)) & 1 ? si : -si;
  }
  return out;
}

/** The total factor rank of a mixed delta. */
export function mixedRank(d: MixedDelta): number {
  return d.mixed.reduce((a, g) => a + g.rank, 0);
}

/** The factors of a mixed delta as doubles: U (m×r) and V (r×n), row-major, groups' columns in order. */
export function mixedFactors(d: MixedDelta): { u: Float64Array; v: Float64Array; rank: number } {
  const { m, n } = matrixDims(d.shape);
  const r = mixedRank(d);
  if (d.mixed.length === 0 || r < 1 || r > Math.min(m, n)) throw bad(`${d.name}: total rank ${r} is not in 1..min(m, n) = ${Math.min(m, n)}`);
  const u = new Float64Array(m * r);
  const v = new Float64Array(r * n);
  let k0 = 0;
  d.mixed.forEach((g, gi) => {
    const at = `${d.name}.mixed[${gi}]`;
    if (!MIXED_BITS.includes(g.bits)) throw bad(`${at}: bits ${String(g.bits)} is not 8, 4 or 2`);
    const c = g.rank;
    if (g.u.byteLength !== packedBytes(m * c, g.bits) || g.v.byteLength !== packedBytes(c * n, g.bits)) throw bad(`${at}: u or v has the wrong length`);
    if (g.su.byteLength !== c * 4 || g.sv.byteLength !== c * 4) throw bad(`${at}: su or sv has the wrong length`);
    checkPadding(g.u, m * c, g.bits, `${at}.u`);
    checkPadding(g.v, c * n, g.bits, `${at}.v`);
    const gu = unpackSigned(g.u, m, c, g.bits, scaleValues(g.su, `${at}.su`), true, `${at}.u`);
    const gv = unpackSigned(g.v, c, n, g.bits, scaleValues(g.sv, `${at}.sv`), false, `${at}.v`);
    for (let i = 0; i < m; i++) for (let k = 0; k < c; k++) u[i * r + k0 + k] = gu[i * c + k];
    v.set(gv, k0 * n);
    k0 += c;
  });
  return { u, v, rank: r };
}

/** Validate a sign delta's fields (the caller checked name and shape). */
export function checkSignDelta(x: Record<string, unknown>, name: string, shape: number[], at: string): SignDelta {
  checkKeys(x, ['name', 'shape', 'sign', 'scales'], at);
  if (shape.length < 2) throw bad(`${at}: a sign delta needs a shape of rank >= 2`);
  const { m, n } = matrixDims(shape);
  const d: SignDelta = { name, shape, sign: checkBytes(x.sign, packedBytes(m * n, 1), `${at}.sign`), scales: checkBytes(x.scales, m * 4, `${at}.scales`) };
  signValues(d);
  return d;
}

/** Validate a mixed delta's fields (the caller checked name and shape). */
export function checkMixedDelta(x: Record<string, unknown>, name: string, shape: number[], at: string): MixedDelta {
  checkKeys(x, ['name', 'shape', 'mixed'], at);
  if (shape.length < 2) throw bad(`${at}: a mixed delta needs a shape of rank >= 2`);
  const { m, n } = matrixDims(shape);
  if (!Array.isArray(x.mixed) || x.mixed.length === 0) throw bad(`${at}.mixed is not a non-empty array`);
  if (x.mixed.length > Math.min(m, n)) throw bad(`${at}.mixed has more groups than min(m, n) = ${Math.min(m, n)}`);
  let total = 0;
  const groups = x.mixed.map((g, gi): MixedGroup => {
    const gat = `${at}.mixed[${gi}]`;
    if (!isRecord(g)) throw bad(`${gat} is not a map`);
    checkKeys(g, ['rank', 'bits', 'u', 'v', 'su', 'sv'], gat);
    const c = g.rank;
    if (!isUint(c) || c < 1) throw bad(`${gat}.rank ${String(c)} is not a positive integer`);
    total += c;
    if (total > Math.min(m, n)) throw bad(`${at}: the groups' ranks add up to more than min(m, n) = ${Math.min(m, n)}`);
    const bits = g.bits;
    if (bits !== 8 && bits !== 4 && bits !== 2) throw bad(`${gat}.bits ${String(bits)} is not 8, 4 or 2`);
    return {
      rank: c,
      bits,
      u: checkBytes(g.u, packedBytes(m * c, bits), `${gat}.u`),
      v: checkBytes(g.v, packedBytes(c * n, bits), `${gat}.v`),
      su: checkBytes(g.su, c * 4, `${gat}.su`),
      sv: checkBytes(g.sv, c * 4, `${gat}.sv`),
    };
  });
  const d: MixedDelta = { name, shape, mixed: groups };
  mixedFactors(d);
  return d;
}

/** The CBOR form of a compact delta, fields in a fixed order. */
export function canonicalCompact(d: SignDelta | MixedDelta): Record<string, unknown> {
  if (isSignDelta(d)) return { name: d.name, shape: d.shape, sign: d.sign, scales: d.scales };
  return {
    name: d.name,
    shape: d.shape,
    mixed: Array.isArray(d.mixed) ? d.mixed.map((g) => (isRecord(g) ? { rank: g.rank, bits: g.bits, u: g.u, v: g.v, su: g.su, sv: g.sv } : g)) : d.mixed,
  };
}

/** Stored data bytes of a compact delta. */
export function compactDataBytes(d: SignDelta | MixedDelta): number {
  if (isSignDelta(d)) return d.sign.byteLength + d.scales.byteLength;
  return d.mixed.reduce((a, g) => a + g.u.byteLength + g.v.byteLength + g.su.byteLength + g.sv.byteLength, 0);
}
