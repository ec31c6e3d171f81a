import nacl from 'tweetnacl';
import { cborDecode, cborEncode, isBytes, isHex, isRecord, isUint } from './cbor.ts';
import { ProtocolError } from './errors.ts';
import { MAX_CHUNKS, PROTOCOL_VERSION, isUpdateId } from './frames.ts';
import { sha256Hex } from './chunks.ts';
import { isTopicSegment } from './topics.ts';

/** One way from a model digest to another: the update that does it and how to fetch and check it. */
export interface ReleaseStep {
  updateId: string;
  /**
   * The digest this step applies to; null for a full-model step, whose
   * payload is the whole target model (safetensors) for devices on no chain.
   */
  from: string | null;
  to: string;
  /** Payload size in bytes. */
  size: number;
  /** SHA-256 of the whole payload, hex. */
  sha256: string;
  chunkSize: number;
  chunks: number;
  /** SHA-256 of the chunk list, hex. */
  listSha256: string;
  /** The payload is sealed with the group key (protocol/seal.ts); hashes are over the sealed bytes. */
  sealed?: boolean;
}

export interface ReleaseBody {
  model: string;
  group: string;
  /** Grows with every release for this model and group. */
  seq: number;
  /** Unix seconds. */
  issued: number;
  /** Unix seconds; refused after this. */
  expires: number;
  /** The model digest every device of the group should end on. */
  target: string;
  /**
   * Ways to reach `target`: updates that may form a chain (v1→v2→v3: a
   * device applies the steps from its own digest on, in order), and at most
   * one full-model step.
   */
  steps: ReleaseStep[];
  /** This release takes the group back to an earlier version (operator rollback). */
  rollback: boolean;
  /** The digest the group was asked to run before this release, when known. */
  previous: string | null;
}

export interface Signature {
  keyId: string;
  sig: Uint8Array;
}

export interface SignedRelease {
  /** The exact CBOR bytes the signatures cover. */
  body: Uint8Array;
  sigs: Signature[];
}

export interface TrustedKey {
  id: string;
  publicKey: Uint8Array;
}

export interface TrustFile {
  threshold: number;
  keys: TrustedKey[];
}

export interface SigningKey {
  id: string;
  publicKey: Uint8Array;
  secretKey: Uint8Array; // 64 bytes, tweetnacl layout
}

const DIGEST_HEX = 64;
const MAX_STEPS = 64;
const MAX_SIGS = 16;

/** keyId = hex SHA-256 of the raw 32-byte Ed25519 public key. */
export function keyIdOf(publicKey: Uint8Array): string {
  return sha256Hex(publicKey);
}

export function signingKeyFromSeed(seed: Uint8Array): SigningKey {
  if (seed.byteLength !== 32) throw new TypeError('an Ed25519 seed is 32 bytes');
  const kp = nacl.sign.keyPair.fromSeed(seed);
  return { id: keyIdOf(kp.publicKey), publicKey: kp.publicKey, secretKey: kp.secretKey };
}

export function encodeReleaseBody(b: ReleaseBody): Uint8Array {
  const m: Record<string, unknown> = {
    v: PROTOCOL_VERSION,
    model: b.model,
    group: b.group,
    seq: b.seq,
    issued: b.issued,
    expires: b.expires,
    target: b.target,
    steps: b.steps.map((s) => ({
      u: s.updateId,
      from: s.from,
      to: s.to,
      size: s.size,
      sha256: s.sha256,
      chunk: s.chunkSize,
      chunks: s.chunks,
      list: s.listSha256,
      ...(s.sealed ? { sealed: true } : {}),
    })),
  };
  if (b.rollback) m.rollback = true;
  if (b.previous) m.previous = b.previous;
  return cborEncode(m);
}

function bad(detail: string): never {
  throw new ProtocolError('malformed-release', detail);
}

export function decodeReleaseBody(bytes: Uint8Array): ReleaseBody {
  let m: unknown;
  try {
    m = cborDecode(bytes);
  } catch (e) {
    bad(`body: ${(e as Error).message}`);
  }
  if (!isRecord(m)) bad('body is not a map');
  if (m.v !== PROTOCOL_VERSION) bad(`unsupported version ${typeof m.v === 'object' ? typeof m.v : String(m.v)}`);
  if (typeof m.model !== 'string' || !isTopicSegment(m.model)) bad('model');
  if (typeof m.group !== 'string' || !isTopicSegment(m.group)) bad('group');
  if (!isUint(m.seq) || !isUint(m.issued) || !isUint(m.expires)) bad('seq, issued and expires must be unsigned integers');
  if (m.expires <= m.issued) bad('expires must be after issued');
  if (!isHex(m.target, DIGEST_HEX)) bad('target must be a 64-hex-digit digest');
  if (!Array.isArray(m.steps) || m.steps.length > MAX_STEPS) bad(`steps must be an array of at most ${MAX_STEPS}`);
  const steps = m.steps.map((s: unknown, k: number): ReleaseStep => {
    if (!isRecord(s)) bad(`step ${k} is not a map`);
    if (!isUpdateId(s.u)) bad(`step ${k}: u`);
    if ((s.from !== null && !isHex(s.from, DIGEST_HEX)) || !isHex(s.to, DIGEST_HEX)) bad(`step ${k}: from/to`);
    if (!isUint(s.size) || s.size === 0) bad(`step ${k}: size`);
    if (!isHex(s.sha256, DIGEST_HEX) || !isHex(s.list, DIGEST_HEX)) bad(`step ${k}: sha256/list`);
    if (!isUint(s.chunk) || s.chunk === 0 || !isUint(s.chunks, MAX_CHUNKS)) bad(`step ${k}: chunk/chunks`);
    if (s.chunks !== Math.ceil(s.size / s.chunk)) bad(`step ${k}: chunks does not match size / chunk`);
    if (s.sha256.slice(0, s.u.length) !== s.u) bad(`step ${k}: update id is not the payload hash`);
    if (s.sealed !== undefined && s.sealed !== true) bad(`step ${k}: sealed must be true when present`);
    const step: ReleaseStep = { updateId: s.u, from: s.from as string | null, to: s.to, size: s.size, sha256: s.sha256, chunkSize: s.chunk, chunks: s.chunks, listSha256: s.list };
    if (s.sealed === true) step.sealed = true;
    return step;
  });
  checkChains(steps, m.target);
  if (m.rollback !== undefined && m.rollback !== true) bad('rollback must be true when present');
  if (m.previous !== undefined && !isHex(m.previous, DIGEST_HEX)) bad('previous must be a 64-hex-digit digest');
  return {
    model: m.model, group: m.group, seq: m.seq, issued: m.issued, expires: m.expires, target: m.target, steps,
    rollback: m.rollback === true, previous: (m.previous as string | undefined) ?? null,
  };
}

/** Every step leads to the target, directly or through other steps; no two start at one digest; at most one full step. */
function checkChains(steps: ReleaseStep[], target: string): void {
  const byFrom = new Map<string, ReleaseStep>();
  let full = 0;
  steps.forEach((s, k) => {
    if (s.from === null) {
      if (++full > 1) bad('more than one full-model step');
      if (s.to !== target) bad(`step ${k}: a full-model step must lead to the target`);
      return;
    }
    if (s.from === s.to) bad(`step ${k}: leads from ${s.from.slice(0, 12)} to itself`);
    if (s.from === target) bad(`step ${k}: starts at the target`);
    if (byFrom.has(s.from)) bad(`two steps start at ${s.from.slice(0, 12)}`);
    byFrom.set(s.from, s);
  });
  for (const [from] of byFrom) {
    if (!pathFromSteps(byFrom, from, target)) bad(`the steps from ${from.slice(0, 12)} do not lead to the target`);
  }
}

function pathFromSteps(byFrom: Map<string, ReleaseStep>, running: string, target: string): ReleaseStep[] | undefined {
  const path: ReleaseStep[] = [];
  for (let at = running; at !== target; ) {
    const s = byFrom.get(at);
    if (!s || path.length > byFrom.size) return undefined;
    path.push(s);
    at = s.to;
  }
  return path;
}

export function signRelease(body: ReleaseBody, keys: SigningKey[]): Uint8Array {
  const bodyBytes = encodeReleaseBody(body);
  const sigs = keys.map((k) => ({ k: k.id, s: nacl.sign.detached(bodyBytes, k.secretKey) }));
  return cborEncode({ body: bodyBytes, sigs });
}

export function decodeSignedRelease(bytes: Uint8Array): SignedRelease {
  let m: unknown;
  try {
    m = cborDecode(bytes);
  } catch (e) {
    bad(`envelope: ${(e as Error).message}`);
  }
  if (!isRecord(m) || !isBytes(m.body) || !Array.isArray(m.sigs)) bad('envelope must be {body: bytes, sigs: [...]}');
  if (m.sigs.length === 0 || m.sigs.length > MAX_SIGS) bad(`between 1 and ${MAX_SIGS} signatures`);
  const sigs = m.sigs.map((s: unknown): Signature => {
    if (!isRecord(s) || !isHex(s.k, 64) || !isBytes(s.s) || s.s.byteLength !== 64) bad('signature must be {k: 64 hex, s: 64 bytes}');
    return { keyId: s.k, sig: s.s };
  });
  return { body: m.body, sigs };
}

/**
 * Checks the signatures against the trust file and decodes the body.
 * Distinct trusted keys with a valid signature must reach the threshold.
 */
export function verifyRelease(bytes: Uint8Array, trust: TrustFile): ReleaseBody {
  const signed = decodeSignedRelease(bytes);
  const byId = new Map(trust.keys.map((k) => [k.id, k]));
  const valid = new Set<string>();
  let sawTrusted = false;
  for (const s of signed.sigs) {
    const key = byId.get(s.keyId);
    if (!key) continue;
    sawTrusted = true;
    if (!nacl.sign.detached.verify(signed.body, s.sig, key.publicKey)) throw new ProtocolError('bad-signature', `key ${s.keyId.slice(0, 16)}`);
    valid.add(s.keyId);
  }
  if (!sawTrusted) throw new ProtocolError('untrusted-key', signed.sigs.map((s) => s.keyId.slice(0, 16)).join(', '));
  if (valid.size < trust.threshold) throw new ProtocolError('threshold-not-met', `${valid.size} of ${trust.threshold}`);
  return decodeReleaseBody(signed.body);
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
}

/** Unix seconds as ISO 8601, or the raw number when out of Date's range (toISOString would throw). */
function isoTime(seconds: number): string {
  const d = new Date(seconds * 1000);
  return Number.isNaN(d.getTime()) ? `${seconds} s` : d.toISOString();
}

/** Policy checks on a verified body: addressed to us, fresh, not replayed. */
export function checkRelease(b: ReleaseBody, x: ReleaseExpectations): void {
  if (b.model !== x.model) throw new ProtocolError('wrong-model', `${b.model}, this device runs ${x.model}`);
  if (b.group !== x.group) throw new ProtocolError('wrong-group', `${b.group}, this device is in ${x.group}`);
  const now = Math.max(x.now, x.clockFloor);
  if (b.expires <= now) throw new ProtocolError('expired', `expired ${isoTime(b.expires)}`);
  if (b.issued > x.now + x.skewSeconds && b.issued > x.clockFloor) {
    throw new ProtocolError('not-yet-valid', `issued ${isoTime(b.issued)}`);
  }
  if (b.seq <= x.highestSeq) throw new ProtocolError('replayed', `seq ${b.seq} <= ${x.highestSeq}`);
}

/** Trust file JSON: {threshold, keys: [{id, publicKey (base64)}]}. */
export function parseTrustFile(text: string): TrustFile {
  const badTrust = (d: string): never => {
    throw new ProtocolError('malformed-trust', d);
  };
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    return badTrust((e as Error).message);
  }
  if (!isRecord(j) || !Array.isArray(j.keys)) return badTrust('expected {threshold, keys: [...]}');
  const keys = j.keys.map((k: unknown, i: number): TrustedKey => {
    if (!isRecord(k) || typeof k.id !== 'string' || typeof k.publicKey !== 'string') return badTrust(`key ${i}`);
    const publicKey = new Uint8Array(Buffer.from(k.publicKey, 'base64'));
    if (publicKey.byteLength !== 32) return badTrust(`key ${i}: publicKey must be 32 bytes of base64`);
    if (keyIdOf(publicKey) !== k.id) return badTrust(`key ${i}: id is not the SHA-256 of the public key`);
    return { id: k.id, publicKey };
  });
  if (new Set(keys.map((k) => k.id)).size !== keys.length) return badTrust('the same key is listed twice');
  if (!isUint(j.threshold) || j.threshold < 1 || j.threshold > keys.length) return badTrust('threshold must be 1..number of keys');
  return { threshold: j.threshold, keys };
}

export function formatTrustFile(t: TrustFile): string {
  return JSON.stringify(
    { threshold: t.threshold, keys: t.keys.map((k) => ({ id: k.id, publicKey: Buffer.from(k.publicKey).toString('base64') })) },
    null,
    2,
  ) + '\n';
}

/**
 * The steps a device running `running` applies, in order, to reach the
 * target: the chain from its digest, else the full-model step, else none.
 */
export function pathFrom(b: ReleaseBody, running: string): ReleaseStep[] | undefined {
  const byFrom = new Map(b.steps.filter((s) => s.from !== null).map((s) => [s.from as string, s]));
  const chain = byFrom.has(running) ? pathFromSteps(byFrom, running, b.target) : undefined;
  if (chain) return chain;
  const full = b.steps.find((s) => s.from === null);
  return full ? [full] : undefined;
}
