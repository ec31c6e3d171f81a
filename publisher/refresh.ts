import { releaseParts, type ReleaseBody } from '../protocol/release.ts';
import { PublishError, publishGroupRelease, trustOfOptions, watchRelease, type GroupReleaseOptions } from './publish.ts';

export interface RefreshResult {
  group: string;
  /** The assignment replaced and the new one (same manifest, new seq, issued and expiry). */
  before: ReleaseBody;
  after: ReleaseBody;
}

/**
 * Re-signs a group's current assignment before it expires (TUF's timestamp
 * role): the same manifest, rollback flag and previous version, a higher
 * sequence number, issued now, a new expiry. Only the rollout key signs; a
 * device already on the target acknowledges it without downloading anything.
 */
export async function refreshGroup(o: GroupReleaseOptions): Promise<RefreshResult> {
  const watch = await watchRelease(o.transport, o.topics.release(o.group, o.model), trustOfOptions(o), o.log, o.settleMs);
  try {
    const current = await watch.read();
    const where = `${o.model} for group ${o.group}`;
    if (current.problem) throw new PublishError('untrusted-release', `cannot refresh ${where}: the current release is not usable (${current.problem})`);
    if (!current.body || !current.bytes) throw new PublishError('no-release', `cannot refresh ${where}: no release is published`);
    if (o.seq !== undefined && o.seq <= current.seq) throw new PublishError('bad-seq', `seq ${o.seq} is not above the current seq ${current.seq}`);
    const { manifest } = releaseParts(current.bytes);
    const after = await publishGroupRelease(o, current.seq, { manifest, rollback: current.body.rollback, previous: current.body.previous });
    o.log.info('refreshed', { model: o.model, group: o.group, seq: after.seq, expires: after.expires });
    return { group: o.group, before: current.body, after };
  } finally {
    await watch.stop();
  }
}
