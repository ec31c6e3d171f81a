import { PUBLISH_DEFAULTS } from './defaults.ts';
import { ignoreBecause } from '../platform/errors.ts';
import { chunkCount, chunkList, chunkRange, sha256Hex, updateIdOf, type PayloadDescriptor } from '../protocol/chunks.ts';
import { modelFormatOfBytes } from '../util/model-format.ts';
import { decodeReceipt, encodeFrame, type UploadReceipt } from '../protocol/frames.ts';
import { decodePayload } from '../protocol/lowrank.ts';
import { limitsOf, type ManifestBody, type ReleaseBody, type ReleaseStep } from '../protocol/release.ts';
import { MAX_STEPS } from '../protocol/manifest.ts';
import { publishGroupRelease, publishManifest, PublishError, readManifests, trustOfOptions, watchRelease, type GroupReleaseOptions, type KnownManifest } from './group-release.ts';

export {
  PublishError,
  type PublishErrorCode,
  publishGroupRelease,
  publishManifest,
  readManifests,
  rolloutKeysOf,
  trustOfOptions,
  watchRelease,
  type GroupReleaseOptions,
  type KnownManifest,
  type RetainedRelease,
} from './group-release.ts';
import { sealPayload } from '../protocol/seal.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';

export interface PublishOptions extends GroupReleaseOptions {
  /** Low-rank update payloads, in any order; they must form chains ending at one target. */
  payloads: Uint8Array[];
  /** Safetensors bytes of the target model: a full-model step for devices on no chain. */
  fullModel?: Uint8Array;
  chunkSize: number;
  /** Seal every payload with this group key (protocol/seal.ts): the broker and update server never see the weights. */
  groupKey?: Uint8Array;
}

/** One payload on the update server. */
export interface UploadResult extends PayloadDescriptor {
  /** Chunks sent this time (the probe included). */
  uploadedChunks: number;
  /** The server held the whole payload before this upload. */
  alreadyStored: boolean;
}

export interface PublishResult {
  /** The update id of the step that ends at the target (the last update of the chain, else the full model). */
  updateId: string;
  release: ReleaseBody;
  /** One per release step, in the release's order. */
  uploads: UploadResult[];
  uploadedChunks: number;
  /** Every payload was on the server already. */
  alreadyStored: boolean;
}

const short = (d: string): string => d.slice(0, 12);

export interface UploadOptions {
  transport: Transport;
  topics: Topics;
  model: string;
  payload: Uint8Array;
  chunkSize: number;
  window?: number;
  receiptTimeoutMs?: number;
  log: Logger;
  onProgress?: (sentChunks: number, totalChunks: number) => void;
}

/**
 * Uploads one payload to the update server (only the chunks it lacks) and
 * waits for its confirmation. The last chunk goes first as a probe: the
 * receipt says whether the server already has the payload or which chunks
 * it lacks, so an interrupted upload resumes.
 */
export async function uploadPayload(o: UploadOptions): Promise<UploadResult> {
  const t = o.transport;
  const updateId = updateIdOf(o.payload);
  const count = chunkCount(o.payload.byteLength, o.chunkSize);
  const receiptTopic = o.topics.uploadReceipt(o.model, updateId);
  const inbox = new ReceiptInbox(receiptTopic, o.receiptTimeoutMs ?? PUBLISH_DEFAULTS.receiptTimeoutMs, o.log);
  const off = t.onMessage((topic, payload) => inbox.accept(topic, payload));
  await t.subscribe(receiptTopic, 1);
  try {
    const send = (i: number): Promise<void> => {
      const [b, e] = chunkRange(o.payload.byteLength, o.chunkSize, i);
      return t.publish(o.topics.upload(o.model, updateId), encodeFrame({ kind: 'chunk', updateId, index: i, count, data: o.payload.subarray(b, e) }), { qos: 1 });
    };
    const probe = (): Promise<void> => send(count - 1);
    await probe();
    const first = await inbox.next(probe);
    if (first.stored && first.count !== count) {
      // The release must name the chunking the server serves; a different chunk size gives another list.
      throw new PublishError('upload-refused', `the update server already holds ${updateId} cut into ${first.count} chunks, not ${count}; publish it with the chunk size it was first uploaded with`);
    }
    const alreadyStored = first.stored && count > 1;
    const uploaded = 1 + (await sendMissing(o, first, count, send, () => inbox.next(probe), probe, updateId));
    o.onProgress?.(count, count);
    o.log.info('update stored on the server', { updateId, chunks: count, uploaded, alreadyStored });
    return {
      updateId,
      size: o.payload.byteLength,
      sha256: sha256Hex(o.payload),
      chunkSize: o.chunkSize,
      chunks: count,
      listSha256: sha256Hex(chunkList(o.payload, o.chunkSize)),
      uploadedChunks: uploaded,
      alreadyStored,
    };
  } finally {
    inbox.close();
    off();
    await t.unsubscribe(receiptTopic).catch(ignoreBecause('the session ends the subscription anyway', o.log));
  }
}

/** Upload receipts on one topic, in arrival order. */
class ReceiptInbox {
  private readonly receipts: UploadReceipt[] = [];
  private wake: (() => void) | undefined;

  constructor(
    private readonly topic: string,
    private readonly timeoutMs: number,
    private readonly log: Logger,
  ) {}

  accept(topic: string, payload: Uint8Array): void {
    if (topic !== this.topic) return;
    try {
      this.receipts.push(decodeReceipt(payload));
      this.wake?.();
    } catch (e) {
      this.log.warn('bad receipt', { error: (e as Error).message });
    }
  }

  /** Waits for the next receipt, calling `nudge` every 2 s (the server may be starting or restarting). */
  async next(nudge: () => Promise<void>): Promise<UploadReceipt> {
    const reprobe = 2000;
    const deadline = Date.now() + this.timeoutMs;
    let nextNudge = Date.now() + reprobe;
    while (this.receipts.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new PublishError('no-update-server', `no update server answered on ${this.topic} within ${this.timeoutMs} ms; is 'fleet broker' or 'fleet serve' running?`);
      }
      if (Date.now() >= nextNudge) {
        nextNudge = Date.now() + reprobe;
        await nudge();
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, Math.max(1, nextNudge - Date.now())));
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.receipts.shift()!;
  }

  close(): void {
    this.wake = undefined;
  }
}

/**
 * Rounds until the server has it all: the chunks the receipt says are missing, `window` at a
 * time, then the last chunk again to ask for the next receipt. Returns the chunks sent.
 */
async function sendMissing(
  o: UploadOptions,
  first: UploadReceipt,
  count: number,
  send: (i: number) => Promise<void>,
  nextReceipt: () => Promise<UploadReceipt>,
  probe: () => Promise<void>,
  updateId: string,
): Promise<number> {
  let receipt = first;
  let uploaded = 0;
  let sent = 0;
  for (let round = 0; !receipt.stored; round++) {
    if (receipt.error) throw new PublishError('upload-refused', `the update server refused the upload: ${receipt.error}`);
    if (round > 20) throw new PublishError('upload-refused', `upload of ${updateId} did not complete after ${round} rounds`);
    const missing = receipt.missing.filter((i) => i !== count - 1);
    const window = o.window ?? PUBLISH_DEFAULTS.uploadWindow;
    for (let k = 0; k < missing.length; k += window) {
      await Promise.all(missing.slice(k, k + window).map(send));
      sent += Math.min(window, missing.length - k);
      uploaded += Math.min(window, missing.length - k);
      o.onProgress?.(Math.min(count, receipt.have + sent), count);
    }
    // The last chunk triggers the next receipt.
    await probe();
    uploaded++;
    receipt = await nextReceipt();
  }
  return uploaded;
}

/** The release step for an uploaded payload. */
export function stepOf(u: UploadResult, from: string | null, to: string): ReleaseStep {
  return { updateId: u.updateId, from, to, size: u.size, sha256: u.sha256, chunkSize: u.chunkSize, chunks: u.chunks, listSha256: u.listSha256 };
}

export interface ChainLink {
  payload: Uint8Array;
  base: string;
  target: string;
}

/**
 * Orders update payloads into chains: every update's target is the common
 * target or the base of another update; no two start at one base; no cycles.
 * Updates farther from the target come first (v1→v2 before v2→v3).
 */
export function orderChain(payloads: Uint8Array[]): { target: string; links: ChainLink[] } {
  const links = payloads.map((payload, k): ChainLink => {
    try {
      const p = decodePayload(payload);
      return { payload, base: p.base, target: p.target };
    } catch (e) {
      throw new PublishError('bad-update', `update ${k + 1} is not a valid payload: ${(e as Error).message}`);
    }
  });
  const byBase = new Map<string, ChainLink>();
  for (const l of links) {
    if (l.base === l.target) throw new PublishError('bad-update', `update ${updateIdOf(l.payload)} leads from ${short(l.base)} to itself`);
    const other = byBase.get(l.base);
    if (other) {
      throw new PublishError('bad-update', `two updates start from ${short(l.base)} (${updateIdOf(other.payload)} and ${updateIdOf(l.payload)}); a release has one way from each version`);
    }
    byBase.set(l.base, l);
  }
  // Where each update's chain ends, and how many steps it takes.
  const depth = new Map<ChainLink, number>();
  const ends = new Set<string>();
  for (const l of links) {
    let at = l.target;
    let n = 1;
    for (let next = byBase.get(at); next; next = byBase.get(at)) {
      if (next === l || n > links.length) throw new PublishError('bad-update', `the updates form a cycle through ${short(l.base)}`);
      at = next.target;
      n++;
    }
    depth.set(l, n);
    ends.add(at);
  }
  if (ends.size > 1) {
    const list = [...ends].map(short).join(', ');
    throw new PublishError('bad-update', `the updates do not form chains ending at one target: they end at ${list}`);
  }
  const ordered = links
    .map((l, k) => ({ l, k }))
    .sort((a, b) => depth.get(b.l)! - depth.get(a.l)! || a.k - b.k)
    .map((x) => x.l);
  return { target: [...ends][0], links: ordered };
}

/** The digest of a full model file, as a PublishError when it is not a model. */
export function fullModelDigest(bytes: Uint8Array): string {
  try {
    return modelFormatOfBytes(bytes).digestBytes(bytes);
  } catch (e) {
    throw new PublishError('bad-update', `the full model is not a valid ${modelFormatOfBytes(bytes).name} file: ${(e as Error).message}`);
  }
}

/**
 * Uploads the payloads (and the full model) to the update server, waits for
 * its confirmations, then publishes the signed release retained for the group:
 * one step per update along the chain, plus a full-model step when given.
 */
export async function publishUpdate(o: PublishOptions): Promise<PublishResult> {
  if (o.keys.length === 0 && !o.rolloutKeys?.length) throw new PublishError('bad-update', 'no signing key');
  const { chain, target } = chainOf(o);
  const trust = trustOfOptions(o);
  const watch = await watchRelease(o.transport, o.topics.release(o.group, o.model), trust, o.log, o.settleMs);
  try {
    // Retained manifests arrive while the payloads upload.
    const known = readManifests(o.transport, o.topics, o.model, trust, o.log, o.settleMs);
    known.catch(ignoreBecause('awaited below, where its failure is thrown'));
    const { uploads, steps } = await uploadSteps(o, target, chain);

    const current = await watch.read();
    if (current.problem) o.log.warn('the current release is not taken as the previous version', { problem: current.problem });
    // Re-publishing the same target keeps the version before it as `previous`. With no
    // release yet, the group runs where the chain starts: that is the version to go back to.
    const previous = current.body ? (current.body.target === target ? current.body.previous : current.body.target) : (chain?.links[0]?.base ?? null);
    const manifest = await manifestFor(o, await known, { model: o.model, target, steps, limits: limitsOf(steps) }, previous);
    const body = await publishGroupRelease(o, current.seq, { manifest, rollback: false, previous });
    const last = chain ? uploads[chain.links.length - 1] : uploads[uploads.length - 1];
    return {
      updateId: last.updateId,
      release: body,
      uploads,
      uploadedChunks: uploads.reduce((a, u) => a + u.uploadedChunks, 0),
      alreadyStored: uploads.every((u) => u.alreadyStored),
    };
  } finally {
    await watch.stop();
  }
}

const sameSteps = (a: ManifestBody, b: ManifestBody): boolean => JSON.stringify(a.steps) === JSON.stringify(b.steps) && a.target === b.target && a.model === b.model;

/**
 * The signed manifest to assign: signed now with the release keys (and
 * retained under its hash, with a step-less manifest for `previous` when
 * none is retained, so the rollout key alone can take the group back later);
 * without release keys, a retained manifest with the same steps.
 */
async function manifestFor(o: PublishOptions, known: KnownManifest[], want: ManifestBody, previous: string | null): Promise<Uint8Array> {
  if (o.keys.length === 0) {
    const found = known.find((m) => sameSteps(m, want));
    if (!found) {
      throw new PublishError('no-manifest', `no retained manifest signed by the release keys has these steps to ${short(want.target)}; have the release keys sign one (fleet publish --key RELEASE_KEY --manifest-only)`);
    }
    return found.bytes;
  }
  const m = await publishManifest(o, want);
  await publishBackManifests(o, known, [previous, ...want.steps.map((st) => st.from)], want.target);
  return m.bytes;
}

/**
 * For each version an update replaces (the group's previous target, the
 * chain's bases) without a retained manifest: a step-less manifest signed
 * now, so that the rollout key alone can take a group back to it later
 * (devices that still hold it switch back).
 */
async function publishBackManifests(o: Pick<PublishOptions, 'transport' | 'topics' | 'model' | 'keys'>, known: KnownManifest[], digests: Array<string | null>, target: string): Promise<void> {
  const want = new Set(digests.filter((d): d is string => d !== null && d !== target && !known.some((m) => m.target === d)));
  for (const digest of want) {
    await publishManifest(o, { model: o.model, target: digest, steps: [], limits: limitsOf([]) });
  }
}

/**
 * Uploads the payloads and publishes only their manifest, signed by the
 * release keys and retained under its hash: the release engineer's half. A
 * rollout key assigns it to groups later (publishUpdate or the rollout
 * controller without release keys).
 */
export async function publishManifestOnly(o: Omit<PublishOptions, 'group' | 'ttlSeconds'>): Promise<KnownManifest & { uploads: UploadResult[] }> {
  if (o.keys.length === 0) throw new PublishError('bad-update', 'a manifest is signed by release keys; none given');
  const { chain, target } = chainOf(o);
  const known = readManifests(o.transport, o.topics, o.model, trustOfOptions(o), o.log, o.settleMs);
  known.catch(ignoreBecause('awaited below, where its failure is thrown'));
  const { uploads, steps } = await uploadSteps(o, target, chain);
  const m = await publishManifest(o, { model: o.model, target, steps, limits: limitsOf(steps) });
  await publishBackManifests(
    o,
    await known,
    steps.map((st) => st.from),
    target,
  );
  return { ...m, uploads };
}

type Chain = ReturnType<typeof orderChain>;

/** The payloads' chain and target, checked against the full model. */
function chainOf(o: Pick<PublishOptions, 'payloads' | 'fullModel'>): { chain: Chain | undefined; target: string } {
  if (o.payloads.length === 0 && !o.fullModel) throw new PublishError('bad-update', 'nothing to publish: give at least one update or a full model');
  const chain = o.payloads.length ? orderChain(o.payloads) : undefined;
  const fullDigest = o.fullModel ? fullModelDigest(o.fullModel) : undefined;
  const target = chain?.target ?? fullDigest!;
  if (fullDigest !== undefined && fullDigest !== target) {
    throw new PublishError('bad-update', `the full model's digest ${short(fullDigest)} is not the updates' target ${short(target)}`);
  }
  if ((chain?.links.length ?? 0) + (o.fullModel ? 1 : 0) > MAX_STEPS) throw new PublishError('bad-update', `a manifest has at most ${MAX_STEPS} steps`);
  return { chain, target };
}

/** Uploads every payload (sealed when a group key is given) and returns the manifest steps: the chain, then the full model. */
async function uploadSteps(o: Omit<PublishOptions, 'group' | 'ttlSeconds'>, target: string, chain: Chain | undefined): Promise<{ uploads: UploadResult[]; steps: ReleaseStep[] }> {
  const plain = [...(chain?.links.map((l) => l.payload) ?? []), ...(o.fullModel ? [o.fullModel] : [])];
  const parts = o.groupKey ? plain.map((p) => sealPayload(p, o.groupKey!)) : plain;
  const counts = parts.map((p) => chunkCount(p.byteLength, o.chunkSize));
  const total = counts.reduce((a, b) => a + b, 0);
  const uploads: UploadResult[] = [];
  let before = 0;
  for (const [k, payload] of parts.entries()) {
    uploads.push(
      await uploadPayload({
        transport: o.transport,
        topics: o.topics,
        model: o.model,
        payload,
        chunkSize: o.chunkSize,
        window: o.window,
        receiptTimeoutMs: o.receiptTimeoutMs,
        log: o.log,
        onProgress: (d) => o.onProgress?.(before + d, total),
      }),
    );
    before += counts[k];
  }
  const steps = [...(chain?.links.map((l, k) => stepOf(uploads[k], l.base, l.target)) ?? []), ...(o.fullModel ? [stepOf(uploads[uploads.length - 1], null, target)] : [])].map((st) =>
    o.groupKey ? { ...st, sealed: true } : st,
  );
  return { uploads, steps };
}
