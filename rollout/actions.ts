import type { ReleaseBody, SigningKey, TrustFile } from '../protocol/release.ts';
import type { Topics } from '../protocol/topics.ts';
import { PublishError, type PublishOptions, type PublishResult } from '../publisher/publish.ts';
import type { RollbackOptions, RollbackResult } from '../publisher/rollback.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import { planChunkSize, planTtl, type PlanPayloads, type RolloutPlan } from './plan.ts';
import type { WaveRecord } from './status.ts';

/** What the controller's releases need: the plan, its payloads and keys, and the publish/rollback ports. */
export interface ReleaseContext {
  plan: RolloutPlan;
  payloads: PlanPayloads;
  keys: SigningKey[];
  rolloutKeys?: SigningKey[];
  trust: TrustFile;
  transport: Transport;
  topics: Topics;
  log: Logger;
  publish: (o: PublishOptions) => Promise<PublishResult>;
  rollback: (o: RollbackOptions) => Promise<RollbackResult>;
  releaseSettleMs?: number;
  receiptTimeoutMs?: number;
  /** An assignment's lifetime when the plan names none (seconds). */
  ttlSeconds: number;
}

/** Rollback errors that trying again cannot fix. */
const PERMANENT = ['no-release', 'no-previous', 'untrusted-release', 'bad-update', 'bad-seq', 'no-manifest', 'invalid-release'];
const short = (d: string): string => d.slice(0, 12);

/** Uploads the plan's payloads (idempotent: the server keeps what it has) and publishes the group's signed release. */
export function publishWave(c: ReleaseContext, group: string): Promise<PublishResult> {
  return c.publish({
    transport: c.transport,
    topics: c.topics,
    keys: c.keys,
    rolloutKeys: c.rolloutKeys,
    trust: c.trust,
    model: c.plan.model,
    group,
    payloads: c.payloads.payloads,
    fullModel: c.payloads.fullModel,
    chunkSize: planChunkSize(c.plan),
    ttlSeconds: planTtl(c.plan, c.ttlSeconds),
    settleMs: c.releaseSettleMs,
    receiptTimeoutMs: c.receiptTimeoutMs,
    log: c.log,
  });
}

/**
 * One pass over every wave reached, newest first: rolls back each group whose
 * retained release still names the target. A group already rolled back (by a
 * controller before a restart) is marked; one whose release was replaced by
 * someone else is left alone and reported.
 */
export async function rollbackReached(
  c: ReleaseContext,
  waves: WaveRecord[],
  releases: Map<string, ReleaseBody>,
  onRolledBack: (wave: number, r: RollbackResult) => Promise<void>,
): Promise<{ problems: string[]; retry: boolean }> {
  const target = c.payloads.target;
  const problems: string[] = [];
  let retry = false;
  for (let k = waves.length - 1; k >= 0; k--) {
    const w = waves[k];
    if (!w.release || w.rolledBack) continue;
    const cur = releases.get(w.group);
    if (cur?.rollback && cur.previous === target) {
      w.rolledBack = true;
      continue;
    }
    if (cur && cur.target !== target) {
      problems.push(`${w.group} not rolled back: its release was replaced (seq ${cur.seq}, ${cur.rollback ? 'a rollback' : `target ${short(cur.target)}`})`);
      continue;
    }
    try {
      const r = await c.rollback({
        transport: c.transport,
        topics: c.topics,
        keys: c.keys,
        rolloutKeys: c.rolloutKeys,
        trust: c.trust,
        model: c.plan.model,
        group: w.group,
        ttlSeconds: planTtl(c.plan, c.ttlSeconds),
        settleMs: c.releaseSettleMs,
        log: c.log,
      });
      w.rolledBack = true;
      await onRolledBack(k, r);
    } catch (e) {
      problems.push(`${w.group}: rollback failed: ${(e as Error).message}`);
      if (!(e instanceof PublishError && PERMANENT.includes(e.code))) retry = true;
    }
  }
  return { problems, retry };
}
