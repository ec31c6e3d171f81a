import { describe, it, expect } from 'vitest';
import { decode as cborxDecode } from 'cbor-x';
import {
  formatTrustFile,
  parseTrustFile,
  releaseRole,
  rolloutRole,
  signRelease,
  signTrust,
  signingKeyFromSeed,
  trustOf,
  verifyRelease,
  verifyTrustUpdate,
  type ReleaseDraft,
  type SigningKey,
  type TrustFile,
} from '../../protocol/release.ts';
import { signEnvelope } from '../../protocol/signed.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { codeOf } from '../support/protocol-errors.ts';

// Release keys A, B, C; rollout keys R, S; X belongs to nobody.
const [keyA, keyB, keyC, keyR, keyS, keyX] = [1, 2, 3, 4, 5, 9].map((n) => signingKeyFromSeed(new Uint8Array(32).fill(n)));

const b64 = (k: SigningKey) => Buffer.from(k.publicKey).toString('base64');
const entry = (k: SigningKey) => ({ id: k.id, publicKey: b64(k) });
const file = (threshold: unknown, keys: unknown[], extra: Record<string, unknown> = {}) => JSON.stringify({ threshold, keys, ...extra });
const parse = (text: string) => codeOf(() => parseTrustFile(text));

const DRAFT: ReleaseDraft = {
  model: 'resnet18',
  group: 'canary',
  seq: 7,
  issued: 1_700_000_000,
  expires: 1_700_086_400,
  target: 'ab'.repeat(32),
  steps: [],
  rollback: false,
  previous: null,
};

describe('trust files', () => {
  it('parses a valid file (version defaults to 0, no rollout section)', () => {
    const t = parseTrustFile(file(2, [entry(keyA), entry(keyB)]));
    expect(t.threshold).toBe(2);
    expect(t.version).toBe(0);
    expect(t.rollout).toBeUndefined();
    expect(t.keys.map((k) => k.id)).toEqual([keyA.id, keyB.id]);
    expect(Buffer.from(t.keys[1].publicKey).equals(Buffer.from(keyB.publicKey))).toBe(true);
    expect(verifyRelease(signRelease(DRAFT, [keyA, keyB]), t).target).toBe(DRAFT.target);
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
  it('refuses the same key listed twice', () => {
    expect(parse(file(1, [entry(keyA), entry(keyA)]))).toBe('malformed-trust');
  });
  it('refuses public keys that are not 32 bytes of base64', () => {
    const short = Buffer.from(keyA.publicKey.subarray(0, 31)).toString('base64');
    const long = Buffer.from([...keyA.publicKey, 0]).toString('base64');
    expect(parse(file(1, [{ id: keyA.id, publicKey: short }]))).toBe('malformed-trust');
    expect(parse(file(1, [{ id: keyA.id, publicKey: long }]))).toBe('malformed-trust');
    expect(parse(file(1, [{ id: keyA.id, publicKey: 42 }]))).toBe('malformed-trust');
  });
  it('refuses invalid JSON and wrong shapes', () => {
    for (const text of ['', '{', 'null', '[]', '"x"', '{"threshold":1}', '{"threshold":1,"keys":{}}', '{"threshold":1,"keys":[null]}']) {
      expect(parse(text), text).toBe('malformed-trust');
    }
  });
  it('formatTrustFile then parseTrustFile round-trips', () => {
    const t = trustOf([keyA, keyB, keyC], undefined, 2);
    const text = formatTrustFile(t);
    expect(text.endsWith('\n')).toBe(true);
    expect(JSON.parse(text)).toEqual({ version: 0, threshold: 2, keys: [entry(keyA), entry(keyB), entry(keyC)] });
    expect(parseTrustFile(text)).toEqual(t);
    expect(formatTrustFile(parseTrustFile(text))).toBe(text);
  });
});

describe('trust files: rollout section and version', () => {
  const both: TrustFile = {
    version: 3,
    threshold: 2,
    keys: [keyA, keyB, keyC].map((k) => ({ id: k.id, publicKey: k.publicKey })),
    rollout: { threshold: 1, keys: [keyR, keyS].map((k) => ({ id: k.id, publicKey: k.publicKey })) },
  };
  it('a rollout section round-trips through formatTrustFile / parseTrustFile', () => {
    const text = formatTrustFile(both);
    expect(JSON.parse(text)).toEqual({ version: 3, threshold: 2, keys: [entry(keyA), entry(keyB), entry(keyC)], rollout: { threshold: 1, keys: [entry(keyR), entry(keyS)] } });
    expect(parseTrustFile(text)).toEqual(both);
    expect(formatTrustFile(parseTrustFile(text))).toBe(text);
    expect(rolloutRole(both)).toBe(both.rollout);
    expect(releaseRole(both)).toEqual({ threshold: 2, keys: both.keys });
    // Without a rollout section the release keys hold both roles.
    const one = parseTrustFile(file(1, [entry(keyA)]));
    expect(rolloutRole(one)).toEqual(releaseRole(one));
  });
  it('trustOf builds both roles', () => {
    expect(trustOf([keyA, keyB], [keyR], 2, 5)).toEqual({
      version: 5,
      threshold: 2,
      keys: [keyA, keyB].map((k) => ({ id: k.id, publicKey: k.publicKey })),
      rollout: { threshold: 1, keys: [{ id: keyR.id, publicKey: keyR.publicKey }] },
    });
    expect(trustOf([keyA], [], 3).rollout).toBeUndefined();
    expect(trustOf([keyA, keyA], undefined, 3)).toMatchObject({ threshold: 1, keys: [{ id: keyA.id }] });
  });
  it('refuses a key that is in both roles', () => {
    expect(parse(file(1, [entry(keyA)], { rollout: { threshold: 1, keys: [entry(keyA)] } }))).toBe('malformed-trust');
    expect(parse(file(1, [entry(keyA), entry(keyB)], { rollout: { threshold: 1, keys: [entry(keyR), entry(keyB)] } }))).toBe('malformed-trust');
    expect(parse(file(1, [entry(keyA)], { rollout: { threshold: 1, keys: [entry(keyR)] } }))).toBe('no error');
  });
  it('refuses a malformed rollout section', () => {
    for (const rollout of [
      null,
      1,
      [],
      {},
      { threshold: 1 },
      { threshold: 0, keys: [entry(keyR)] },
      { threshold: 2, keys: [entry(keyR)] },
      { threshold: 1, keys: [] },
      { threshold: 1, keys: [entry(keyR), entry(keyR)] },
      { threshold: 1, keys: [{ id: keyS.id, publicKey: b64(keyR) }] },
    ]) {
      expect(parse(file(1, [entry(keyA)], { rollout })), JSON.stringify(rollout)).toBe('malformed-trust');
    }
  });
  it('version: an unsigned integer, default 0', () => {
    expect(parseTrustFile(file(1, [entry(keyA)], { version: 12 })).version).toBe(12);
    expect(parseTrustFile(file(1, [entry(keyA)], { version: 0 })).version).toBe(0);
    for (const version of [-1, 1.5, '2', null, true, [], 2 ** 53]) {
      expect(parse(file(1, [entry(keyA)], { version })), JSON.stringify(version)).toBe('malformed-trust');
    }
  });
});

describe('key rotation (signed trust updates)', () => {
  const current: TrustFile = trustOf([keyA, keyB, keyC], [keyR], 2, 1);
  const next: TrustFile = trustOf([keyB, keyC, keyX], [keyS], 2, 2);
  const rotate = (bytes: Uint8Array, cur: TrustFile = current) => codeOf(() => verifyTrustUpdate(bytes, cur));

  it('signed by the current release threshold: accepted, with the new file and its exact text', () => {
    const signed = signTrust(next, [keyA, keyB]);
    const env = cborxDecode(signed) as { body: Uint8Array; sigs: Array<{ k: string }> };
    expect(cborxDecode(env.body)).toEqual({ v: 1, type: 'trust', trust: formatTrustFile(next) });
    expect(env.sigs.map((s) => s.k)).toEqual([keyA.id, keyB.id]);
    const out = verifyTrustUpdate(signed, current);
    expect(out.trust).toEqual(next);
    expect(out.text).toBe(formatTrustFile(next));
    // The rotated file is what the device now checks releases against: the old key A is out, X is in.
    expect(codeOf(() => verifyRelease(signRelease(DRAFT, [keyA, keyB], [keyS]), out.trust))).toBe('threshold-not-met');
    expect(codeOf(() => verifyRelease(signRelease(DRAFT, [keyA], [keyS]), out.trust))).toBe('untrusted-key');
    expect(codeOf(() => verifyRelease(signRelease(DRAFT, [keyX, keyC], [keyR]), out.trust))).toBe('untrusted-key');
    expect(codeOf(() => verifyRelease(signRelease(DRAFT, [keyX, keyC], [keyS]), out.trust))).toBe('no error');
    // A next rotation is checked against the rotated file.
    expect(rotate(signTrust({ ...next, version: 3 }, [keyA, keyB]), out.trust)).toBe('threshold-not-met');
    expect(rotate(signTrust({ ...next, version: 3 }, [keyX, keyB]), out.trust)).toBe('no error');
  });
  it('below the current threshold → threshold-not-met; by unknown keys → untrusted-key', () => {
    expect(rotate(signTrust(next, [keyA]))).toBe('threshold-not-met');
    expect(rotate(signTrust(next, [keyA, keyX]))).toBe('threshold-not-met');
    expect(rotate(signTrust(next, [keyX]))).toBe('untrusted-key');
    // Keys of the new file do not sign their own promotion.
    expect(rotate(signTrust(trustOf([keyX], undefined, 1, 2), [keyX]))).toBe('untrusted-key');
  });
  it('signed by a rollout key → wrong-role', () => {
    expect(rotate(signTrust(next, [keyR]))).toBe('wrong-role');
    expect(rotate(signTrust(next, [keyR, keyX]))).toBe('wrong-role');
    // A rollout signature beside the release threshold changes nothing.
    expect(rotate(signTrust(next, [keyR, keyA, keyB]))).toBe('no error');
  });
  it('the same or a lower version → replayed', () => {
    expect(rotate(signTrust({ ...next, version: 1 }, [keyA, keyB]))).toBe('replayed');
    expect(rotate(signTrust({ ...next, version: 0 }, [keyA, keyB]))).toBe('replayed');
    expect(rotate(signTrust({ ...next, version: undefined }, [keyA, keyB]))).toBe('replayed');
    expect(rotate(signTrust({ ...next, version: 2 }, [keyA, keyB]), { ...current, version: 7 })).toBe('replayed');
  });
  it('a bad signature → bad-signature', () => {
    const signed = signTrust(next, [keyA, keyB]);
    const env = cborxDecode(signed) as { body: Uint8Array; sigs: Array<{ k: string; s: Uint8Array }> };
    const body = Uint8Array.from(env.body);
    body[body.length - 3] ^= 1;
    expect(rotate(cborEncode({ body, sigs: env.sigs }))).toBe('bad-signature');
  });
  it('malformed updates → malformed-trust', () => {
    const signedBody = (body: unknown) => signEnvelope(cborEncode(body), [keyA, keyB]);
    const text = formatTrustFile(next);
    const cases: Uint8Array[] = [
      new Uint8Array(0),
      Uint8Array.from([0xa1]),
      cborEncode('trust'),
      cborEncode({ body: new Uint8Array(4), sigs: [] }),
      Uint8Array.from([...signTrust(next, [keyA, keyB]), 0]),
      signEnvelope(Uint8Array.from([0xa1]), [keyA, keyB]),
      signedBody({ v: 2, type: 'trust', trust: text }),
      signedBody({ v: 1, type: 'manifest', trust: text }),
      signedBody({ v: 1, trust: text }),
      signedBody({ v: 1, type: 'trust', trust: JSON.parse(text) as unknown }),
      signedBody({ v: 1, type: 'trust', trust: '{' }),
      signedBody({ v: 1, type: 'trust', trust: text.replace('"threshold": 2', '"threshold": 9') }),
      signedBody({ v: 1, type: 'trust', trust: formatTrustFile({ ...next, rollout: { threshold: 1, keys: next.keys.slice(0, 1) } }) }),
      signedBody([1, 'trust', text]),
    ];
    expect(rotate(signedBody({ v: 1, type: 'trust', trust: text }))).toBe('no error');
    cases.forEach((c, k) => expect(rotate(c), `case ${k}`).toBe('malformed-trust'));
  });
});
