import { describe, it, expect } from 'vitest';
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import { decode as cborxDecode } from 'cbor-x';
import nacl from 'tweetnacl';
import {
  checkRelease, decodeReleaseBody, decodeSignedRelease, encodeReleaseBody, formatTrustFile, keyIdOf, parseTrustFile,
  pathFrom, signRelease, signingKeyFromSeed, verifyRelease,
  type ReleaseBody, type ReleaseStep, type ReleaseExpectations, type SigningKey, type TrustFile,
} from '../../protocol/release.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { ProtocolError, type ProtocolReason } from '../../protocol/errors.ts';

const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const seed = (n: number) => new Uint8Array(32).fill(n);

const keyA = signingKeyFromSeed(seed(1));
const keyB = signingKeyFromSeed(seed(2));
const keyC = signingKeyFromSeed(seed(3));
const trustOf = (threshold: number, ...keys: SigningKey[]): TrustFile => ({
  threshold,
  keys: keys.map((k) => ({ id: k.id, publicKey: k.publicKey })),
});

const PAYLOAD_SHA = sha256Hex(new TextEncoder().encode('payload'));
const TARGET = 'ab'.repeat(32);
const BODY: ReleaseBody = {
  model: 'resnet18',
  group: 'canary',
  seq: 7,
  issued: 1_700_000_000,
  expires: 1_700_086_400,
  target: TARGET,
  steps: [{
    updateId: PAYLOAD_SHA.slice(0, 32),
    from: 'cd'.repeat(32),
    to: TARGET,
    size: 40_000,
    sha256: PAYLOAD_SHA,
    chunkSize: 16_384,
    chunks: 3,
    listSha256: 'ef'.repeat(32),
  }],
  rollback: false,
  previous: null,
};
const withStep = (over: Partial<ReleaseBody['steps'][0]>): ReleaseBody => ({ ...BODY, steps: [{ ...BODY.steps[0], ...over }] });

/** Digest number n (64 hex digits). */
const D = (n: number): string => n.toString(16).padStart(2, '0').repeat(32);
/** A well-formed step from → to; `n` makes its payload distinct. */
function step(from: string | null, to: string, n: number): ReleaseStep {
  const sha = sha256Hex(new TextEncoder().encode(`payload ${n}`));
  return { updateId: sha.slice(0, 32), from, to, size: 1000 + n, sha256: sha, chunkSize: 512, chunks: Math.ceil((1000 + n) / 512), listSha256: 'ef'.repeat(32) };
}
/** v1 → v2 → v3 → v4 (the target), listed out of order, plus a full-model step. */
const V = [D(1), D(2), D(3), D(4)];
const CHAIN: ReleaseBody = { ...BODY, target: V[3], steps: [step(V[1], V[2], 2), step(V[0], V[1], 1), step(null, V[3], 9), step(V[2], V[3], 3)] };

function codeOf(fn: () => unknown): ProtocolReason | 'no error' {
  try {
    fn();
  } catch (e) {
    if (e instanceof ProtocolError) return e.code;
    throw e;
  }
  return 'no error';
}

/** A release envelope with the given body bytes and signatures, bypassing signRelease. */
const envelope = (body: Uint8Array, sigs: Array<{ k: string; s: Uint8Array }>) => cborEncode({ body, sigs });

describe('keys', () => {
  it('keyIdOf is the SHA-256 of the raw public key', () => {
    expect(keyA.publicKey).toHaveLength(32);
    expect(keyIdOf(keyA.publicKey)).toBe(sha256Hex(keyA.publicKey));
    expect(keyA.id).toBe(sha256Hex(keyA.publicKey));
    expect(keyA.id).not.toBe(keyB.id);
  });
  it('signingKeyFromSeed derives the standard Ed25519 public key (checked with node:crypto)', () => {
    const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(seed(1))]);
    const jwk = createPublicKey(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })).export({ format: 'jwk' });
    expect(Buffer.from(keyA.publicKey).toString('base64url')).toBe(jwk.x);
    expect(() => signingKeyFromSeed(new Uint8Array(31))).toThrow(TypeError);
  });
});

describe('release body encoding', () => {
  it('is byte-stable for a fixed body', () => {
    expect(sha256Hex(encodeReleaseBody(BODY))).toBe('41dc16f2849ca2789ebb31a7fb6bdd4224470258f1da5809c302e902a8f6d2c9');
  });
  it('is a plain CBOR map with the documented keys (read back with a stock cbor-x decoder)', () => {
    const bytes = encodeReleaseBody(BODY);
    expect(bytes[0]).toBe(0xa8); // map of 8 pairs
    const m = cborxDecode(bytes) as Record<string, unknown>;
    expect(Object.keys(m)).toEqual(['v', 'model', 'group', 'seq', 'issued', 'expires', 'target', 'steps']);
    expect(m).toMatchObject({ v: 1, model: 'resnet18', group: 'canary', seq: 7, issued: 1_700_000_000, target: TARGET });
    const steps = m.steps as Array<Record<string, unknown>>;
    expect(steps).toHaveLength(1);
    expect(Object.keys(steps[0])).toEqual(['u', 'from', 'to', 'size', 'sha256', 'chunk', 'chunks', 'list']);
    expect(steps[0]).toMatchObject({ u: PAYLOAD_SHA.slice(0, 32), chunk: 16_384, chunks: 3, size: 40_000 });
  });
  it('decodes back to the same body', () => {
    expect(decodeReleaseBody(encodeReleaseBody(BODY))).toEqual(BODY);
    const none = { ...BODY, steps: [] };
    expect(decodeReleaseBody(encodeReleaseBody(none))).toEqual(none);
  });
  it('the envelope is {body: bytes, sigs: [{k, s}]}', () => {
    const env = cborxDecode(signRelease(BODY, [keyA])) as { body: Uint8Array; sigs: Array<{ k: string; s: Uint8Array }> };
    expect(Buffer.from(env.body).equals(Buffer.from(encodeReleaseBody(BODY)))).toBe(true);
    expect(env.sigs).toHaveLength(1);
    expect(env.sigs[0].k).toBe(keyA.id);
    expect(nacl.sign.detached.verify(env.body, env.sigs[0].s, keyA.publicKey)).toBe(true);
  });
});

describe('decodeReleaseBody refusals (malformed-release)', () => {
  const refuse = (b: ReleaseBody) => codeOf(() => decodeReleaseBody(encodeReleaseBody(b)));
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
  it('expires must be after issued', () => {
    expect(refuse({ ...BODY, expires: BODY.issued })).toBe('malformed-release');
    expect(refuse({ ...BODY, expires: BODY.issued - 1 })).toBe('malformed-release');
    expect(refuse({ ...BODY, expires: BODY.issued + 1 })).toBe('no error');
  });
  it('field shapes', () => {
    expect(refuse({ ...BODY, model: 'a/b' })).toBe('malformed-release');
    expect(refuse({ ...BODY, group: '' })).toBe('malformed-release');
    expect(refuse({ ...BODY, seq: -1 })).toBe('malformed-release');
    expect(refuse({ ...BODY, target: TARGET.toUpperCase() })).toBe('malformed-release');
    expect(refuse(withStep({ from: 'cd' }))).toBe('malformed-release');
    expect(refuse({ ...BODY, steps: Array.from({ length: 65 }, () => BODY.steps[0]) })).toBe('malformed-release');
    const raw = cborxDecode(encodeReleaseBody(BODY)) as Record<string, unknown>;
    for (const v of [2, '1', null, { toString: 0 }]) {
      expect(codeOf(() => decodeReleaseBody(cborEncode({ ...raw, v })))).toBe('malformed-release');
    }
    expect(codeOf(() => decodeReleaseBody(new Uint8Array(0)))).toBe('malformed-release');
    expect(codeOf(() => decodeReleaseBody(cborEncode([raw])))).toBe('malformed-release');
    expect(codeOf(() => decodeReleaseBody(Uint8Array.from([...encodeReleaseBody(BODY), 0])))).toBe('malformed-release');
  });
});

describe('chains of steps', () => {
  const refuse = (b: ReleaseBody) => codeOf(() => decodeReleaseBody(encodeReleaseBody(b)));
  const noFull: ReleaseBody = { ...CHAIN, steps: CHAIN.steps.filter((s) => s.from !== null) };
  const [s12, s01, full, s23] = CHAIN.steps;

  it('accepts a chain of 3 steps in any order, with or without a full-model step', () => {
    expect(decodeReleaseBody(encodeReleaseBody(CHAIN))).toEqual(CHAIN);
    expect(decodeReleaseBody(encodeReleaseBody(noFull))).toEqual(noFull);
    // Two chains meeting on the way to the target.
    const fork = { ...noFull, steps: [...noFull.steps, step(D(5), V[2], 5)] };
    expect(refuse(fork)).toBe('no error');
    // A full-model step alone.
    expect(refuse({ ...CHAIN, steps: [full] })).toBe('no error');
    expect(decodeReleaseBody(encodeReleaseBody(CHAIN)).steps[2].from).toBeNull();
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
    expect(pathFrom(BODY, 'cd'.repeat(32))).toEqual([BODY.steps[0]]);
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

describe('rollback and previous', () => {
  const raw = cborxDecode(encodeReleaseBody(BODY)) as Record<string, unknown>;
  const decodeRaw = (m: Record<string, unknown>) => codeOf(() => decodeReleaseBody(cborEncode(m)));

  it('round-trips rollback and previous', () => {
    const back: ReleaseBody = { ...BODY, steps: [], target: 'cd'.repeat(32), rollback: true, previous: TARGET };
    const bytes = encodeReleaseBody(back);
    const m = cborxDecode(bytes) as Record<string, unknown>;
    expect(m).toMatchObject({ rollback: true, previous: TARGET });
    expect(decodeReleaseBody(bytes)).toEqual(back);
    expect(verifyRelease(signRelease(back, [keyA]), trustOf(1, keyA))).toEqual(back);
    const fwd: ReleaseBody = { ...BODY, previous: 'cd'.repeat(32) };
    expect(decodeReleaseBody(encodeReleaseBody(fwd))).toEqual(fwd);
    expect(Object.keys(cborxDecode(encodeReleaseBody(fwd)) as object)).not.toContain('rollback');
  });
  it('a body without them decodes with rollback false and previous null', () => {
    expect(Object.keys(raw)).not.toContain('rollback');
    expect(Object.keys(raw)).not.toContain('previous');
    const b = decodeReleaseBody(cborEncode(raw));
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

describe('signing and verification', () => {
  it('sign + verify round trip', () => {
    expect(verifyRelease(signRelease(BODY, [keyA]), trustOf(1, keyA))).toEqual(BODY);
    expect(verifyRelease(signRelease(BODY, [keyA, keyB]), trustOf(2, keyA, keyB))).toEqual(BODY);
    // An extra signature by an unknown key next to a trusted one is ignored.
    expect(verifyRelease(signRelease(BODY, [keyC, keyA]), trustOf(1, keyA, keyB))).toEqual(BODY);
  });
  it('flipping any single byte of the body is refused', () => {
    const signed = decodeSignedRelease(signRelease(BODY, [keyA]));
    const sigs = signed.sigs.map((s) => ({ k: s.keyId, s: s.sig }));
    expect(verifyRelease(envelope(signed.body, sigs), trustOf(1, keyA))).toEqual(BODY);
    for (let p = 0; p < signed.body.length; p++) {
      for (const mask of [0x01, 0x80]) {
        const body = Uint8Array.from(signed.body);
        body[p] ^= mask;
        expect(['bad-signature', 'malformed-release'], `byte ${p} ^ ${mask}`).toContain(codeOf(() => verifyRelease(envelope(body, sigs), trustOf(1, keyA))));
      }
    }
  });
  it('flipping any single byte of a signature is refused with bad-signature', () => {
    const signed = decodeSignedRelease(signRelease(BODY, [keyA]));
    for (let p = 0; p < 64; p++) {
      const s = Uint8Array.from(signed.sigs[0].sig);
      s[p] ^= 1 << (p % 8);
      expect(codeOf(() => verifyRelease(envelope(signed.body, [{ k: keyA.id, s }]), trustOf(1, keyA)))).toBe('bad-signature');
    }
  });
  it('flipping any single bit of the whole envelope is refused', () => {
    const bytes = signRelease(BODY, [keyA]);
    for (let p = 0; p < bytes.length; p++) {
      const m = Uint8Array.from(bytes);
      m[p] ^= 1 << (p % 8);
      expect(codeOf(() => verifyRelease(m, trustOf(1, keyA))), `byte ${p}`).not.toBe('no error');
    }
  });
  it('a release signed only by keys outside the trust file → untrusted-key', () => {
    expect(codeOf(() => verifyRelease(signRelease(BODY, [keyC]), trustOf(1, keyA)))).toBe('untrusted-key');
    expect(codeOf(() => verifyRelease(signRelease(BODY, [keyC, keyB]), trustOf(1, keyA)))).toBe('untrusted-key');
  });
  it('a trusted key id with a signature made by another key → bad-signature', () => {
    const s = nacl.sign.detached(encodeReleaseBody(BODY), keyC.secretKey);
    expect(codeOf(() => verifyRelease(envelope(encodeReleaseBody(BODY), [{ k: keyA.id, s }]), trustOf(1, keyA)))).toBe('bad-signature');
  });
  it('threshold 2: one valid signature is not enough, two distinct keys are', () => {
    const trust = trustOf(2, keyA, keyB);
    expect(codeOf(() => verifyRelease(signRelease(BODY, [keyA]), trust))).toBe('threshold-not-met');
    expect(codeOf(() => verifyRelease(signRelease(BODY, [keyA, keyC]), trust))).toBe('threshold-not-met');
    expect(codeOf(() => verifyRelease(signRelease(BODY, [keyB, keyA]), trust))).toBe('no error');
  });
  it('the same key signing twice does not count twice', () => {
    expect(codeOf(() => verifyRelease(signRelease(BODY, [keyA, keyA]), trustOf(2, keyA, keyB)))).toBe('threshold-not-met');
    expect(codeOf(() => verifyRelease(signRelease(BODY, [keyA, keyA, keyB]), trustOf(2, keyA, keyB)))).toBe('no error');
  });
  it('a correctly signed body that is not a valid release → malformed-release', () => {
    const body = cborEncode({ v: 1, hello: 'world' });
    const s = nacl.sign.detached(body, keyA.secretKey);
    expect(codeOf(() => verifyRelease(envelope(body, [{ k: keyA.id, s }]), trustOf(1, keyA)))).toBe('malformed-release');
  });
  it('malformed envelopes → malformed-release', () => {
    const body = encodeReleaseBody(BODY);
    const good = { k: keyA.id, s: nacl.sign.detached(body, keyA.secretKey) };
    const cases: Uint8Array[] = [
      new Uint8Array(0),
      Uint8Array.from([0xa1]),
      cborEncode('release'),
      cborEncode([body, [good]]),
      cborEncode({ sigs: [good] }),
      cborEncode({ body, sigs: good }),
      cborEncode({ body: Array.from(body), sigs: [good] }),
      envelope(body, []),
      envelope(body, Array.from({ length: 17 }, () => good)),
      envelope(body, [{ k: keyA.id.slice(1), s: good.s }]),
      envelope(body, [{ k: keyA.id.toUpperCase(), s: good.s }]),
      envelope(body, [{ k: keyA.id, s: good.s.subarray(0, 63) }]),
      cborEncode({ body, sigs: [{ k: keyA.id, s: Array.from(good.s) }] }),
      cborEncode({ body, sigs: ['x'] }),
      Uint8Array.from([...envelope(body, [good]), 0xf6]),
    ];
    expect(codeOf(() => verifyRelease(envelope(body, [good]), trustOf(1, keyA)))).toBe('no error');
    cases.forEach((c, k) => expect(codeOf(() => verifyRelease(c, trustOf(1, keyA))), `case ${k}`).toBe('malformed-release'));
  });
});

describe('checkRelease', () => {
  const x: ReleaseExpectations = {
    model: 'resnet18', group: 'canary', now: BODY.issued + 60, clockFloor: 0, highestSeq: 6, skewSeconds: 300,
  };
  const check = (b: Partial<ReleaseBody>, over: Partial<ReleaseExpectations> = {}) => codeOf(() => checkRelease({ ...BODY, ...b }, { ...x, ...over }));
  it('accepts a fresh release for this model and group', () => {
    expect(check({})).toBe('no error');
  });
  it('wrong model / group', () => {
    expect(check({ model: 'resnet50' })).toBe('wrong-model');
    expect(check({}, { group: 'prod' })).toBe('wrong-group');
  });
  it('expired', () => {
    expect(check({}, { now: BODY.expires })).toBe('expired');
    expect(check({}, { now: BODY.expires - 1 })).toBe('no error');
    expect(check({}, { now: 0, clockFloor: BODY.expires + 1 })).toBe('expired');
    expect(check({}, { now: 0, clockFloor: BODY.expires })).toBe('expired');
    expect(check({}, { now: 0, clockFloor: BODY.issued })).toBe('no error');
  });
  it('issued in the future beyond the skew → not-yet-valid; within the skew → ok', () => {
    expect(check({}, { now: BODY.issued - 301 })).toBe('not-yet-valid');
    expect(check({}, { now: BODY.issued - 300 })).toBe('no error');
    expect(check({}, { now: BODY.issued - 10, skewSeconds: 0 })).toBe('not-yet-valid');
    // A clock floor at or past issued means the device has already seen that time.
    expect(check({}, { now: BODY.issued - 10_000, clockFloor: BODY.issued })).toBe('no error');
  });
  it('issued absurdly far in the future is still not-yet-valid (no crash formatting the date)', () => {
    expect(check({ issued: 10 ** 13, expires: 10 ** 13 + 1 })).toBe('not-yet-valid');
    expect(check({ issued: 2 ** 52, expires: 2 ** 53 - 1 })).toBe('not-yet-valid');
  });
  it('replays', () => {
    expect(check({ seq: 6 })).toBe('replayed');
    expect(check({ seq: 5 })).toBe('replayed');
    expect(check({ seq: 7 })).toBe('no error');
    expect(check({ seq: 0 }, { highestSeq: -1 })).toBe('no error');
  });
});

describe('trust files', () => {
  const b64 = (k: SigningKey) => Buffer.from(k.publicKey).toString('base64');
  const file = (threshold: unknown, keys: unknown[]) => JSON.stringify({ threshold, keys });
  const entry = (k: SigningKey) => ({ id: k.id, publicKey: b64(k) });
  const parse = (text: string) => codeOf(() => parseTrustFile(text));

  it('parses a valid file', () => {
    const t = parseTrustFile(file(2, [entry(keyA), entry(keyB)]));
    expect(t.threshold).toBe(2);
    expect(t.keys.map((k) => k.id)).toEqual([keyA.id, keyB.id]);
    expect(Buffer.from(t.keys[1].publicKey).equals(Buffer.from(keyB.publicKey))).toBe(true);
    expect(verifyRelease(signRelease(BODY, [keyA, keyB]), t)).toEqual(BODY);
  });
  it('refuses an id that is not the hash of the key', () => {
    expect(parse(file(1, [{ id: keyB.id, publicKey: b64(keyA) }]))).toBe('malformed-trust');
    expect(parse(file(1, [{ id: keyA.id.slice(0, 63), publicKey: b64(keyA) }]))).toBe('malformed-trust');
  });
  it('refuses threshold 0, above the number of keys, or not an integer', () => {
    expect(parse(file(0, [entry(keyA)]))).toBe('malformed-trust');
    expect(parse(file(2, [entry(keyA)]))).toBe('malformed-trust');
    expect(parse(file(1.5, [entry(keyA), entry(keyB)]))).toBe('malformed-trust');
    expect(parse(file('1', [entry(keyA)]))).toBe('malformed-trust');
    expect(parse(file(1, []))).toBe('malformed-trust');
    expect(parse(file(1, [entry(keyA)]))).toBe('no error');
  });
  it('refuses public keys that are not 32 bytes of base64', () => {
    const short = Buffer.from(keyA.publicKey.subarray(0, 31)).toString('base64');
    const long = Buffer.from([...keyA.publicKey, 0]).toString('base64');
    expect(parse(file(1, [{ id: keyA.id, publicKey: short }]))).toBe('malformed-trust');
    expect(parse(file(1, [{ id: keyA.id, publicKey: long }]))).toBe('malformed-trust');
    expect(parse(file(1, [{ id: keyA.id, publicKey: 42 }]))).toBe('malformed-trust');
  });
  it('refuses invalid JSON and wrong shapes', () => {
    for (const text of ['', '{', 'null', '[]', '{"threshold":1}', '{"threshold":1,"keys":{}}', '{"threshold":1,"keys":[null]}']) {
      expect(parse(text), text).toBe('malformed-trust');
    }
  });
  it('formatTrustFile then parseTrustFile round-trips', () => {
    const t = trustOf(2, keyA, keyB, keyC);
    const text = formatTrustFile(t);
    expect(text.endsWith('\n')).toBe(true);
    expect(parseTrustFile(text)).toEqual(t);
    expect(formatTrustFile(parseTrustFile(text))).toBe(text);
  });
});
