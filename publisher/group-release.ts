import { PUBLISH_DEFAULTS } from './defaults.ts';
import { FleetError, type FleetErrorKind, ignoreBecause, RefusalError, UsageError } from '../platform/errors.ts';
import { ProtocolError } from '../protocol/errors.ts';
import {
  assignManifest,
  checkRelease,
  decodeRelease,
  decodeSignedManifest,
  manifestHashOf,
  maxSeqAt,
  SEQ_PER_SECOND,
  signManifest,
  trustOf,
  verifyManifest,
  verifyRelease,
  type ManifestBody,
  type ReleaseBody,
  type SigningKey,
  type TrustFile,
} from '../protocol/release.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';

export type PublishErrorCode =
  | 'no-update-server'
  | 'upload-refused'
  | 'bad-update'
  | 'no-release'
  | 'no-previous'
  | 'untrusted-release'
  | 'bad-seq'
  | 'no-manifest'
  /** The signed release failed the checks a device makes: not published. */
  | 'invalid-release';

/** No update server answering is I/O; the rest is refused (what the broker holds) or asked wrongly. */
const PUBLISH_KINDS: Record<PublishErrorCode, FleetErrorKind> = {
  'no-update-server': 'io',
  'upload-refused': 'refusal',
  'bad-update': 'refusal',
  'no-release': 'usage',
  'no-previous': 'usage',
  'untrusted-release': 'refusal',
  'bad-seq': 'refusal',
  'no-manifest': 'usage',
  'invalid-release': 'refusal',
};

export class PublishError extends FleetError<PublishErrorCode> {
  override readonly name = 'PublishError';
  constructor(code: PublishErrorCode, message: string) {
    super(PUBLISH_KINDS[code], code, message);
  }
}

/** What every signed group release needs: where, who signs, how long, how to read the current one. */
export interface GroupReleaseOptions {
  transport: Transport;
  topics: Topics;
  /**
   * Release keys: they sign manifests (what an update is). May be empty when
   * the manifest needed is already signed and retained on the broker.
   */
  keys: SigningKey[];
  /** Rollout keys: they sign group assignments. Default: the release keys (a one-role trust file). */
  rolloutKeys?: SigningKey[];
  model: string;
  group: string;
  /** Assignment lifetime in seconds. */
  ttlSeconds: number;
  /** Explicit sequence number; must be above the current one. Default max(current + 1, now in seconds). */
  seq?: number;
  /**
   * Trust file the current release and known manifests are checked against
   * before they are used; default: the given keys (threshold 1).
   */
  trust?: TrustFile;
  /** Publishes in flight at once during an upload. */
  window?: number;
  /** How long to wait for the update server's receipt. */
  receiptTimeoutMs?: number;
  /** How long after subscribing a missing retained message means there is none (default 500 ms). */
  settleMs?: number;
  log: Logger;
  /** Chunks sent over all payloads, of all chunks. */
  onProgress?: (sentChunks: number, totalChunks: number) => void;
  now?: () => number;
}

export type KnownManifest = ManifestBody & { manifest: string; bytes: Uint8Array };

/** The rollout keys in use: the given ones, else the release keys. */
export function rolloutKeysOf(o: Pick<GroupReleaseOptions, 'keys' | 'rolloutKeys'>): SigningKey[] {
  return o.rolloutKeys?.length ? o.rolloutKeys : o.keys;
}

/** The trust file the options imply: the given one, else the keys (threshold 1; the rollout role when its keys differ). */
export function trustOfOptions(o: Pick<GroupReleaseOptions, 'keys' | 'rolloutKeys' | 'trust'>): TrustFile {
  if (o.trust) return o.trust;
  if (o.keys.length === 0) throw new UsageError('needs-trust', 'without release keys, give the trust file (--trust): retained manifests and the current release are checked against its release keys');
  const rollout = o.rolloutKeys?.filter((k) => !o.keys.some((r) => r.id === k.id)) ?? [];
  return trustOf(o.keys, rollout);
}

export interface RetainedRelease {
  /**
   * Highest seq of the releases seen on the topic that verify against the
   * trust file; -1 when none. What does not verify never counts: a release
   * edited to a huge seq (its signature broken) must not push the next one.
   */
  seq: number;
  /** The latest release, when it verified against the trust file. */
  body: ReleaseBody | undefined;
  /** Its bytes (the signed manifest inside can be re-assigned with the rollout key alone). */
  bytes: Uint8Array | undefined;
  /** Why the latest release on the topic was not taken (malformed, not signed by trusted keys). */
  problem: string | undefined;
}

/**
 * Follows the retained release of one group and model. `read()` resolves once
 * a release has arrived, or `settleMs` after subscribing when there is none
 * (the broker sends retained messages right after the subscription). Only
 * releases that verify against `trust` are taken; others are logged and
 * ignored (anyone allowed to publish on the topic can put bytes there).
 */
export async function watchRelease(t: Transport, topic: string, trust: TrustFile, log: Logger, settleMs: number = PUBLISH_DEFAULTS.settleMs): Promise<{ read(): Promise<RetainedRelease>; stop(): Promise<void> }> {
  const state: RetainedRelease = { seq: -1, body: undefined, bytes: undefined, problem: undefined };
  let seen = false;
  let wake: (() => void) | undefined;
  const off = t.onMessage((tp, payload) => {
    if (tp !== topic) return;
    seen = true;
    if (payload.byteLength > 0) {
      try {
        const body = verifyRelease(payload, trust);
        Object.assign(state, { body, bytes: payload, problem: undefined, seq: Math.max(state.seq, body.seq) });
      } catch (e) {
        const problem = `the release on the broker does not verify against the trust file: ${(e as Error).message}`;
        log.warn('the current release on the broker does not verify; ignored (its seq does not count)', { topic, error: (e as Error).message });
        Object.assign(state, { body: undefined, bytes: undefined, problem });
      }
    } else {
      Object.assign(state, { body: undefined, bytes: undefined, problem: undefined });
    }
    wake?.();
  });
  await t.subscribe(topic, 1);
  const subscribedAt = Date.now();
  return {
    async read() {
      const left = subscribedAt + settleMs - Date.now();
      if (!seen && left > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
      return { ...state };
    },
    async stop() {
      off();
      await t.unsubscribe(topic).catch(ignoreBecause('the session ends the subscription anyway', log));
    },
  };
}

/**
 * The manifests retained for a model that verify against the trust file's
 * release role (others are logged and skipped), collected for `settleMs`
 * after subscribing.
 */
export async function readManifests(t: Transport, topics: Topics, model: string, trust: TrustFile, log: Logger, settleMs: number = PUBLISH_DEFAULTS.settleMs): Promise<KnownManifest[]> {
  const filter = topics.manifests(model);
  const found = new Map<string, KnownManifest>();
  const off = t.onMessage((tp, payload) => {
    const p = topics.parse(tp);
    if (p?.kind !== 'manifest' || p.model !== model || payload.byteLength === 0) return;
    try {
      const m = verifyManifest(payload, trust);
      if (m.manifest !== p.hash || m.model !== model) throw new RefusalError('manifest-mismatch', `retained under ${p.hash.slice(0, 12)} but it is ${m.manifest.slice(0, 12)} for ${m.model}`);
      found.set(m.manifest, { ...m, bytes: payload });
    } catch (e) {
      log.warn('a retained manifest is not usable; skipped', { topic: tp, error: (e as Error).message });
    }
  });
  try {
    await t.subscribe(filter, 1);
    await new Promise((r) => setTimeout(r, settleMs));
  } finally {
    off();
    await t.unsubscribe(filter).catch(ignoreBecause('the session ends the subscription anyway', log));
  }
  return [...found.values()];
}

/**
 * Signs a manifest with the release keys and publishes it retained under its
 * hash (idempotent). It is decoded first as a device decodes it: a manifest a
 * device would call malformed is not published (`invalid-release`).
 */
export async function publishManifest(o: Pick<GroupReleaseOptions, 'transport' | 'topics' | 'model' | 'keys'>, body: ManifestBody): Promise<KnownManifest> {
  const bytes = signManifest(body, o.keys);
  try {
    decodeSignedManifest(bytes);
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    throw new PublishError('invalid-release', `not published: devices would refuse this manifest for ${o.model} (${e.code}: ${e.message})`);
  }
  const m: KnownManifest = { ...body, manifest: manifestHashOf(bytes), bytes };
  await o.transport.publish(o.topics.manifest(o.model, m.manifest), bytes, { qos: 1, retain: true });
  return m;
}

/** Seconds a device accepts an issued time ahead of its clock (its default --skew). */
const DEVICE_SKEW_SECONDS = 300;

/**
 * Assigns a signed manifest to the group and publishes it (retained): the
 * rollout keys sign a sequence number above the current one (or the one
 * asked for), issued now, expiring after the TTL. Before anything is
 * published the signed release is checked as a device checks it (signatures
 * against the trust file, model, group, freshness, seq above `currentSeq`
 * and within the ceiling for its issued time): nothing a device would refuse
 * reaches the broker.
 */
export async function publishGroupRelease(o: GroupReleaseOptions, currentSeq: number, what: { manifest: Uint8Array; rollback: boolean; previous: string | null }): Promise<ReleaseBody> {
  const nowMs = (o.now ?? Date.now)();
  const now = Math.floor(nowMs / 1000);
  // Above the current seq, and at least the clock in ms (within the ceiling of issued × 1000 + 999):
  // when the current release cannot be trusted (a forged one replaced it), two honest releases
  // in one second still get two seqs.
  const seq = o.seq ?? Math.max(currentSeq + 1, nowMs);
  const where = `${o.model} for group ${o.group}`;
  if (seq > maxSeqAt(now)) {
    throw new PublishError(
      'bad-seq',
      `seq ${seq} for ${where} is absurd for the time (at most ${maxSeqAt(now)} now, ${SEQ_PER_SECOND} per second): ${o.seq === undefined ? `the current seq ${currentSeq} is ahead of the clock; check this machine's clock, or wait` : 'give a lower --seq'}`,
    );
  }
  let bytes: Uint8Array;
  try {
    bytes = assignManifest(
      what.manifest,
      {
        model: o.model,
        group: o.group,
        seq,
        issued: now,
        expires: now + o.ttlSeconds,
        rollback: what.rollback,
        previous: what.previous,
      },
      rolloutKeysOf(o),
    );
    checkRelease(verifyRelease(bytes, trustOfOptions(o)), { model: o.model, group: o.group, now, clockFloor: 0, highestSeq: currentSeq, skewSeconds: DEVICE_SKEW_SECONDS });
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    const code = e.code === 'replayed' ? 'bad-seq' : 'invalid-release';
    throw new PublishError(code, `not published: devices would refuse this release for ${where} (${e.code}: ${e.message})`);
  }
  await o.transport.publish(o.topics.release(o.group, o.model), bytes, { qos: 1, retain: true });
  return decodeRelease(bytes);
}
