/**
 * Ed25519 verification (protocol/ed25519.ts): node:crypto where it has Ed25519, tweetnacl with the
 * same S < L check otherwise. RFC 8032 vectors, malformed input refused without exceptions, a
 * non-canonical S refused (tweetnacl alone accepts it), and both paths agreeing on random keys.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import nacl from 'tweetnacl';
import { describe, expect, it } from 'vitest';
import { ED25519_IMPLEMENTATION, isCanonicalS, verifyEd25519, verifyWithNodeCrypto, verifyWithTweetnacl, type Ed25519Verify } from '../../protocol/ed25519.ts';
import { signEnvelope, signingKeyFromSeed, verifyEnvelope } from '../../protocol/signed.ts';
import { codeOf } from '../support/protocol-errors.ts';

const hex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

/** RFC 8032 §7.1, tests 1-3: secret key (seed), public key, message, signature. */
const RFC8032 = [
  {
    name: 'test 1 (empty message)',
    seed: '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
    pk: 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
    msg: '',
    sig: 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b',
  },
  {
    name: 'test 2 (one byte)',
    seed: '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
    pk: '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
    msg: '72',
    sig: '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00',
  },
  {
    name: 'test 3 (two bytes)',
    seed: 'c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7',
    pk: 'fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025',
    msg: 'af82',
    sig: '6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a',
  },
].map((v) => ({ name: v.name, seed: hex(v.seed), pk: hex(v.pk), msg: hex(v.msg), sig: hex(v.sig) }));

const L = (1n << 252n) + 27742317777372353535851937790883648493n;
const readLE = (b: Uint8Array): bigint => b.reduceRight((x, byte) => (x << 8n) | BigInt(byte), 0n);
function withS(sig: Uint8Array, s: bigint): Uint8Array {
  const out = Uint8Array.from(sig);
  for (let i = 0; i < 32; i++) out[32 + i] = Number((s >> BigInt(8 * i)) & 0xffn);
  return out;
}

const IMPLEMENTATIONS: Array<[string, Ed25519Verify]> = [
  ['node:crypto', verifyWithNodeCrypto],
  ['tweetnacl fallback', verifyWithTweetnacl],
  ['verifyEd25519 (the one used)', verifyEd25519],
];

describe('Ed25519 verification', () => {
  it('uses node:crypto on this Node', () => {
    expect(ED25519_IMPLEMENTATION).toBe('node:crypto');
  });

  describe.each(IMPLEMENTATIONS)('%s', (_name, verify) => {
    it.each(RFC8032)('RFC 8032 $name verifies, and any flipped bit does not', ({ pk, msg, sig }) => {
      expect(verify(msg, sig, pk)).toBe(true);
      for (const bit of [0, 7, 100, 255, 256, 300, 511]) {
        const s = Uint8Array.from(sig);
        s[bit >> 3]! ^= 1 << (bit & 7);
        expect(verify(msg, s, pk)).toBe(false);
      }
      for (const bit of [0, 9, 254]) {
        const k = Uint8Array.from(pk);
        k[bit >> 3]! ^= 1 << (bit & 7);
        expect(verify(msg, sig, k)).toBe(false);
      }
      const longer = Uint8Array.from([...msg, 0]);
      expect(verify(longer, sig, pk)).toBe(false);
      if (msg.byteLength > 0) {
        const m = Uint8Array.from(msg);
        m[0]! ^= 0x80;
        expect(verify(m, sig, pk)).toBe(false);
      }
    });

    it('refuses a non-canonical S (S + L, the same signature re-encoded)', () => {
      for (const { pk, msg, sig } of RFC8032) {
        const s = readLE(sig.subarray(32));
        expect(s + L < 1n << 256n).toBe(true);
        expect(verify(msg, withS(sig, s + L), pk)).toBe(false);
      }
    });

    it('refuses wrong-length signatures and keys, and a key that is no curve point, without throwing', () => {
      const { pk, msg, sig } = RFC8032[1]!;
      for (const n of [0, 1, 32, 63, 65, 128]) expect(verify(msg, new Uint8Array(n).fill(1), pk)).toBe(false);
      expect(verify(msg, sig.subarray(0, 63), pk)).toBe(false);
      expect(verify(msg, Uint8Array.from([...sig, 0]), pk)).toBe(false);
      for (const n of [0, 31, 33, 44, 64]) expect(verify(msg, sig, new Uint8Array(n).fill(7))).toBe(false);
      expect(verify(msg, sig, pk.subarray(0, 31))).toBe(false);
      // y = 2^255 - 1 - 2^255 ... all ones below the sign bit: y ≥ p, not a valid encoding
      const notAPoint = new Uint8Array(32).fill(0xff);
      notAPoint[31] = 0x7f;
      expect(verify(msg, sig, notAPoint)).toBe(false);
      expect(verify(msg, new Uint8Array(64), new Uint8Array(32))).toBe(false);
    });
  });

  it('the RFC 8032 vectors are what tweetnacl signs from those seeds (the vectors above are right)', () => {
    for (const { seed, pk, msg, sig } of RFC8032) {
      const kp = nacl.sign.keyPair.fromSeed(seed);
      expect(Buffer.from(kp.publicKey).equals(pk)).toBe(true);
      expect(Buffer.from(nacl.sign.detached(msg, kp.secretKey)).equals(sig)).toBe(true);
    }
  });

  it('isCanonicalS: below L only', () => {
    const sig = new Uint8Array(64);
    expect(isCanonicalS(withS(sig, 0n))).toBe(true);
    expect(isCanonicalS(withS(sig, L - 1n))).toBe(true);
    expect(isCanonicalS(withS(sig, L))).toBe(false);
    expect(isCanonicalS(withS(sig, L + 1n))).toBe(false);
    expect(isCanonicalS(withS(sig, (1n << 256n) - 1n))).toBe(false);
    expect(isCanonicalS(withS(sig, 1n << 252n))).toBe(true);
  });

  it('node:crypto and tweetnacl agree on random keys and messages: valid, tampered, another key', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 2048 }), fc.nat(), (seed, msg, pick) => {
        const kp = nacl.sign.keyPair.fromSeed(seed);
        const sig = nacl.sign.detached(msg, kp.secretKey);
        expect(verifyWithNodeCrypto(msg, sig, kp.publicKey)).toBe(true);
        expect(verifyWithTweetnacl(msg, sig, kp.publicKey)).toBe(true);
        const bad = Uint8Array.from(sig);
        bad[pick % 64]! ^= 1 << (pick % 8);
        expect(verifyWithNodeCrypto(msg, bad, kp.publicKey)).toBe(verifyWithTweetnacl(msg, bad, kp.publicKey));
        expect(verifyWithNodeCrypto(msg, bad, kp.publicKey)).toBe(false);
        const other = nacl.sign.keyPair.fromSeed(randomBytes(32)).publicKey;
        expect(verifyWithNodeCrypto(msg, sig, other)).toBe(false);
        expect(verifyWithTweetnacl(msg, sig, other)).toBe(false);
      }),
      { numRuns: 60 },
    );
  }, 120_000);
});

describe('signed envelopes use it', () => {
  const key = signingKeyFromSeed(new Uint8Array(32).fill(4));
  const role = { threshold: 1, keys: [{ id: key.id, publicKey: key.publicKey }] };
  const body = new TextEncoder().encode('a manifest body');

  it('a valid signature passes; the same signature with S + L is bad-signature (tweetnacl alone accepts it)', () => {
    const sig = nacl.sign.detached(body, key.secretKey);
    expect(codeOf(() => verifyEnvelope({ body, sigs: [{ keyId: key.id, sig }] }, role, 'manifest'))).toBe('no error');
    const reencoded = withS(sig, readLE(sig.subarray(32)) + L);
    expect(nacl.sign.detached.verify(body, reencoded, key.publicKey)).toBe(true);
    expect(codeOf(() => verifyEnvelope({ body, sigs: [{ keyId: key.id, sig: reencoded }] }, role, 'manifest'))).toBe('bad-signature');
  });

  it('a wrong-length signature from a hand-built envelope is bad-signature, not an exception', () => {
    expect(signEnvelope(body, [key]).byteLength).toBeGreaterThan(64);
    expect(codeOf(() => verifyEnvelope({ body, sigs: [{ keyId: key.id, sig: new Uint8Array(63) }] }, role, 'manifest'))).toBe('bad-signature');
  });
});
