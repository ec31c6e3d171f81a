import { cborEncode, isHex, isRecord, isUint } from './cbor.ts';
import { ProtocolError } from './errors.ts';
import { MAX_CHUNKS, PROTOCOL_VERSION, isUpdateId } from './frames.ts';
import { decodeDocument } from './signed.ts';
import type { PayloadDescriptor } from './chunks.ts';

/**
 * A manifest (docs/protocol.md §5.2) says what an update is (TUF's targets metadata): the model, the
 * digest it leads to, and every way there — signed by the release keys, which
 * may be kept offline. It names no group and no time: which group runs which
 * manifest, and until when, is an assignment (assignment.ts), signed by the
 * rollout key.
 */

/** One way from a model digest to another: the update that does it and how to fetch and check it. */
export interface ReleaseStep extends PayloadDescriptor {
  /**
   * The digest this step applies to; null for a full-model step, whose
   * payload is the whole target model (safetensors) for devices on no chain.
   */
  from: string | null;
  to: string;
  /** The payload is sealed with the group key (protocol/seal.ts); hashes are over the sealed bytes. */
  sealed?: boolean;
}

/**
 * What the signers allow a device to download for this manifest (TUF's
 * "endless data"): every step is within them, and a device refuses a
 * manifest whose limits are over its own configured caps.
 */
export interface ManifestLimits {
  /** Bytes of any one payload. */
  payloadBytes: number;
  /** Chunks of any one payload. */
  chunks: number;
  /** Bytes of one chunk. */
  chunkBytes: number;
}

export interface ManifestBody {
  model: string;
  /** The model digest every step leads to. */
  target: string;
  /**
   * Ways to reach `target`: updates that may form a chain (v1→v2→v3: a
   * device applies the steps from its own digest on, in order), and at most
   * one full-model step. Empty: devices that still hold `target` switch back to it.
   */
  steps: ReleaseStep[];
  limits: ManifestLimits;
}

const DIGEST_HEX = 64;
export const MAX_STEPS = 64;
/** The largest chunk the protocol allows (a chunk travels in one MQTT message). */
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;
/** The largest payload the protocol allows. */
export const MAX_PAYLOAD_BYTES = 2 ** 40;

function bad(detail: string): never {
  throw new ProtocolError('malformed-release', `manifest: ${detail}`);
}

/** Limits that just fit the steps. */
export function limitsOf(steps: ReleaseStep[]): ManifestLimits {
  return {
    payloadBytes: Math.max(1, ...steps.map((s) => s.size)),
    chunks: Math.max(1, ...steps.map((s) => s.chunks)),
    chunkBytes: Math.max(1, ...steps.map((s) => s.chunkSize)),
  };
}

export function encodeManifest(b: ManifestBody): Uint8Array {
  return cborEncode({
    v: PROTOCOL_VERSION,
    type: 'manifest',
    model: b.model,
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
    limits: { payload: b.limits.payloadBytes, chunks: b.limits.chunks, chunk: b.limits.chunkBytes },
  });
}

function decodeLimits(l: unknown): ManifestLimits {
  if (!isRecord(l)) bad('limits must be {payload, chunks, chunk}');
  if (!isUint(l.payload, MAX_PAYLOAD_BYTES) || l.payload === 0) bad(`limits.payload must be 1..${MAX_PAYLOAD_BYTES}`);
  if (!isUint(l.chunks, MAX_CHUNKS) || l.chunks === 0) bad(`limits.chunks must be 1..${MAX_CHUNKS}`);
  if (!isUint(l.chunk, MAX_CHUNK_BYTES) || l.chunk === 0) bad(`limits.chunk must be 1..${MAX_CHUNK_BYTES}`);
  return { payloadBytes: l.payload, chunks: l.chunks, chunkBytes: l.chunk };
}

export function decodeManifest(bytes: Uint8Array): ManifestBody {
  const m = decodeDocument(bytes, 'manifest', bad);
  if (!isHex(m.target, DIGEST_HEX)) bad('target must be a 64-hex-digit digest');
  const limits = decodeLimits(m.limits);
  if (!Array.isArray(m.steps) || m.steps.length > MAX_STEPS) bad(`steps must be an array of at most ${MAX_STEPS}`);
  const steps = m.steps.map((s: unknown, k: number): ReleaseStep => {
    if (!isRecord(s)) bad(`step ${k} is not a map`);
    if (!isUpdateId(s.u)) bad(`step ${k}: u`);
    if ((s.from !== null && !isHex(s.from, DIGEST_HEX)) || !isHex(s.to, DIGEST_HEX)) bad(`step ${k}: from/to`);
    if (!isUint(s.size) || s.size === 0) bad(`step ${k}: size`);
    if (!isHex(s.sha256, DIGEST_HEX) || !isHex(s.list, DIGEST_HEX)) bad(`step ${k}: sha256/list`);
    if (!isUint(s.chunk) || s.chunk === 0 || !isUint(s.chunks, MAX_CHUNKS)) bad(`step ${k}: chunk/chunks`);
    if (s.chunks !== Math.ceil(s.size / s.chunk)) bad(`step ${k}: chunks does not match size / chunk`);
    if (s.size > limits.payloadBytes || s.chunks > limits.chunks || s.chunk > limits.chunkBytes) bad(`step ${k}: over the manifest's limits`);
    if (s.sha256.slice(0, s.u.length) !== s.u) bad(`step ${k}: update id is not the payload hash`);
    if (s.sealed !== undefined && s.sealed !== true) bad(`step ${k}: sealed must be true when present`);
    const step: ReleaseStep = { updateId: s.u, from: s.from as string | null, to: s.to, size: s.size, sha256: s.sha256, chunkSize: s.chunk, chunks: s.chunks, listSha256: s.list };
    if (s.sealed === true) step.sealed = true;
    return step;
  });
  checkChains(steps, m.target);
  return { model: m.model, target: m.target, steps, limits };
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
    if (!chainFrom(byFrom, from, target)) bad(`the steps from ${from.slice(0, 12)} do not lead to the target`);
  }
}

function chainFrom(byFrom: Map<string, ReleaseStep>, running: string, target: string): ReleaseStep[] | undefined {
  const path: ReleaseStep[] = [];
  for (let at = running; at !== target;) {
    const s = byFrom.get(at);
    if (!s || path.length > byFrom.size) return undefined;
    path.push(s);
    at = s.to;
  }
  return path;
}

/**
 * The steps a device running `running` applies, in order, to reach the
 * target: the chain from its digest, else the full-model step, else none.
 */
export function pathFrom(b: Pick<ManifestBody, 'steps' | 'target'>, running: string): ReleaseStep[] | undefined {
  const byFrom = new Map(b.steps.filter((s) => s.from !== null).map((s) => [s.from as string, s]));
  const chain = byFrom.has(running) ? chainFrom(byFrom, running, b.target) : undefined;
  if (chain) return chain;
  const full = b.steps.find((s) => s.from === null);
  return full ? [full] : undefined;
}
