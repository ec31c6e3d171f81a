import { describe, it, expect } from 'vitest';
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import { decode as cborxDecode } from 'cbor-x';
import nacl from 'tweetnacl';
import {
  assignManifest,
  checkRelease,
  composeRelease,
  decodeRelease,
  decodeSignedManifest,
  keyIdOf,
  limitsOf,
  manifestHashOf,
  releaseParts,
  signManifest,
  signRelease,
  signingKeyFromSeed,
  trustOf,
  verifyManifest,
  verifyRelease,
  type ReleaseBody,
  type ReleaseDraft,
  type ReleaseExpectations,
  type SigningKey,
  type TrustFile,
} from '../../protocol/release.ts';
import { encodeManifest } from '../../protocol/manifest.ts';
import { encodeAssignment } from '../../protocol/assignment.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { codeOf } from '../support/protocol-errors.ts';

const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const seed = (n: number) => new Uint8Array(32).fill(n);

// Release keys A, B, C; rollout keys R, S, T; X belongs to nobody.
const [keyA, keyB, keyC, keyR, keyS, keyT, keyX] = [1, 2, 3, 4, 5, 6, 9].map((n) => signingKeyFromSeed(seed(n)));
const pub = (...ks: SigningKey[]) => ks.map((k) => ({ id: k.id, publicKey: k.publicKey }));
/** One-role trust file: the release keys sign both documents. */
const oneRole = (threshold: number, ...ks: SigningKey[]): TrustFile => ({ version: 0, threshold, keys: pub(...ks) });
/** Two roles: release keys A, B, C (threshold t) and rollout keys R, S, T (threshold r). */
const twoRoles = (t = 1, r = 1): TrustFile => ({ version: 0, threshold: t, keys: pub(keyA, keyB, keyC), rollout: { threshold: r, keys: pub(keyR, keyS, keyT) } });

const PAYLOAD_SHA = sha256Hex(new TextEncoder().encode('payload'));
const TARGET = 'ab'.repeat(32);
const DRAFT: ReleaseDraft = {
  model: 'resnet18',
  group: 'canary',
  seq: 7,
  issued: 1_700_000_000,
  expires: 1_700_086_400,
  target: TARGET,
  steps: [{ updateId: PAYLOAD_SHA.slice(0, 32), from: 'cd'.repeat(32), to: TARGET, size: 40_000, sha256: PAYLOAD_SHA, chunkSize: 16_384, chunks: 3, listSha256: 'ef'.repeat(32) }],
  rollback: false,
  previous: null,
};
const LIMITS = limitsOf(DRAFT.steps);
const MANIFEST_BODY = encodeManifest({ model: DRAFT.model, target: DRAFT.target, steps: DRAFT.steps, limits: LIMITS });
const HASH = sha256Hex(MANIFEST_BODY);
const BODY: ReleaseBody = { ...DRAFT, limits: LIMITS, manifest: HASH };
const ASSIGNMENT = { model: DRAFT.model, group: DRAFT.group, seq: DRAFT.seq, issued: DRAFT.issued, expires: DRAFT.expires, rollback: false, previous: null };
/** The body of the same release aimed at another target (another manifest). */
const OTHER: ReleaseDraft = { ...DRAFT, target: 'cd'.repeat(32), steps: [], seq: 8, rollback: true, previous: TARGET };

const envelope = (body: Uint8Array, sigs: Array<{ k: string; s: Uint8Array }>) => cborEncode({ body, sigs });
const sig = (body: Uint8Array, k: SigningKey) => ({ k: k.id, s: nacl.sign.detached(body, k.secretKey) });
/** Hundreds of Ed25519 checks: ~10 s idle, several times that on a loaded 2-core machine. */
const FLIP_TIMEOUT = 240_000;
const verifyCode = (bytes: Uint8Array, trust: TrustFile) => codeOf(() => verifyRelease(bytes, trust));

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

describe('the release message', () => {
  const bytes = signRelease(DRAFT, [keyA], [keyR]);
  it('is CBOR {v: 1, manifest: bytes, assignment: bytes}, each a signed envelope {body, sigs: [{k, s}]}', () => {
    const m = cborxDecode(bytes) as Record<string, unknown>;
    expect(Object.keys(m)).toEqual(['v', 'manifest', 'assignment']);
    expect(m.v).toBe(1);
    const man = cborxDecode(m.manifest as Uint8Array) as { body: Uint8Array; sigs: Array<{ k: string; s: Uint8Array }> };
    const asg = cborxDecode(m.assignment as Uint8Array) as { body: Uint8Array; sigs: Array<{ k: string; s: Uint8Array }> };
    expect(Object.keys(man)).toEqual(['body', 'sigs']);
    expect(Buffer.from(man.body).equals(Buffer.from(MANIFEST_BODY))).toBe(true);
    expect(man.sigs.map((s) => s.k)).toEqual([keyA.id]);
    expect(nacl.sign.detached.verify(man.body, man.sigs[0].s, keyA.publicKey)).toBe(true);
    // The assignment names the manifest by the SHA-256 of its body bytes.
    expect(Buffer.from(asg.body).equals(Buffer.from(encodeAssignment({ ...ASSIGNMENT, manifest: HASH })))).toBe(true);
    expect((cborxDecode(asg.body) as { manifest: string }).manifest).toBe(HASH);
    expect(asg.sigs.map((s) => s.k)).toEqual([keyR.id]);
    expect(nacl.sign.detached.verify(asg.body, asg.sigs[0].s, keyR.publicKey)).toBe(true);
  });
  it('signManifest + assignManifest give the same bytes as signRelease; releaseParts / composeRelease round-trip', () => {
    const manifest = signManifest({ model: DRAFT.model, target: TARGET, steps: DRAFT.steps, limits: LIMITS }, [keyA]);
    expect(manifestHashOf(manifest)).toBe(HASH);
    expect(decodeSignedManifest(manifest)).toEqual({ model: DRAFT.model, target: TARGET, steps: DRAFT.steps, limits: LIMITS, manifest: HASH });
    expect(Buffer.from(assignManifest(manifest, ASSIGNMENT, [keyR])).equals(Buffer.from(bytes))).toBe(true);
    const parts = releaseParts(bytes);
    expect(Buffer.from(parts.manifest).equals(Buffer.from(manifest))).toBe(true);
    expect(Buffer.from(composeRelease(parts)).equals(Buffer.from(bytes))).toBe(true);
  });
  it('decodeRelease (unverified) and verifyRelease give the merged body', () => {
    expect(decodeRelease(bytes)).toEqual(BODY);
    expect(verifyRelease(bytes, twoRoles())).toEqual(BODY);
    const explicit = signRelease({ ...DRAFT, limits: { payloadBytes: 1 << 20, chunks: 100, chunkBytes: 1 << 16 } }, [keyA], [keyR]);
    expect(verifyRelease(explicit, twoRoles()).limits).toEqual({ payloadBytes: 1 << 20, chunks: 100, chunkBytes: 1 << 16 });
  });
  it('round-trips rollback and previous through the assignment', () => {
    const back = verifyRelease(signRelease(OTHER, [keyA], [keyR]), twoRoles());
    expect(back).toMatchObject({ rollback: true, previous: TARGET, steps: [], target: 'cd'.repeat(32), seq: 8 });
  });
  it('malformed release messages → malformed-release', () => {
    const p = releaseParts(bytes);
    const cases: Uint8Array[] = [
      new Uint8Array(0),
      Uint8Array.from([0xa1]),
      cborEncode('release'),
      cborEncode([p.manifest, p.assignment]),
      cborEncode({ v: 2, manifest: p.manifest, assignment: p.assignment }),
      cborEncode({ manifest: p.manifest, assignment: p.assignment }),
      cborEncode({ v: 1, manifest: p.manifest }),
      cborEncode({ v: 1, manifest: Array.from(p.manifest), assignment: p.assignment }),
      cborEncode({ v: 1, manifest: p.manifest, assignment: 'x' }),
      composeRelease({ manifest: p.manifest, assignment: cborEncode({ body: new Uint8Array(3), sigs: [] }) }),
      Uint8Array.from([...bytes, 0xf6]),
      // The old single-envelope format.
      p.manifest,
    ];
    cases.forEach((c, k) => {
      expect(
        codeOf(() => decodeRelease(c)),
        `decode case ${k}`,
      ).toBe('malformed-release');
      expect(verifyCode(c, twoRoles()), `verify case ${k}`).toBe('malformed-release');
    });
  });
  it('envelopes swapped: signatures are checked first (wrong-role), then the type field refuses each body', () => {
    const one = releaseParts(signRelease(DRAFT, [keyA]));
    const swapped = composeRelease({ manifest: one.assignment, assignment: one.manifest });
    expect(codeOf(() => decodeRelease(swapped))).toBe('malformed-release');
    expect(verifyCode(swapped, oneRole(1, keyA))).toBe('malformed-release');
    const p = releaseParts(bytes);
    expect(verifyCode(composeRelease({ manifest: p.assignment, assignment: p.manifest }), twoRoles())).toBe('wrong-role');
  });
  it('malformed envelopes → malformed-release', () => {
    const body = MANIFEST_BODY;
    const good = sig(body, keyA);
    const asg = releaseParts(bytes).assignment;
    const cases: Uint8Array[] = [
      new Uint8Array(0),
      Uint8Array.from([0xa1]),
      cborEncode('m'),
      cborEncode([body, [good]]),
      cborEncode({ sigs: [good] }),
      cborEncode({ body, sigs: good }),
      cborEncode({ body: Array.from(body), sigs: [good] }),
      envelope(body, []),
      envelope(
        body,
        Array.from({ length: 17 }, () => good),
      ),
      envelope(body, [{ k: keyA.id.slice(1), s: good.s }]),
      envelope(body, [{ k: keyA.id.toUpperCase(), s: good.s }]),
      envelope(body, [{ k: keyA.id, s: good.s.subarray(0, 63) }]),
      cborEncode({ body, sigs: [{ k: keyA.id, s: Array.from(good.s) }] }),
      cborEncode({ body, sigs: ['x'] }),
      Uint8Array.from([...envelope(body, [good]), 0xf6]),
    ];
    expect(verifyCode(composeRelease({ manifest: envelope(body, [good]), assignment: asg }), twoRoles())).toBe('no error');
    cases.forEach((c, k) => {
      expect(verifyCode(composeRelease({ manifest: c, assignment: asg }), twoRoles()), `manifest case ${k}`).toBe('malformed-release');
      expect(verifyCode(composeRelease({ manifest: envelope(body, [good]), assignment: c }), twoRoles()), `assignment case ${k}`).toBe('malformed-release');
    });
  });
  it('a correctly signed body that is not a valid manifest / assignment → malformed-release', () => {
    const junk = cborEncode({ v: 1, hello: 'world' });
    const p = releaseParts(bytes);
    expect(verifyCode(composeRelease({ manifest: envelope(junk, [sig(junk, keyA)]), assignment: p.assignment }), twoRoles())).toBe('malformed-release');
    expect(verifyCode(composeRelease({ manifest: p.manifest, assignment: envelope(junk, [sig(junk, keyR)]) }), twoRoles())).toBe('malformed-release');
  });
});

describe('signing and verification', () => {
  const trust = twoRoles();
  const bytes = signRelease(DRAFT, [keyA], [keyR]);
  const p = releaseParts(bytes);
  const REFUSALS = ['bad-signature', 'malformed-release', 'untrusted-key'];

  it(
    'flipping any single byte of the manifest envelope is refused',
    () => {
      const body = cborxDecode(p.manifest) as { body: Uint8Array };
      const bodyAt = Buffer.from(p.manifest).indexOf(Buffer.from(body.body));
      for (let i = 0; i < p.manifest.length; i++) {
        const m = Uint8Array.from(p.manifest);
        m[i] ^= 1 << (i % 8);
        // verifyManifest is verifyRelease's manifest half (one Ed25519 check instead of two); every 16th byte also goes the whole way.
        const code = codeOf(() => verifyManifest(m, trust));
        if (i % 16 === 0) expect(verifyCode(composeRelease({ manifest: m, assignment: p.assignment }), trust), `release, manifest byte ${i}`).toBe(code);
        expect(REFUSALS, `manifest byte ${i}`).toContain(code);
        if (i >= bodyAt && i < bodyAt + body.body.length) expect(['bad-signature', 'malformed-release'], `manifest body byte ${i}`).toContain(code);
      }
    },
    FLIP_TIMEOUT,
  );
  it(
    'flipping any single byte of the assignment envelope is refused',
    () => {
      for (let i = 0; i < p.assignment.length; i++) {
        const a = Uint8Array.from(p.assignment);
        a[i] ^= 1 << (i % 8);
        expect(REFUSALS, `assignment byte ${i}`).toContain(verifyCode(composeRelease({ manifest: p.manifest, assignment: a }), trust));
      }
    },
    FLIP_TIMEOUT,
  );
  it('flipping any byte of the release message outside the two envelopes is refused', () => {
    const at = [Buffer.from(bytes).indexOf(Buffer.from(p.manifest)), Buffer.from(bytes).indexOf(Buffer.from(p.assignment))];
    const inside = (i: number) => (i >= at[0] && i < at[0] + p.manifest.length) || (i >= at[1] && i < at[1] + p.assignment.length);
    let n = 0;
    for (let i = 0; i < bytes.length; i++) {
      if (inside(i)) continue;
      for (const mask of [0x01, 0x20, 0x80, 0xff]) {
        const m = Uint8Array.from(bytes);
        m[i] ^= mask;
        expect(verifyCode(m, trust), `byte ${i} ^ ${mask}`).toBe('malformed-release');
        n++;
      }
    }
    expect(n).toBeGreaterThan(40);
  });
  it('flipping any single byte of a signature is refused with bad-signature', () => {
    const m = cborxDecode(p.manifest) as { body: Uint8Array; sigs: Array<{ k: string; s: Uint8Array }> };
    const a = cborxDecode(p.assignment) as { body: Uint8Array; sigs: Array<{ k: string; s: Uint8Array }> };
    for (let i = 0; i < 64; i += 3) {
      const ms = Uint8Array.from(m.sigs[0].s);
      ms[i] ^= 1 << (i % 8);
      expect(verifyCode(composeRelease({ manifest: envelope(m.body, [{ k: keyA.id, s: ms }]), assignment: p.assignment }), trust), `manifest sig ${i}`).toBe('bad-signature');
      const as = Uint8Array.from(a.sigs[0].s);
      as[i] ^= 1 << (i % 8);
      expect(verifyCode(composeRelease({ manifest: p.manifest, assignment: envelope(a.body, [{ k: keyR.id, s: as }]) }), trust), `assignment sig ${i}`).toBe('bad-signature');
    }
  });
  it('signed only by keys outside the trust file → untrusted-key', () => {
    expect(verifyCode(signRelease(DRAFT, [keyX]), oneRole(1, keyA))).toBe('untrusted-key');
    expect(verifyCode(signRelease(DRAFT, [keyX, keyB]), oneRole(1, keyA))).toBe('untrusted-key');
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyX]), trust)).toBe('untrusted-key');
    expect(verifyCode(signRelease(DRAFT, [keyX], [keyR]), trust)).toBe('untrusted-key');
    // An extra signature by an unknown key next to a trusted one is ignored.
    expect(verifyRelease(signRelease(DRAFT, [keyX, keyA], [keyX, keyR]), trust)).toEqual(BODY);
  });
  it('a trusted key id with a signature made by another key → bad-signature', () => {
    const forged = (body: Uint8Array, id: string) => envelope(body, [{ k: id, s: nacl.sign.detached(body, keyX.secretKey) }]);
    const a = (cborxDecode(p.assignment) as { body: Uint8Array }).body;
    expect(verifyCode(composeRelease({ manifest: forged(MANIFEST_BODY, keyA.id), assignment: p.assignment }), trust)).toBe('bad-signature');
    expect(verifyCode(composeRelease({ manifest: p.manifest, assignment: forged(a, keyR.id) }), trust)).toBe('bad-signature');
  });
  it('release threshold 2 of 3: one valid signature is not enough, two distinct keys are', () => {
    const t = twoRoles(2, 1);
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyR]), t)).toBe('threshold-not-met');
    expect(verifyCode(signRelease(DRAFT, [keyA, keyX], [keyR]), t)).toBe('threshold-not-met');
    expect(verifyCode(signRelease(DRAFT, [keyA, keyR], [keyR]), t)).toBe('threshold-not-met');
    expect(verifyCode(signRelease(DRAFT, [keyC, keyA], [keyR]), t)).toBe('no error');
    expect(verifyCode(signRelease(DRAFT, [keyA, keyB, keyC], [keyR]), t)).toBe('no error');
  });
  it('rollout threshold 2 of 3, separately from the release threshold', () => {
    const t = twoRoles(1, 2);
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyR]), t)).toBe('threshold-not-met');
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyR, keyX]), t)).toBe('threshold-not-met');
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyR, keyA]), t)).toBe('threshold-not-met');
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyT, keyS]), t)).toBe('no error');
    // Enough rollout signatures do not make up for the manifest's.
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyR, keyS]), twoRoles(2, 2))).toBe('threshold-not-met');
  });
  it('the same key signing twice counts once', () => {
    const a = (cborxDecode(p.assignment) as { body: Uint8Array }).body;
    const twiceA = envelope(MANIFEST_BODY, [sig(MANIFEST_BODY, keyA), sig(MANIFEST_BODY, keyA)]);
    const twiceR = envelope(a, [sig(a, keyR), sig(a, keyR)]);
    expect(verifyCode(composeRelease({ manifest: twiceA, assignment: p.assignment }), twoRoles(2, 1))).toBe('threshold-not-met');
    expect(verifyCode(composeRelease({ manifest: p.manifest, assignment: twiceR }), twoRoles(1, 2))).toBe('threshold-not-met');
    expect(verifyCode(composeRelease({ manifest: twiceA, assignment: twiceR }), twoRoles(1, 1))).toBe('no error');
    expect(verifyCode(signRelease(DRAFT, [keyA, keyA]), oneRole(2, keyA, keyB))).toBe('threshold-not-met');
    expect(verifyCode(signRelease(DRAFT, [keyA, keyA, keyB]), oneRole(2, keyA, keyB))).toBe('no error');
  });
});

describe('TUF roles', () => {
  const trust = twoRoles();
  it('a manifest signed by a rollout key → wrong-role', () => {
    expect(verifyCode(signRelease(DRAFT, [keyR], [keyR]), trust)).toBe('wrong-role');
    expect(verifyCode(signRelease(DRAFT, [keyR, keyX], [keyS]), trust)).toBe('wrong-role');
    expect(codeOf(() => verifyManifest(signManifest({ model: DRAFT.model, target: TARGET, steps: DRAFT.steps, limits: LIMITS }, [keyS]), trust))).toBe('wrong-role');
  });
  it('an assignment signed by a release key → wrong-role; by a key of neither role → untrusted-key', () => {
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyA]), trust)).toBe('wrong-role');
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyB, keyX]), trust)).toBe('wrong-role');
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyX]), trust)).toBe('untrusted-key');
  });
  it('a stolen rollout key re-points a group to another manifest the release keys signed, but cannot make one', () => {
    const m1 = signManifest({ model: DRAFT.model, target: TARGET, steps: DRAFT.steps, limits: LIMITS }, [keyA]);
    const m2 = signManifest({ model: DRAFT.model, target: 'cd'.repeat(32), steps: [], limits: limitsOf([]) }, [keyA]);
    expect(verifyManifest(m2, trust).manifest).toBe(manifestHashOf(m2));
    // The thief re-points canary from m1 to m2 (a manifest the release keys signed): it verifies.
    const repoint = assignManifest(m2, { ...ASSIGNMENT, seq: 9, rollback: true, previous: TARGET }, [keyR]);
    expect(verifyRelease(repoint, trust)).toMatchObject({ target: 'cd'.repeat(32), seq: 9, manifest: manifestHashOf(m2) });
    expect(verifyRelease(assignManifest(m1, ASSIGNMENT, [keyR]), trust)).toEqual(BODY);
    // New weights need a new manifest: signed by the rollout key it is refused.
    const evil = { ...DRAFT, target: 'ee'.repeat(32), steps: [{ ...DRAFT.steps[0], to: 'ee'.repeat(32) }] };
    expect(verifyCode(signRelease(evil, [keyR], [keyR]), trust)).toBe('wrong-role');
    expect(verifyCode(signRelease(evil, [keyX], [keyR]), trust)).toBe('untrusted-key');
  });
  it('mix-and-match: an assignment travelling with another manifest → manifest-mismatch', () => {
    const one = releaseParts(signRelease(DRAFT, [keyA], [keyR]));
    const two = releaseParts(signRelease(OTHER, [keyA], [keyR]));
    const mixed = composeRelease({ manifest: two.manifest, assignment: one.assignment });
    expect(verifyCode(mixed, trust)).toBe('manifest-mismatch');
    expect(codeOf(() => decodeRelease(mixed))).toBe('manifest-mismatch');
    expect(verifyCode(composeRelease({ manifest: one.manifest, assignment: two.assignment }), trust)).toBe('manifest-mismatch');
  });
  it("an assignment whose model is not the manifest's → manifest-mismatch", () => {
    const m = signManifest({ model: DRAFT.model, target: TARGET, steps: DRAFT.steps, limits: LIMITS }, [keyA]);
    const other = assignManifest(m, { ...ASSIGNMENT, model: 'resnet50' }, [keyR]);
    expect(verifyCode(other, trust)).toBe('manifest-mismatch');
    expect(codeOf(() => decodeRelease(other))).toBe('manifest-mismatch');
  });
  it('one-role trust file (no rollout section): the release keys sign both documents', () => {
    expect(verifyRelease(signRelease(DRAFT, [keyA]), oneRole(1, keyA))).toEqual(BODY);
    expect(verifyRelease(signRelease(DRAFT, [keyA, keyB]), oneRole(2, keyA, keyB))).toEqual(BODY);
    expect(verifyCode(signRelease(DRAFT, [keyA], [keyR]), oneRole(1, keyA))).toBe('untrusted-key');
    expect(verifyCode(signRelease(DRAFT, [keyA, keyB], [keyA]), oneRole(2, keyA, keyB))).toBe('threshold-not-met');
    expect(verifyRelease(signRelease(DRAFT, [keyA]), trustOf([keyA]))).toEqual(BODY);
  });
  it('verifyManifest checks a manifest alone against the release role', () => {
    const m = signManifest({ model: DRAFT.model, target: TARGET, steps: DRAFT.steps, limits: LIMITS }, [keyA]);
    expect(verifyManifest(m, trust)).toEqual({ model: DRAFT.model, target: TARGET, steps: DRAFT.steps, limits: LIMITS, manifest: HASH });
    expect(codeOf(() => verifyManifest(m, twoRoles(2)))).toBe('threshold-not-met');
    expect(codeOf(() => verifyManifest(m, oneRole(1, keyB)))).toBe('untrusted-key');
    expect(codeOf(() => verifyManifest(releaseParts(signRelease(DRAFT, [keyA], [keyR])).assignment, oneRole(1, keyR)))).toBe('malformed-release');
  });
});

describe('checkRelease', () => {
  const x: ReleaseExpectations = { model: 'resnet18', group: 'canary', now: BODY.issued + 60, clockFloor: 0, highestSeq: 6, skewSeconds: 300 };
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
  it('limits over the device caps → payload-too-large; within or equal → ok; no caps → not checked', () => {
    const caps = { payloadBytes: 1 << 20, chunks: 64, chunkBytes: 1 << 16 };
    expect(check({ limits: caps }, { caps })).toBe('no error');
    expect(check({}, { caps })).toBe('no error');
    expect(check({ limits: { ...caps, payloadBytes: caps.payloadBytes + 1 } }, { caps })).toBe('payload-too-large');
    expect(check({ limits: { ...caps, chunks: 65 } }, { caps })).toBe('payload-too-large');
    expect(check({ limits: { ...caps, chunkBytes: (1 << 16) + 1 } }, { caps })).toBe('payload-too-large');
    expect(check({ limits: { payloadBytes: 2 ** 40, chunks: 1e6, chunkBytes: 1 << 24 } })).toBe('no error');
    // Through verifyRelease: a manifest whose signers allow more than this device takes.
    const big = verifyRelease(signRelease({ ...DRAFT, limits: { payloadBytes: 1 << 30, chunks: 64, chunkBytes: 1 << 16 } }, [keyA]), oneRole(1, keyA));
    expect(codeOf(() => checkRelease(big, { ...x, caps }))).toBe('payload-too-large');
  });
});
