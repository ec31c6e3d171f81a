import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import nacl from 'tweetnacl';

/**
 * The one place an Ed25519 signature is checked (docs/security.md, "Ed25519 verification").
 *
 * Native first: node:crypto (OpenSSL) verifies in 0.15 ms where tweetnacl's pure
 * JavaScript takes 9 ms (this 2-core machine), and is stricter: it refuses a
 * non-canonical S (S ≥ L, RFC 8032 §5.1.7), which tweetnacl accepts (a second
 * valid-looking encoding of the same signature). Where node:crypto has no Ed25519
 * (the dashboard's browser script), tweetnacl with the same S < L check. Wrong-length keys or signatures are `false`, never an exception.
 */

export const ED25519_PUBLIC_KEY_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;

/** DER of SubjectPublicKeyInfo for Ed25519 (RFC 8410) up to the raw 32-byte key. */
const SPKI_PREFIX = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);

/**
 * Buffer only inside functions that run on the native path: the dashboard's browser bundle
 * loads this module too, and there the check at load fails and tweetnacl is used.
 */
const spki = (publicKey: Uint8Array): Buffer => Buffer.concat([SPKI_PREFIX, publicKey]);

const fromHex = (s: string): Uint8Array => Uint8Array.from(s.match(/../g)!, (h) => parseInt(h, 16));

/** The group order L = 2^252 + 27742317777372353535851937790883648493, little-endian. */
const L = Uint8Array.from([0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);

/** Whether the S half of a 64-byte signature (bytes 32..63, little-endian) is below L. */
export function isCanonicalS(sig: Uint8Array): boolean {
  for (let i = 31; i >= 0; i--) {
    const s = sig[32 + i]!;
    if (s !== L[i]) return s < L[i]!;
  }
  return false; // S = L
}

export type Ed25519Verify = (message: Uint8Array, sig: Uint8Array, publicKey: Uint8Array) => boolean;

const wellFormed = (sig: Uint8Array, publicKey: Uint8Array): boolean => sig.byteLength === ED25519_SIGNATURE_BYTES && publicKey.byteLength === ED25519_PUBLIC_KEY_BYTES;

/** tweetnacl, refusing S ≥ L as OpenSSL does: the fallback, and the reference the tests compare with. */
export const verifyWithTweetnacl: Ed25519Verify = (message, sig, publicKey) => wellFormed(sig, publicKey) && isCanonicalS(sig) && nacl.sign.detached.verify(message, sig, publicKey);

/** KeyObjects of the keys seen (a device trusts a handful; bounded all the same). */
const keyObjects = new Map<string, KeyObject>();
const MAX_CACHED_KEYS = 64;

function keyObject(publicKey: Uint8Array): KeyObject {
  const id = String.fromCharCode(...publicKey);
  let k = keyObjects.get(id);
  if (!k) {
    k = createPublicKey({ key: spki(publicKey), format: 'der', type: 'spki' });
    if (keyObjects.size >= MAX_CACHED_KEYS) keyObjects.clear();
    keyObjects.set(id, k);
  }
  return k;
}

/** node:crypto; any error (a key OpenSSL cannot decode) is a signature that does not verify. */
export const verifyWithNodeCrypto: Ed25519Verify = (message, sig, publicKey) => {
  if (!wellFormed(sig, publicKey)) return false;
  try {
    return verify(null, message, keyObject(publicKey), sig);
  } catch {
    return false;
  }
};

/** RFC 8032 §7.1 test 1 (empty message): whether node:crypto verifies Ed25519 here at all. */
function nodeCryptoHasEd25519(): boolean {
  const pk = fromHex('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a');
  const sig = fromHex('e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b');
  try {
    return verify(null, new Uint8Array(0), createPublicKey({ key: spki(pk), format: 'der', type: 'spki' }), sig);
  } catch {
    return false;
  }
}

/** Which implementation this process uses (decided once, at load). */
export const ED25519_IMPLEMENTATION: 'node:crypto' | 'tweetnacl' = nodeCryptoHasEd25519() ? 'node:crypto' : 'tweetnacl';

/** Whether `sig` is a valid Ed25519 signature of `message` by the raw 32-byte `publicKey`. */
export const verifyEd25519: Ed25519Verify = ED25519_IMPLEMENTATION === 'node:crypto' ? verifyWithNodeCrypto : verifyWithTweetnacl;
