import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { decode as cborxDecode } from 'cbor-x';
import { decodeManifest, encodeManifest, limitsOf, pathFrom, MAX_CHUNK_BYTES, MAX_PAYLOAD_BYTES, MAX_STEPS, type ManifestBody, type ManifestLimits, type ReleaseStep } from '../../protocol/manifest.ts';
import { MAX_CHUNKS } from '../../protocol/frames.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { codeOf } from '../support/protocol-errors.ts';

const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const PAYLOAD_SHA = sha256Hex(new TextEncoder().encode('payload'));
const TARGET = 'ab'.repeat(32);
const STEP: ReleaseStep = {
  updateId: PAYLOAD_SHA.slice(0, 32),
  from: 'cd'.repeat(32),
  to: TARGET,
  size: 40_000,
  sha256: PAYLOAD_SHA,
  chunkSize: 16_384,
  chunks: 3,
  listSha256: 'ef'.repeat(32),
};
const LIMITS: ManifestLimits = { payloadBytes: 1 << 20, chunks: 64, chunkBytes: 65_536 };
const BODY: ManifestBody = { model: 'resnet18', target: TARGET, steps: [STEP], limits: LIMITS };
/** The body with its one step changed; limits still the generous LIMITS. */
const withStep = (over: Partial<ReleaseStep>): ManifestBody => ({ ...BODY, steps: [{ ...STEP, ...over }] });

/** Digest number n (64 hex digits). */
const D = (n: number): string => n.toString(16).padStart(2, '0').repeat(32);
/** A well-formed step from → to; `n` makes its payload distinct. */
function step(from: string | null, to: string, n: number): ReleaseStep {
  const sha = sha256Hex(new TextEncoder().encode(`payload ${n}`));
  return { updateId: sha.slice(0, 32), from, to, size: 1000 + n, sha256: sha, chunkSize: 512, chunks: Math.ceil((1000 + n) / 512), listSha256: 'ef'.repeat(32) };
}
/** v1 → v2 → v3 → v4 (the target), listed out of order, plus a full-model step. */
const V = [D(1), D(2), D(3), D(4)];
const CHAIN: ManifestBody = { ...BODY, target: V[3], steps: [step(V[1], V[2], 2), step(V[0], V[1], 1), step(null, V[3], 9), step(V[2], V[3], 3)] };

const refuse = (b: ManifestBody) => codeOf(() => decodeManifest(encodeManifest(b)));
const raw = cborxDecode(encodeManifest(BODY)) as Record<string, unknown>;
const decodeRaw = (m: unknown) => codeOf(() => decodeManifest(cborEncode(m)));

describe('manifest encoding', () => {
  it('is byte-stable for a fixed body', () => {
    expect(sha256Hex(encodeManifest(BODY))).toBe('e42c2a1e0af5f4d4446d29ad9b0f5d23c6bf7eb8298a3f6b4438fd3c43a94bdb');
  });
  it('is a plain CBOR map with the documented keys (read back with a stock cbor-x decoder)', () => {
    const bytes = encodeManifest(BODY);
    expect(bytes[0]).toBe(0xa6); // map of 6 pairs
    const m = cborxDecode(bytes) as Record<string, unknown>;
    expect(Object.keys(m)).toEqual(['v', 'type', 'model', 'target', 'steps', 'limits']);
    expect(m).toMatchObject({ v: 1, type: 'manifest', model: 'resnet18', target: TARGET });
    expect(m.limits).toEqual({ payload: 1 << 20, chunks: 64, chunk: 65_536 });
    const steps = m.steps as Array<Record<string, unknown>>;
    expect(steps).toHaveLength(1);
    expect(Object.keys(steps[0])).toEqual(['u', 'from', 'to', 'size', 'sha256', 'chunk', 'chunks', 'list']);
    expect(steps[0]).toMatchObject({ u: PAYLOAD_SHA.slice(0, 32), from: 'cd'.repeat(32), to: TARGET, size: 40_000, sha256: PAYLOAD_SHA, chunk: 16_384, chunks: 3, list: 'ef'.repeat(32) });
    // No group, no time: those are the assignment's.
    expect(Object.keys(m)).not.toContain('group');
    expect(Object.keys(m)).not.toContain('seq');
    expect(Object.keys(m)).not.toContain('expires');
  });
  it('a sealed step carries sealed: true; others carry no sealed key', () => {
    const sealed = withStep({ sealed: true });
    const steps = (cborxDecode(encodeManifest(sealed)) as { steps: Array<Record<string, unknown>> }).steps;
    expect(steps[0].sealed).toBe(true);
    expect(decodeManifest(encodeManifest(sealed))).toEqual(sealed);
    expect(Object.keys((raw.steps as object[])[0])).not.toContain('sealed');
    const rawStep = (raw.steps as Array<Record<string, unknown>>)[0];
    for (const v of [false, 1, 'true', null]) expect(decodeRaw({ ...raw, steps: [{ ...rawStep, sealed: v }] }), String(v)).toBe('malformed-release');
  });
  it('decodes back to the same body', () => {
    expect(decodeManifest(encodeManifest(BODY))).toEqual(BODY);
    const none: ManifestBody = { ...BODY, steps: [], limits: limitsOf([]) };
    expect(decodeManifest(encodeManifest(none))).toEqual(none);
  });
});

describe('decodeManifest refusals (malformed-release)', () => {
  it('chunks must be ceil(size / chunk)', () => {
    expect(refuse(withStep({ chunks: 2 }))).toBe('malformed-release');
    expect(refuse(withStep({ chunks: 4 }))).toBe('malformed-release');
    expect(refuse(withStep({ size: 32_768, chunks: 2 }))).toBe('no error');
    expect(refuse(withStep({ size: 32_769, chunks: 2 }))).toBe('malformed-release');
    expect(refuse(withStep({ chunkSize: 0 }))).toBe('malformed-release');
    expect(refuse(withStep({ size: 0, chunks: 0 }))).toBe('malformed-release');
  });
  it('the update id must be a prefix of the payload sha256', () => {
    expect(refuse(withStep({ updateId: PAYLOAD_SHA.slice(1, 33) }))).toBe('malformed-release');
    expect(refuse(withStep({ sha256: 'f' + PAYLOAD_SHA.slice(1) }))).toBe('malformed-release');
  });
  it('a step must lead to the target, directly or through other steps', () => {
    expect(refuse(withStep({ to: 'cd'.repeat(32) }))).toBe('malformed-release'); // from itself to itself
    expect(refuse(withStep({ to: D(9) }))).toBe('malformed-release'); // leads nowhere
  });
  it('a step starting at the target is refused (leads away from it, or cycles through it)', () => {
    expect(refuse({ ...BODY, target: 'cd'.repeat(32) })).toBe('malformed-release');
    expect(refuse({ ...BODY, target: D(4), steps: [step(D(4), D(5), 1), step(D(5), D(4), 2)] })).toBe('malformed-release');
  });
  it('field shapes', () => {
    expect(refuse({ ...BODY, model: 'a/b' })).toBe('malformed-release');
    expect(refuse({ ...BODY, model: '' })).toBe('malformed-release');
    expect(refuse({ ...BODY, target: TARGET.toUpperCase() })).toBe('malformed-release');
    expect(refuse({ ...BODY, target: TARGET.slice(2) })).toBe('malformed-release');
    expect(refuse(withStep({ from: 'cd' }))).toBe('malformed-release');
    expect(refuse(withStep({ listSha256: 'EF'.repeat(32) }))).toBe('malformed-release');
    expect(refuse(withStep({ size: 1.5 }))).toBe('malformed-release');
    expect(refuse({ ...BODY, steps: Array.from({ length: MAX_STEPS + 1 }, () => STEP) })).toBe('malformed-release');
    const rawStep = (raw.steps as Array<Record<string, unknown>>)[0];
    expect(decodeRaw({ ...raw, steps: [{ ...rawStep, from: undefined }] })).toBe('malformed-release');
    expect(decodeRaw({ ...raw, steps: 'none' })).toBe('malformed-release');
    expect(decodeRaw({ ...raw, steps: [5] })).toBe('malformed-release');
    for (const v of [2, '1', null, { toString: 0 }]) expect(decodeRaw({ ...raw, v }), JSON.stringify(v)).toBe('malformed-release');
    expect(codeOf(() => decodeManifest(new Uint8Array(0)))).toBe('malformed-release');
    expect(decodeRaw([raw])).toBe('malformed-release');
    expect(codeOf(() => decodeManifest(Uint8Array.from([...encodeManifest(BODY), 0])))).toBe('malformed-release');
  });
  it('the type field must be "manifest"', () => {
    expect(decodeRaw(raw)).toBe('no error');
    for (const type of ['assignment', 'trust', 'Manifest', undefined, 1]) expect(decodeRaw({ ...raw, type }), String(type)).toBe('malformed-release');
    const { type: _t, ...noType } = raw;
    expect(decodeRaw(noType)).toBe('malformed-release');
  });
});

describe('manifest limits', () => {
  it('limitsOf just fits the steps (and is at least 1 each with no steps)', () => {
    expect(limitsOf([STEP])).toEqual({ payloadBytes: 40_000, chunks: 3, chunkBytes: 16_384 });
    expect(limitsOf(CHAIN.steps)).toEqual({ payloadBytes: 1009, chunks: 2, chunkBytes: 512 });
    expect(limitsOf([])).toEqual({ payloadBytes: 1, chunks: 1, chunkBytes: 1 });
    expect(refuse({ ...CHAIN, limits: limitsOf(CHAIN.steps) })).toBe('no error');
  });
  it('a step over the limits is refused, at the limit accepted', () => {
    const exact = limitsOf([STEP]);
    expect(refuse({ ...BODY, limits: exact })).toBe('no error');
    expect(refuse({ ...BODY, limits: { ...exact, payloadBytes: 39_999 } })).toBe('malformed-release');
    expect(refuse({ ...BODY, limits: { ...exact, chunks: 2 } })).toBe('malformed-release');
    expect(refuse({ ...BODY, limits: { ...exact, chunkBytes: 16_383 } })).toBe('malformed-release');
  });
  it('limits fields are validated', () => {
    const l = raw.limits as Record<string, unknown>;
    expect(decodeRaw({ ...raw, limits: { payload: MAX_PAYLOAD_BYTES, chunks: MAX_CHUNKS, chunk: MAX_CHUNK_BYTES } })).toBe('no error');
    const bads: unknown[] = [
      undefined,
      null,
      [],
      'big',
      { ...l, payload: 0 },
      { ...l, chunks: 0 },
      { ...l, chunk: 0 },
      { ...l, payload: MAX_PAYLOAD_BYTES + 1 },
      { ...l, chunks: MAX_CHUNKS + 1 },
      { ...l, chunk: MAX_CHUNK_BYTES + 1 },
      { ...l, payload: -1 },
      { ...l, chunks: 1.5 },
      { ...l, chunk: '65536' },
      { payload: l.payload, chunks: l.chunks },
    ];
    bads.forEach((limits, k) => expect(decodeRaw({ ...raw, limits }), `case ${k}`).toBe('malformed-release'));
    const { limits: _l, ...noLimits } = raw;
    expect(decodeRaw(noLimits)).toBe('malformed-release');
  });
});

describe('chains of steps', () => {
  const noFull: ManifestBody = { ...CHAIN, steps: CHAIN.steps.filter((s) => s.from !== null) };
  const [s12, s01, full, s23] = CHAIN.steps;

  it('accepts a chain of 3 steps in any order, with or without a full-model step', () => {
    expect(decodeManifest(encodeManifest(CHAIN))).toEqual(CHAIN);
    expect(decodeManifest(encodeManifest(noFull))).toEqual(noFull);
    // Two chains meeting on the way to the target.
    expect(refuse({ ...noFull, steps: [...noFull.steps, step(D(5), V[2], 5)] })).toBe('no error');
    // A full-model step alone.
    expect(refuse({ ...CHAIN, steps: [full] })).toBe('no error');
    expect(decodeManifest(encodeManifest(CHAIN)).steps[2].from).toBeNull();
  });
  it('pathFrom gives the remaining steps of the chain, in order, from each digest on it', () => {
    expect(pathFrom(CHAIN, V[0])).toEqual([s01, s12, s23]);
    expect(pathFrom(CHAIN, V[1])).toEqual([s12, s23]);
    expect(pathFrom(CHAIN, V[2])).toEqual([s23]);
    expect(pathFrom(noFull, V[0])).toEqual([s01, s12, s23]);
    expect(pathFrom(noFull, V[2])).toEqual([s23]);
  });
  it('pathFrom gives the full-model step to a device on no chain, and nothing when there is none', () => {
    expect(pathFrom(CHAIN, D(7))).toEqual([full]);
    expect(pathFrom(noFull, D(7))).toBeUndefined();
    expect(pathFrom({ ...CHAIN, steps: [] }, D(7))).toBeUndefined();
    expect(pathFrom(BODY, 'cd'.repeat(32))).toEqual([STEP]);
  });
  it('refuses two steps from the same digest', () => {
    expect(refuse({ ...noFull, steps: [...noFull.steps, step(V[0], V[2], 6)] })).toBe('malformed-release');
    expect(refuse({ ...noFull, steps: [...noFull.steps, s01] })).toBe('malformed-release');
  });
  it('refuses a cycle', () => {
    expect(refuse({ ...noFull, steps: [step(V[0], V[1], 1), step(V[1], V[2], 2), step(V[2], V[0], 3)] })).toBe('malformed-release');
    // A cycle beside a good chain.
    expect(refuse({ ...noFull, steps: [...noFull.steps, step(D(5), D(6), 5), step(D(6), D(5), 6)] })).toBe('malformed-release');
  });
  it('refuses a step that leads nowhere', () => {
    expect(refuse({ ...noFull, steps: [...noFull.steps, step(D(5), D(6), 5)] })).toBe('malformed-release');
    expect(refuse({ ...noFull, steps: [s01, s12] })).toBe('malformed-release');
  });
  it('refuses two full-model steps, and a full-model step that does not lead to the target', () => {
    expect(refuse({ ...CHAIN, steps: [...CHAIN.steps, step(null, V[3], 8)] })).toBe('malformed-release');
    expect(refuse({ ...CHAIN, steps: [step(null, V[2], 8)] })).toBe('malformed-release');
    expect(refuse({ ...noFull, steps: [...noFull.steps, step(null, V[1], 8)] })).toBe('malformed-release');
  });
});
