import { compactDataBytes, isMixedDelta, isSignDelta, mixedFactors, signValues } from './compact.ts';
import { decodeFactors, denseValues, encodePayload, isLowRank, lowRankDims, type Payload, type TensorDelta } from './lowrank.ts';

/** What a payload's deltas are and hold, for reports, tools and tests (no part of the apply). */

export type DeltaKind = 'low-rank' | 'dense' | 'sign' | 'mixed';

/**
 * What a delta is, for reports: its kind, factor rank (null for dense and sign), number
 * format ('f32', 'f16', 'i8', '1-bit', or the mixed groups as '8b×3+4b×5'), stored data bytes
 * (scales included) and stored values.
 */
export function describeDelta(d: TensorDelta): { kind: DeltaKind; rank: number | null; dtype: string; bytes: number; params: number } {
  const { m, n } = lowRankDims(d.shape);
  if (isLowRank(d)) {
    const bytes = d.u.byteLength + d.v.byteLength + (d.scales ? d.scales.u.byteLength + d.scales.v.byteLength : 0);
    return { kind: 'low-rank', rank: d.rank, dtype: d.dtype, bytes, params: d.rank * (m + n) };
  }
  if (isSignDelta(d)) return { kind: 'sign', rank: null, dtype: '1-bit', bytes: compactDataBytes(d), params: m * n };
  if (isMixedDelta(d)) {
    const r = d.mixed.reduce((a, g) => a + g.rank, 0);
    return { kind: 'mixed', rank: r, dtype: d.mixed.map((g) => `${g.bits}b×${g.rank}`).join('+'), bytes: compactDataBytes(d), params: r * (m + n) };
  }
  return { kind: 'dense', rank: null, dtype: 'f32', bytes: d.dense.byteLength, params: d.dense.byteLength / 4 };
}

/** ΔW of any delta as doubles, row-major (the element-wise values the apply adds). For tools and tests. */
export function deltaValues(d: TensorDelta): Float64Array {
  if (isSignDelta(d)) return signValues(d);
  if (!isLowRank(d) && !isMixedDelta(d)) return denseValues(d);
  const { m, n } = lowRankDims(d.shape);
  const { u, v, rank: r } = isMixedDelta(d) ? mixedFactors(d) : { ...decodeFactors(d), rank: d.rank };
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let k = 0; k < r; k++) {
      const uik = u[i * r + k];
      for (let j = 0; j < n; j++) out[i * n + j] += uik * v[k * n + j];
    }
  }
  return out;
}

/** Stored values (factor entries, scales excluded, and dense entries) and sizes of a payload. */
export function payloadStats(p: Payload): { tensors: number; params: number; dataBytes: number; bytes: number } {
  let params = 0;
  let dataBytes = 0;
  for (const d of p.tensors) {
    const x = describeDelta(d);
    params += x.params;
    dataBytes += x.bytes;
  }
  return { tensors: p.tensors.length, params, dataBytes, bytes: encodePayload(p).byteLength };
}
