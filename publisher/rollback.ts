import { ignoreBecause } from '../platform/errors.ts';
import { limitsOf, type ReleaseBody } from '../protocol/release.ts';
import { DEFAULT_CHUNK_SIZE } from '../protocol/chunks.ts';
import { fullModelDigest, publishGroupRelease, publishManifest, PublishError, readManifests, stepOf, trustOfOptions, uploadPayload, watchRelease, type GroupReleaseOptions, type UploadResult } from './publish.ts';

export interface RollbackOptions extends GroupReleaseOptions {
  /** Safetensors bytes of the previous model: a full-model step for devices that no longer hold it (needs release keys). */
  fullModel?: Uint8Array;
  /** Chunk size for the full model's upload. */
  chunkSize?: number;
}

export interface RollbackResult {
  /** The digest the group was asked to run (the current release's target). */
  from: string;
  /** The digest it goes back to (the current release's `previous`). */
  to: string;
  /** The seq of the release replaced. */
  replacedSeq: number;
  release: ReleaseBody;
  /** The full model's upload, when given. */
  upload: UploadResult | undefined;
}

const short = (d: string): string => d.slice(0, 12);

/**
 * Takes a group back to the version it was asked to run before the current
 * release: an assignment (rollout key) of a manifest whose target is the
 * current `previous`, marked rollback. The manifest is one the release keys
 * signed before (retained on `fleet/models/{m}/manifests/+`; publishing an
 * update leaves one for the version it replaces), so the rollout key alone
 * suffices. Devices that still hold that version switch back at once; with
 * `fullModel` (and release keys) a new manifest with a full-model step is
 * signed for the devices that no longer hold it.
 */
export async function rollbackGroup(o: RollbackOptions): Promise<RollbackResult> {
  if (o.keys.length === 0 && !o.rolloutKeys?.length) throw new PublishError('bad-update', 'no signing key');
  const t = o.transport;
  const trust = trustOfOptions(o);
  const watch = await watchRelease(t, o.topics.release(o.group, o.model), trust, o.log, o.settleMs);
  try {
    const known = readManifests(t, o.topics, o.model, trust, o.log, o.settleMs);
    known.catch(ignoreBecause('awaited below, where its failure is thrown'));
    const current = await watch.read();
    const where = `${o.model} for group ${o.group}`;
    if (current.problem) throw new PublishError('untrusted-release', `cannot roll back ${where}: the current release is not usable (${current.problem})`);
    if (!current.body) throw new PublishError('no-release', `cannot roll back ${where}: no release is published`);
    const cur = current.body;
    if (cur.previous === null) throw new PublishError('no-previous', `cannot roll back ${where}: no previous version is known for this group`);
    if (cur.previous === cur.target) throw new PublishError('no-previous', `cannot roll back ${where}: the previous version is the current one (${short(cur.target)})`);
    if (o.seq !== undefined && o.seq <= current.seq) {
      throw new PublishError('bad-seq', `seq ${o.seq} is not above the current seq ${current.seq}; devices would refuse it as replayed`);
    }
    const target = cur.previous;

    let upload: UploadResult | undefined;
    let manifest: Uint8Array;
    if (o.fullModel) {
      if (o.keys.length === 0) throw new PublishError('bad-update', 'a rollback with a full model signs a new manifest: it needs the release keys (--key)');
      const digest = fullModelDigest(o.fullModel);
      if (digest !== target) {
        throw new PublishError('bad-update', `the full model's digest ${short(digest)} is not the previous version ${short(target)}`);
      }
      upload = await uploadPayload({
        transport: t,
        topics: o.topics,
        model: o.model,
        payload: o.fullModel,
        chunkSize: o.chunkSize ?? DEFAULT_CHUNK_SIZE,
        window: o.window,
        receiptTimeoutMs: o.receiptTimeoutMs,
        log: o.log,
        onProgress: o.onProgress,
      });
      const steps = [stepOf(upload, null, target)];
      manifest = (await publishManifest(o, { model: o.model, target, steps, limits: limitsOf(steps) })).bytes;
    } else {
      // Prefer a manifest with steps (devices that lost the version can fetch it), else one without.
      const found = (await known).filter((m) => m.target === target).sort((a, b) => b.steps.length - a.steps.length)[0];
      if (found) manifest = found.bytes;
      else if (o.keys.length > 0) {
        manifest = (await publishManifest(o, { model: o.model, target, steps: [], limits: limitsOf([]) })).bytes;
      } else {
        throw new PublishError('no-manifest', `cannot roll back ${where}: no retained manifest signed by the release keys leads to ${short(target)}; have the release keys sign one (fleet rollback --key RELEASE_KEY)`);
      }
    }

    const body = await publishGroupRelease(o, current.seq, { manifest, rollback: true, previous: cur.target });
    o.log.info('rolled back', { model: o.model, group: o.group, from: cur.target, to: target, seq: body.seq, full: upload !== undefined });
    return { from: cur.target, to: target, replacedSeq: current.seq, release: body, upload };
  } finally {
    await watch.stop();
  }
}
