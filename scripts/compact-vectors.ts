/**
 * Conformance cases for the compact delta kinds (docs/protocol.md §6, §7.3): a sign + scales
 * delta and a mixed-precision low-rank delta on base.safetensors, accepted with exact results,
 * and one refused case per rule of theirs. Deterministic: no clock, no randomness.
 */
import { cborEncode } from '../protocol/cbor.ts';
import { packSigned } from '../protocol/compact.ts';
import { encodeValues } from '../protocol/dtypes.ts';
import { decodePayload } from '../protocol/lowrank.ts';
import { applyToModel } from '../protocol/delta-apply.ts';
import type { Code } from './case-vectors.ts';

const f32 = (values: number[]) => encodeValues(values, 'F32');

export interface CaseSink {
  baseBytes: Uint8Array;
  baseDigest: string;
  yes: (name: string, model: string, payload: Uint8Array, why: string) => void;
  no: (name: string, payload: Uint8Array, expect: Code, why: string) => void;
}

export function compactCases(s: CaseSink): void {
  // fc1.weight [8, 6] (F32): sign + scales. 48 bits, byte b = 0x35 + 29·b (mod 256).
  const sign = Uint8Array.from({ length: 6 }, (_, b) => (0x35 + 29 * b) & 0xff);
  const signScales = f32([2 ** -3, 2 ** -24, 0.01, 0.5, 1e-3, 0, 3, 2 ** -10]);
  const signDelta = { name: 'fc1.weight', shape: [8, 6], sign, scales: signScales };
  // attn.f16 [5, 4] (F16) and head.bf16 [3, 7] (BF16): mixed groups of 8, 4 and 2 bits.
  const ints = (n: number, lim: number, seed: number) => Array.from({ length: n }, (_, e) => ((e * 7 + seed) % (2 * lim + 1)) - lim);
  const group = (m: number, n: number, rank: number, bits: 8 | 4 | 2, seed: number) => {
    const lim = 2 ** (bits - 1) - 1;
    return {
      rank,
      bits,
      u: packSigned(ints(m * rank, lim, seed), bits),
      v: packSigned(ints(rank * n, lim, seed + 3), bits),
      su: f32(Array.from({ length: rank }, (_, k) => 2 ** -(4 + k))),
      sv: f32(Array.from({ length: rank }, (_, k) => 2 ** -(6 + 2 * k))),
    };
  };
  const attnMixed = { name: 'attn.f16', shape: [5, 4], mixed: [group(5, 4, 1, 8, 1), group(5, 4, 2, 4, 2), group(5, 4, 1, 2, 3)] };
  const headMixed = { name: 'head.bf16', shape: [3, 7], mixed: [group(3, 7, 1, 4, 4), group(3, 7, 2, 2, 5)] };
  const accepted = (name: string, tensors: unknown[], why: string): void => {
    const draft = { v: 1, base: s.baseDigest, target: '0'.repeat(64), tensors };
    const target = applyToModel(s.baseBytes, decodePayload(cborEncode(draft))).digest;
    s.yes(name, 'base.safetensors', cborEncode({ ...draft, target }), why);
  };
  accepted('sign', [signDelta], 'fc1.weight += (bit ? +s_i : −s_i): 48 sign bits in 6 bytes, bit e of byte ⌊e/8⌋ least significant first, one f32 scale per row (one of them 0)');
  accepted(
    'mixed',
    [attnMixed, headMixed],
    'mixed-precision factors: attn.f16 in groups of 8, 4 and 2 bits (ranks 1, 2, 1), head.bf16 in 4 and 2 bits; q·scale per column of U and row of V, then the low-rank apply with one rounding to F16 / BF16',
  );

  const raw = (tensors: unknown[]) => cborEncode({ v: 1, base: s.baseDigest, target: '0'.repeat(64), tensors });
  const g = attnMixed.mixed[0];
  const mixedWith = (o: Record<string, unknown>) => raw([{ ...attnMixed, mixed: [{ ...g, ...o }] }]);
  const bad = (name: string, payload: Uint8Array, why: string, expect: Code = 'malformed-payload') => s.no(name, payload, expect, why);
  bad('sign-short', raw([{ ...signDelta, sign: sign.subarray(0, 5) }]), 'sign of 5 bytes for 48 elements (6 needed)');
  bad('sign-padding', raw([{ name: 'attn.f16', shape: [5, 4], sign: Uint8Array.of(0, 0, 0x10), scales: f32([1, 1, 1, 1, 1]) }]), '20 sign bits in 3 bytes with a padding bit (bit 20) set');
  bad('sign-scales-length', raw([{ ...signDelta, scales: signScales.subarray(0, 28) }]), '7 scales for 8 rows');
  bad('sign-scale-negative', raw([{ ...signDelta, scales: f32([1, -1, 1, 1, 1, 1, 1, 1]) }]), 'a negative scale');
  bad('sign-scale-nan', raw([{ ...signDelta, scales: f32([1, NaN, 1, 1, 1, 1, 1, 1]) }]), 'NaN in a sign scale', 'non-finite');
  bad('sign-1d', raw([{ name: 'fc1.bias', shape: [8], sign: Uint8Array.of(0), scales: f32(new Array(8).fill(1)) }]), 'a sign delta for a 1-D tensor (tensor rank < 2)');
  bad('sign-and-dense', raw([{ ...signDelta, dense: new Uint8Array(192) }]), 'a delta with both sign and dense');
  bad('mixed-bits-3', mixedWith({ bits: 3 }), 'a group of 3 bits (only 8, 4, 2)');
  bad('mixed-bits-1', mixedWith({ bits: 1 }), 'a group of 1 bit (sign deltas are their own kind)');
  bad('mixed-length', mixedWith({ u: g.u.subarray(1) }), "a group's u one byte short");
  bad('mixed-scales-length', mixedWith({ su: f32([1, 1]) }), 'two su scales for a group of rank 1');
  bad('mixed-scale-inf', mixedWith({ sv: f32([Infinity]) }), '+infinity in a group scale', 'non-finite');
  bad('mixed-int-out-of-range', mixedWith({ u: Uint8Array.of(0x80, 0, 0, 0, 0) }), 'an 8-bit value of −128 (outside ±127)');
  bad('mixed-rank-over', raw([{ ...attnMixed, mixed: [group(5, 4, 3, 8, 1), group(5, 4, 2, 4, 2)] }]), 'groups of ranks 3 + 2 = 5 on a [5, 4] tensor (over min(m, n) = 4)');
  bad('mixed-empty', raw([{ ...attnMixed, mixed: [] }]), 'a mixed delta with no group');
  bad('mixed-on-i8', raw([{ name: 'embed.q', shape: [4, 4], mixed: [group(4, 4, 1, 8, 1)] }]), 'a mixed delta on the I8 tensor embed.q', 'unsupported-dtype');
}
