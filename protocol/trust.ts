import { cborDecode, cborEncode, isRecord, isUint } from './cbor.ts';
import { ProtocolError } from './errors.ts';
import { PROTOCOL_VERSION } from './frames.ts';
import { decodeEnvelope, keyIdOf, signEnvelope, verifyEnvelope, type Role, type SigningKey, type TrustedKey } from './signed.ts';

/**
 * A device's trust file (JSON; docs/protocol.md §5.4, rotation included):
 *   {version, threshold, keys: [{id, publicKey}], rollout: {threshold, keys}}
 * `threshold`/`keys` are the release role (they sign manifests: what an
 * update is); `rollout` is the rollout role (it signs group assignments:
 * which signed manifest a group runs). Without `rollout` the release keys
 * hold both roles (one-role fleets: labs and tests). A key may not be in both.
 * `version` (default 0) grows with every rotation (see signTrust).
 */
export interface TrustFile extends Role {
  /** Default 0. */
  version?: number;
  rollout?: Role;
}

/** The keys that sign manifests. */
export function releaseRole(t: TrustFile): Role {
  return { threshold: t.threshold, keys: t.keys };
}

/** The keys that sign assignments: the rollout role, or the release role when there is none. */
export function rolloutRole(t: TrustFile): Role {
  return t.rollout ?? releaseRole(t);
}

function badTrust(d: string): never {
  throw new ProtocolError('malformed-trust', d);
}

function parseRole(j: unknown, where: string): Role {
  if (!isRecord(j) || !Array.isArray(j.keys)) return badTrust(`${where}: expected {threshold, keys: [...]}`);
  const keys = j.keys.map((k: unknown, i: number): TrustedKey => {
    if (!isRecord(k) || typeof k.id !== 'string' || typeof k.publicKey !== 'string') return badTrust(`${where} key ${i}`);
    const publicKey = new Uint8Array(Buffer.from(k.publicKey, 'base64'));
    if (publicKey.byteLength !== 32) return badTrust(`${where} key ${i}: publicKey must be 32 bytes of base64`);
    if (keyIdOf(publicKey) !== k.id) return badTrust(`${where} key ${i}: id is not the SHA-256 of the public key`);
    return { id: k.id, publicKey };
  });
  if (new Set(keys.map((k) => k.id)).size !== keys.length) return badTrust(`${where}: the same key is listed twice`);
  if (!isUint(j.threshold) || j.threshold < 1 || j.threshold > keys.length) return badTrust(`${where}: threshold must be 1..number of keys`);
  return { threshold: j.threshold, keys };
}

/** Trust file JSON → TrustFile; `malformed-trust` naming what is wrong. */
export function parseTrustFile(text: string): TrustFile {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    return badTrust((e as Error).message);
  }
  if (!isRecord(j)) return badTrust('expected {version, threshold, keys: [...], rollout: {threshold, keys}}');
  const release = parseRole(j, 'release');
  if (j.version !== undefined && !isUint(j.version)) badTrust('version must be an unsigned integer');
  const t: TrustFile = { version: (j.version as number | undefined) ?? 0, ...release };
  if (j.rollout !== undefined) {
    t.rollout = parseRole(j.rollout, 'rollout');
    const ids = new Set(release.keys.map((k) => k.id));
    const both = t.rollout.keys.find((k) => ids.has(k.id));
    if (both) badTrust(`key ${both.id.slice(0, 16)} is in both the release and the rollout role; a role split needs separate keys`);
  }
  return t;
}

const roleJson = (r: Role): { threshold: number; keys: Array<{ id: string; publicKey: string }> } => ({
  threshold: r.threshold,
  keys: r.keys.map((k) => ({ id: k.id, publicKey: Buffer.from(k.publicKey).toString('base64') })),
});

export function formatTrustFile(t: TrustFile): string {
  return JSON.stringify({ version: t.version ?? 0, ...roleJson(t), ...(t.rollout ? { rollout: roleJson(t.rollout) } : {}) }, null, 2) + '\n';
}

/** A trust file of keys: release keys with their threshold, and optionally rollout keys. */
export function trustOf(release: Array<Pick<SigningKey, 'id' | 'publicKey'>>, rollout?: Array<Pick<SigningKey, 'id' | 'publicKey'>>, threshold = 1, version = 0): TrustFile {
  const role = (keys: Array<Pick<SigningKey, 'id' | 'publicKey'>>, th: number): Role => {
    const unique = [...new Map(keys.map((k) => [k.id, { id: k.id, publicKey: k.publicKey }])).values()];
    return { threshold: Math.min(th, unique.length), keys: unique };
  };
  const t: TrustFile = { version, ...role(release, threshold) };
  // A key in both roles would switch the split off: such keys stay release keys only.
  const separate = rollout?.filter((k) => !t.keys.some((r) => r.id === k.id)) ?? [];
  if (separate.length) t.rollout = role(separate, 1);
  return t;
}

/**
 * Key rotation: a new trust file, signed by the current release threshold.
 * Envelope body: CBOR {v, type: 'trust', trust: <the JSON text>}.
 */
export function signTrust(next: TrustFile, releaseKeys: SigningKey[]): Uint8Array {
  return signEnvelope(cborEncode({ v: PROTOCOL_VERSION, type: 'trust', trust: formatTrustFile(next) }), releaseKeys);
}

/**
 * Checks a signed trust file against the current one: signed by the current
 * release threshold, well formed, and a higher version (an older one is
 * `replayed`). Returns the new trust file and its JSON text.
 */
export function verifyTrustUpdate(bytes: Uint8Array, current: TrustFile): { trust: TrustFile; text: string } {
  const env = decodeEnvelope(bytes, 'malformed-trust', 'signed trust file');
  verifyEnvelope(env, releaseRole(current), 'trust file', current.rollout);
  let m: unknown;
  try {
    m = cborDecode(env.body);
  } catch (e) {
    return badTrust(`signed trust file body: ${(e as Error).message}`);
  }
  if (!isRecord(m) || m.v !== PROTOCOL_VERSION || m.type !== 'trust' || typeof m.trust !== 'string') return badTrust('signed trust file body must be {v, type: "trust", trust: text}');
  const trust = parseTrustFile(m.trust);
  if ((trust.version ?? 0) <= (current.version ?? 0)) throw new ProtocolError('replayed', `trust file version ${trust.version ?? 0} <= ${current.version ?? 0}`);
  return { trust, text: m.trust };
}
