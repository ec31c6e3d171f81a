import nacl from 'tweetnacl';
import { cborDecode, cborEncode, isBytes, isHex, isRecord } from './cbor.ts';
import { PROTOCOL_VERSION } from './frames.ts';
import { isTopicSegment } from './topics.ts';
import { ProtocolError, type ProtocolReason } from './errors.ts';
import { sha256Hex } from './chunks.ts';
import { verifyEd25519 } from './ed25519.ts';

/**
 * Signed envelopes (docs/protocol.md §5.1): CBOR `{body: bytes, sigs: [{k: keyId, s: 64 bytes}]}`.
 * Ed25519 signatures cover the exact body bytes. Every signed document of the
 * protocol (manifest, assignment, trust file) travels in one.
 */

export interface Signature {
  keyId: string;
  sig: Uint8Array;
}

export interface SignedEnvelope {
  /** The exact CBOR bytes the signatures cover. */
  body: Uint8Array;
  sigs: Signature[];
}

export interface TrustedKey {
  id: string;
  publicKey: Uint8Array;
}

/** Keys that may sign one kind of document, and how many of them must. */
export interface Role {
  threshold: number;
  keys: TrustedKey[];
}

export interface SigningKey {
  id: string;
  publicKey: Uint8Array;
  secretKey: Uint8Array; // 64 bytes, tweetnacl layout
}

export const MAX_SIGS = 16;

/** keyId = hex SHA-256 of the raw 32-byte Ed25519 public key. */
export function keyIdOf(publicKey: Uint8Array): string {
  return sha256Hex(publicKey);
}

export function signingKeyFromSeed(seed: Uint8Array): SigningKey {
  if (seed.byteLength !== 32) throw new TypeError('an Ed25519 seed is 32 bytes');
  const kp = nacl.sign.keyPair.fromSeed(seed);
  return { id: keyIdOf(kp.publicKey), publicKey: kp.publicKey, secretKey: kp.secretKey };
}

/** Signs body bytes with every key (each key once). */
export function signEnvelope(body: Uint8Array, keys: SigningKey[]): Uint8Array {
  const unique = [...new Map(keys.map((k) => [k.id, k])).values()];
  return cborEncode({ body, sigs: unique.map((k) => ({ k: k.id, s: nacl.sign.detached(body, k.secretKey) })) });
}

export function decodeEnvelope(bytes: Uint8Array, malformed: ProtocolReason, what: string): SignedEnvelope {
  const bad = (d: string): never => {
    throw new ProtocolError(malformed, `${what}: ${d}`);
  };
  let m: unknown;
  try {
    m = cborDecode(bytes);
  } catch (e) {
    return bad((e as Error).message);
  }
  if (!isRecord(m) || !isBytes(m.body) || !Array.isArray(m.sigs) || Object.keys(m).length !== 2) return bad('must be {body: bytes, sigs: [...]} and nothing else');
  if (m.sigs.length === 0 || m.sigs.length > MAX_SIGS) return bad(`between 1 and ${MAX_SIGS} signatures`);
  const sigs = m.sigs.map((s: unknown): Signature => {
    if (!isRecord(s) || !isHex(s.k, 64) || !isBytes(s.s) || s.s.byteLength !== 64) return bad('signature must be {k: 64 hex, s: 64 bytes}');
    return { keyId: s.k, sig: s.s };
  });
  return { body: m.body, sigs };
}

/**
 * Distinct keys of the role with a valid signature must reach its threshold.
 * A signature by a key of `otherRole` (and not of this one) is `wrong-role`:
 * a rollout key signing a manifest, or a release key signing an assignment
 * where the roles are separate.
 */
export function verifyEnvelope(env: SignedEnvelope, role: Role, what: string, otherRole?: Role): void {
  const byId = new Map(role.keys.map((k) => [k.id, k]));
  const other = new Set(otherRole?.keys.map((k) => k.id) ?? []);
  const valid = new Set<string>();
  let sawTrusted = false;
  let sawOther = false;
  for (const s of env.sigs) {
    const key = byId.get(s.keyId);
    if (!key) {
      if (other.has(s.keyId)) sawOther = true;
      continue;
    }
    sawTrusted = true;
    if (!verifyEd25519(env.body, s.sig, key.publicKey)) throw new ProtocolError('bad-signature', `${what}: key ${s.keyId.slice(0, 16)}`);
    valid.add(s.keyId);
  }
  if (!sawTrusted) {
    if (sawOther) throw new ProtocolError('wrong-role', `${what} signed by a key of another role`);
    throw new ProtocolError('untrusted-key', `${what}: ${env.sigs.map((s) => s.keyId.slice(0, 16)).join(', ')}`);
  }
  if (valid.size < role.threshold) throw new ProtocolError('threshold-not-met', `${what}: ${valid.size} of ${role.threshold}`);
}

/**
 * The common start of every signed document's body: a CBOR map with the
 * protocol version, its `type` (so that one kind of document can never be
 * read as another) and a `model`. `bad` throws the caller's own error.
 */
export function decodeDocument(bytes: Uint8Array, type: string, bad: (detail: string) => never): Record<string, unknown> & { model: string } {
  let m: unknown;
  try {
    m = cborDecode(bytes);
  } catch (e) {
    return bad((e as Error).message);
  }
  if (!isRecord(m)) return bad('not a map');
  if (m.v !== PROTOCOL_VERSION) return bad(`unsupported version ${typeof m.v === 'object' ? typeof m.v : String(m.v)}`);
  if (m.type !== type) return bad(`type must be "${type}"`);
  if (typeof m.model !== 'string' || !isTopicSegment(m.model)) return bad('model');
  return m as Record<string, unknown> & { model: string };
}
