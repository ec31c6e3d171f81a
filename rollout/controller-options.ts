import type { Clock } from '../platform/clock.ts';
import type { SigningKey, TrustFile } from '../protocol/release.ts';
import type { Topics } from '../protocol/topics.ts';
import type { PublishOptions, PublishResult } from '../publisher/publish.ts';
import type { RollbackOptions, RollbackResult } from '../publisher/rollback.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import type { PlanPayloads, RolloutPlan } from './plan.ts';
import type { RolloutEvent, RolloutEventType, RolloutStatus } from './status.ts';

/** Everything the controller does to the world goes through these, so tests can inject failures. */
export interface ControllerPorts {
  transport: Transport;
  topics: Topics;
  clock: Clock;
  publish: (o: PublishOptions) => Promise<PublishResult>;
  rollback: (o: RollbackOptions) => Promise<RollbackResult>;
  log: Logger;
  /** Called for every event, not awaited by the state machine (`--on-event` runs its command for HOOK_EVENTS). */
  onEvent?: (e: RolloutEvent, s: RolloutStatus) => void | Promise<void>;
}

export interface ControllerOptions {
  plan: RolloutPlan;
  payloads: PlanPayloads;
  /** Release keys: sign the plan's manifest when none is retained yet (may be empty when one is). */
  keys: SigningKey[];
  /** Rollout keys: sign the group assignments and rollbacks (default: the release keys). */
  rolloutKeys?: SigningKey[];
  /** Keys releases and manifests on the broker are checked against (default: the signing keys). */
  trust?: TrustFile;
  /** How long retained statuses, presence and releases are collected at start (default 1500 ms). */
  settleMs?: number;
  /** How often thresholds, timeouts and soaks are checked (default 1000 ms). */
  tickMs?: number;
  /** The status is published at least this often (default 10 s). */
  heartbeatMs?: number;
  /** First delay before a failed publish or rollback is tried again; doubles up to 5 min (default 5 s). */
  retryMs?: number;
  /** Rollback attempts per group before the rollout halts saying the rollback failed (default 5). */
  rollbackAttempts?: number;
  /** An --on-event command is stopped after this long (ms). */
  hookTimeoutMs?: number;
  /** An assignment's lifetime when the plan names none (seconds). */
  ttlSeconds?: number;
  /** Passed to publish and rollback: how long a missing retained release means none (default 500 ms). */
  releaseSettleMs?: number;
  receiptTimeoutMs?: number;
}

/** The events `fleet rollout start --on-event CMD` runs its command for. */
export const HOOK_EVENTS: readonly RolloutEventType[] = ['halted', 'completed', 'device-rolled-back'];
