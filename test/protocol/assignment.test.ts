import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { decode as cborxDecode } from 'cbor-x';
import { decodeAssignment, encodeAssignment, maxSeqAt, type AssignmentBody } from '../../protocol/assignment.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { codeOf } from '../support/protocol-errors.ts';

const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const BODY: AssignmentBody = {
  model: 'resnet18',
  group: 'canary',
  seq: 7,
  issued: 1_700_000_000,
  expires: 1_700_086_400,
  manifest: '12'.repeat(32),
  rollback: false,
  previous: null,
};

const refuse = (b: AssignmentBody) => codeOf(() => decodeAssignment(encodeAssignment(b)));
const raw = cborxDecode(encodeAssignment(BODY)) as Record<string, unknown>;
const decodeRaw = (m: unknown) => codeOf(() => decodeAssignment(cborEncode(m)));

describe('assignment encoding', () => {
  it('is byte-stable for a fixed body', () => {
    expect(sha256Hex(encodeAssignment(BODY))).toBe('bbc44f58078190ecd6f93e4952e44cda6ee64bf64a15d9c7188f20e20c10a7b8');
  });
  it('is a plain CBOR map with the documented keys (read back with a stock cbor-x decoder)', () => {
    const bytes = encodeAssignment(BODY);
    expect(bytes[0]).toBe(0xa8); // map of 8 pairs
    expect(Object.keys(raw)).toEqual(['v', 'type', 'model', 'group', 'seq', 'issued', 'expires', 'manifest']);
    expect(raw).toEqual({ v: 1, type: 'assignment', model: 'resnet18', group: 'canary', seq: 7, issued: 1_700_000_000, expires: 1_700_086_400, manifest: '12'.repeat(32) });
    // No steps, no target: those are the manifest's.
    expect(Object.keys(raw)).not.toContain('target');
    expect(Object.keys(raw)).not.toContain('steps');
  });
  it('decodes back to the same body', () => {
    expect(decodeAssignment(encodeAssignment(BODY))).toEqual(BODY);
    const big: AssignmentBody = { ...BODY, seq: maxSeqAt(2 ** 40), issued: 2 ** 40, expires: Number.MAX_SAFE_INTEGER };
    expect(decodeAssignment(encodeAssignment(big))).toEqual(big);
  });
  it('refuses a seq absurd for its issued time (above issued x 1000 + 999) when signing and when decoding', () => {
    expect(maxSeqAt(1_700_000_000)).toBe(1_700_000_000_999);
    expect(decodeAssignment(encodeAssignment({ ...BODY, seq: maxSeqAt(BODY.issued) })).seq).toBe(maxSeqAt(BODY.issued));
    expect(() => encodeAssignment({ ...BODY, seq: maxSeqAt(BODY.issued) + 1 })).toThrow(/absurd/);
    const raw = cborxDecode(encodeAssignment(BODY)) as Record<string, unknown>;
    expect(() => decodeAssignment(cborEncode({ ...raw, seq: Number.MAX_SAFE_INTEGER - 1 }))).toThrow(/absurd/);
  });
});

describe('rollback and previous', () => {
  it('round-trips rollback and previous', () => {
    const back: AssignmentBody = { ...BODY, rollback: true, previous: 'ab'.repeat(32) };
    const bytes = encodeAssignment(back);
    const m = cborxDecode(bytes) as Record<string, unknown>;
    expect(m).toMatchObject({ rollback: true, previous: 'ab'.repeat(32) });
    expect(Object.keys(m)).toEqual(['v', 'type', 'model', 'group', 'seq', 'issued', 'expires', 'manifest', 'rollback', 'previous']);
    expect(decodeAssignment(bytes)).toEqual(back);
    const fwd: AssignmentBody = { ...BODY, previous: 'cd'.repeat(32) };
    expect(decodeAssignment(encodeAssignment(fwd))).toEqual(fwd);
    expect(Object.keys(cborxDecode(encodeAssignment(fwd)) as object)).not.toContain('rollback');
  });
  it('a body without them decodes with rollback false and previous null', () => {
    expect(Object.keys(raw)).not.toContain('rollback');
    expect(Object.keys(raw)).not.toContain('previous');
    const b = decodeAssignment(cborEncode(raw));
    expect(b.rollback).toBe(false);
    expect(b.previous).toBeNull();
  });
  it('refuses rollback other than true', () => {
    expect(decodeRaw({ ...raw, rollback: true })).toBe('no error');
    for (const v of [false, 1, 'true', null, 0]) expect(decodeRaw({ ...raw, rollback: v }), String(v)).toBe('malformed-release');
  });
  it('refuses a previous that is not a 64-hex-digit digest', () => {
    expect(decodeRaw({ ...raw, previous: 'cd'.repeat(32) })).toBe('no error');
    for (const v of ['cd', 'CD'.repeat(32), 'zz'.repeat(32), null, 5, new Uint8Array(32)]) {
      expect(decodeRaw({ ...raw, previous: v }), String(v)).toBe('malformed-release');
    }
  });
});

describe('decodeAssignment refusals (malformed-release)', () => {
  it('the type field must be "assignment"', () => {
    expect(decodeRaw(raw)).toBe('no error');
    for (const type of ['manifest', 'trust', 'Assignment', 1, null]) expect(decodeRaw({ ...raw, type }), String(type)).toBe('malformed-release');
    const { type: _t, ...noType } = raw;
    expect(decodeRaw(noType)).toBe('malformed-release');
  });
  it('expires must be after issued', () => {
    expect(refuse({ ...BODY, expires: BODY.issued })).toBe('malformed-release');
    expect(refuse({ ...BODY, expires: BODY.issued - 1 })).toBe('malformed-release');
    expect(refuse({ ...BODY, expires: BODY.issued + 1 })).toBe('no error');
  });
  it('field shapes', () => {
    expect(refuse({ ...BODY, model: 'a/b' })).toBe('malformed-release');
    expect(refuse({ ...BODY, model: '' })).toBe('malformed-release');
    expect(refuse({ ...BODY, group: '' })).toBe('malformed-release');
    expect(refuse({ ...BODY, group: 'a+b' })).toBe('malformed-release');
    expect(refuse({ ...BODY, group: 'x'.repeat(129) })).toBe('malformed-release');
    expect(refuse({ ...BODY, seq: -1 })).toBe('malformed-release');
    expect(refuse({ ...BODY, seq: 1.5 })).toBe('malformed-release');
    expect(refuse({ ...BODY, issued: -5, expires: 10 })).toBe('malformed-release');
    expect(refuse({ ...BODY, manifest: '12'.repeat(31) })).toBe('malformed-release');
    expect(refuse({ ...BODY, manifest: 'AB'.repeat(32) })).toBe('malformed-release');
    for (const k of ['model', 'group', 'seq', 'issued', 'expires', 'manifest']) {
      const { [k]: _x, ...without } = raw;
      expect(decodeRaw(without), `without ${k}`).toBe('malformed-release');
      expect(decodeRaw({ ...raw, [k]: new Uint8Array(4) }), `${k} as bytes`).toBe('malformed-release');
    }
    expect(decodeRaw({ ...raw, seq: '7' })).toBe('malformed-release');
    expect(decodeRaw({ ...raw, seq: 2 ** 53 })).toBe('malformed-release');
    for (const v of [2, '1', null, { toString: 0 }]) expect(decodeRaw({ ...raw, v }), JSON.stringify(v)).toBe('malformed-release');
    expect(codeOf(() => decodeAssignment(new Uint8Array(0)))).toBe('malformed-release');
    expect(decodeRaw([raw])).toBe('malformed-release');
    expect(codeOf(() => decodeAssignment(Uint8Array.from([...encodeAssignment(BODY), 0])))).toBe('malformed-release');
  });
});
