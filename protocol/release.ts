import { cborDecode, cborEncode, isBytes, isRecord } from './cbor.ts';
import { sha256Hex } from './chunks.ts';
import { ProtocolError } from './errors.ts';
import { PROTOCOL_VERSION } from './frames.ts';
import { decodeAssignment, encodeAssignment, type AssignmentBody } from './assignment.ts';
import { decodeManifest, encodeManifest, limitsOf, type ManifestBody, type ManifestLimits } from './manifest.ts';
import { decodeEnvelope, signEnvelope, verifyEnvelope, type SigningKey } from './signed.ts';
import { releaseRole, rolloutRole, type TrustFile } from './trust.ts';

/**
 * The retained release of a group: CBOR {v, manifest, assignment}, two
 * signed envelopes (signed.ts). The manifest (manifest.ts) is signed by the
 * release keys, the assignment (assignment.ts) by the rollout key; the
 * assignment names the manifest by the SHA-256 of its body. A device checks
 * both against its trust file and sees the pair as one ReleaseBody.
 */

export { keyIdOf, signingKeyFromSeed, type Role, type Signature, type SignedEnvelope, type SigningKey, type TrustedKey } from './signed.ts';
export { formatTrustFile, parseTrustFile, releaseRole, rolloutRole, signTrust, trustOf, verifyTrustUpdate, type TrustFile } from './trust.ts';
export { limitsOf, pathFrom, type ManifestBody, type ManifestLimits, type ReleaseStep } from './manifest.ts';
export type { AssignmentBody } from './assignment.ts';
export { maxSeqAt, SEQ_PER_SECOND } from './assignment.ts';

/** A manifest and its assignment, as one. */
export interface ReleaseBody extends Omit<AssignmentBody, 'manifest'>, ManifestBody {
  /** SHA-256 of the manifest's body bytes (its name on `fleet/models/{m}/manifests/{hash}`). */
  manifest: string;
}

/** What signRelease needs: a release body whose manifest hash is computed and whose limits may be left to fit the steps. */
export type ReleaseDraft = Omit<ReleaseBody, 'manifest' | 'limits'> & { limits?: ManifestLimits };

export interface ReleaseParts {
  /** Signed envelope of the manifest. */
  manifest: Uint8Array;
  /** Signed envelope of the assignment. */
  assignment: Uint8Array;
}

function bad(detail: string): never {
  throw new ProtocolError('malformed-release', detail);
}

/** Signs a manifest with the release keys: the signed envelope (publish it retained on `fleet/models/{m}/manifests/{hash}`). */
export function signManifest(m: ManifestBody, releaseKeys: SigningKey[]): Uint8Array {
  return signEnvelope(encodeManifest(m), releaseKeys);
}

/** The hash an assignment names a manifest by: SHA-256 of its body bytes. */
export function manifestHashOf(signedManifest: Uint8Array): string {
  return sha256Hex(decodeEnvelope(signedManifest, 'malformed-release', 'manifest').body);
}

/** Decodes a signed manifest without checking its signatures (publishers and views; devices use verifyRelease). */
export function decodeSignedManifest(signedManifest: Uint8Array): ManifestBody & { manifest: string } {
  const env = decodeEnvelope(signedManifest, 'malformed-release', 'manifest');
  return { ...decodeManifest(env.body), manifest: sha256Hex(env.body) };
}

/** Assigns an already-signed manifest to a group: signs the assignment with the rollout keys; the release message. */
export function assignManifest(signedManifest: Uint8Array, a: Omit<AssignmentBody, 'manifest'>, rolloutKeys: SigningKey[]): Uint8Array {
  const assignment = signEnvelope(encodeAssignment({ ...a, manifest: manifestHashOf(signedManifest) }), rolloutKeys);
  return composeRelease({ manifest: signedManifest, assignment });
}

export function composeRelease(p: ReleaseParts): Uint8Array {
  return cborEncode({ v: PROTOCOL_VERSION, manifest: p.manifest, assignment: p.assignment });
}

/** Both roles in one call (tests, one-shot publishes): the rollout keys default to the release keys. */
export function signRelease(d: ReleaseDraft, releaseKeys: SigningKey[], rolloutKeys: SigningKey[] = releaseKeys): Uint8Array {
  const manifest = signManifest({ model: d.model, target: d.target, steps: d.steps, limits: d.limits ?? limitsOf(d.steps) }, releaseKeys);
  return assignManifest(manifest, { model: d.model, group: d.group, seq: d.seq, issued: d.issued, expires: d.expires, rollback: d.rollback, previous: d.previous }, rolloutKeys);
}

export function releaseParts(bytes: Uint8Array): ReleaseParts {
  let m: unknown;
  try {
    m = cborDecode(bytes);
  } catch (e) {
    bad(`envelope: ${(e as Error).message}`);
  }
  if (!isRecord(m) || m.v !== PROTOCOL_VERSION || !isBytes(m.manifest) || !isBytes(m.assignment) || Object.keys(m).length !== 3) {
    bad('a release must be {v: 1, manifest: bytes, assignment: bytes} and nothing else');
  }
  return { manifest: m.manifest, assignment: m.assignment };
}

function merge(manifestBody: Uint8Array, assignmentBody: Uint8Array): ReleaseBody {
  const a = decodeAssignment(assignmentBody);
  const m = decodeManifest(manifestBody);
  const hash = sha256Hex(manifestBody);
  if (a.manifest !== hash) throw new ProtocolError('manifest-mismatch', `the assignment names manifest ${a.manifest.slice(0, 12)}, it travels with ${hash.slice(0, 12)}`);
  if (a.model !== m.model) throw new ProtocolError('manifest-mismatch', `assignment for model ${a.model}, manifest for ${m.model}`);
  return { ...a, ...m, manifest: hash };
}

/** Decodes a release without checking signatures (update server, views, publishers reading the current one). */
export function decodeRelease(bytes: Uint8Array): ReleaseBody {
  const p = releaseParts(bytes);
  return merge(decodeEnvelope(p.manifest, 'malformed-release', 'manifest').body, decodeEnvelope(p.assignment, 'malformed-release', 'assignment').body);
}

/**
 * Checks the assignment against the rollout role and the manifest against
 * the release role (each: distinct valid signatures up to its threshold; a
 * key of the other role is `wrong-role`), that the assignment names this
 * manifest, and decodes both into one body.
 */
export function verifyRelease(bytes: Uint8Array, trust: TrustFile): ReleaseBody {
  const p = releaseParts(bytes);
  const assignment = decodeEnvelope(p.assignment, 'malformed-release', 'assignment');
  const manifest = decodeEnvelope(p.manifest, 'malformed-release', 'manifest');
  const release = releaseRole(trust);
  const rollout = rolloutRole(trust);
  verifyEnvelope(assignment, rollout, 'assignment', trust.rollout ? release : undefined);
  verifyEnvelope(manifest, release, 'manifest', trust.rollout);
  return merge(manifest.body, assignment.body);
}

export interface ReleaseExpectations {
  model: string;
  group: string;
  /** Unix seconds now, as well as the device knows it. */
  now: number;
  /** The highest issued time this device has seen (clock floor for devices without a real-time clock). */
  clockFloor: number;
  /** Highest sequence accepted before, or -1. */
  highestSeq: number;
  /** Allowed skew for issued times in the future, seconds. */
  skewSeconds: number;
  /** The device's own caps; the manifest's limits must be within them. */
  caps?: ManifestLimits;
}

/** Unix seconds as ISO 8601, or the raw number when out of Date's range (toISOString would throw). */
function isoTime(seconds: number): string {
  const d = new Date(seconds * 1000);
  return Number.isNaN(d.getTime()) ? `${seconds} s` : d.toISOString();
}

/**
 * Policy checks on a verified body: addressed to us, fresh, not replayed, within our limits.
 * docs/protocol.md §5.5 steps 6 to 9, in that order: model and group (6), expiry and
 * issue time against max(clock, clockFloor) and the skew (7), seq above highestSeq (8),
 * the manifest's limits within the device's caps (9, checkLimits).
 */
export function checkRelease(b: ReleaseBody, x: ReleaseExpectations): void {
  // §5.5 step 6
  if (b.model !== x.model) throw new ProtocolError('wrong-model', `${b.model}, this device runs ${x.model}`);
  if (b.group !== x.group) throw new ProtocolError('wrong-group', `${b.group}, this device is in ${x.group}`);
  // §5.5 step 7: now' = max(device clock, clockFloor)
  const now = Math.max(x.now, x.clockFloor);
  if (b.expires <= now) throw new ProtocolError('expired', `expired ${isoTime(b.expires)}`);
  if (b.issued > x.now + x.skewSeconds && b.issued > x.clockFloor) {
    throw new ProtocolError('not-yet-valid', `issued ${isoTime(b.issued)}`);
  }
  // §5.5 steps 8 and 9
  if (b.seq <= x.highestSeq) throw new ProtocolError('replayed', `seq ${b.seq} <= ${x.highestSeq}`);
  if (x.caps) checkLimits(b.limits, x.caps);
}

/** The manifest's limits must be within the device's caps (docs/protocol.md §5.2 `limits`, §5.5 step 9). */
export function checkLimits(l: ManifestLimits, caps: ManifestLimits): void {
  const over = [
    l.payloadBytes > caps.payloadBytes ? `payload ${l.payloadBytes} > ${caps.payloadBytes} bytes` : '',
    l.chunks > caps.chunks ? `${l.chunks} > ${caps.chunks} chunks` : '',
    l.chunkBytes > caps.chunkBytes ? `chunk ${l.chunkBytes} > ${caps.chunkBytes} bytes` : '',
  ].filter(Boolean);
  if (over.length) throw new ProtocolError('payload-too-large', `the manifest allows ${over.join(', ')}`);
}

/** Checks a signed manifest alone against the release role (publishers and the rollout key looking one up). */
export function verifyManifest(signedManifest: Uint8Array, trust: TrustFile): ManifestBody & { manifest: string } {
  const env = decodeEnvelope(signedManifest, 'malformed-release', 'manifest');
  verifyEnvelope(env, releaseRole(trust), 'manifest', trust.rollout);
  return { ...decodeManifest(env.body), manifest: sha256Hex(env.body) };
}
