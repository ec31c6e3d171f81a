import { withDefaults } from '../platform/defaults.ts';
import type { ControllerOptions } from './controller-options.ts';

/**
 * Every default of the rollout controller (rollout/), in one table: the
 * controller resolves its config from it once (resolveRolloutConfig) and
 * `fleet rollout --help` shows these values.
 */
export const ROLLOUT_DEFAULTS = {
  /** How long retained statuses are collected at start. */
  settleMs: 1500,
  /** How often the waves are evaluated. */
  tickMs: 1000,
  /** The rollout status is published at least this often. */
  heartbeatMs: 10_000,
  /** First delay before a failed action is tried again (doubles, up to 5 min). */
  retryMs: 5000,
  /** Tries of a rollback before giving up. */
  rollbackAttempts: 5,
  /** An --on-event command is stopped after this long. */
  hookTimeoutMs: 60_000,
  /** An assignment's lifetime when the plan names none. */
  ttlSeconds: 30 * 86400,
} as const;

type Defaulted = keyof typeof ROLLOUT_DEFAULTS;

/** A controller's config with every default filled in: what the rollout runs with. */
export type ResolvedRolloutConfig = ControllerOptions & Required<Pick<ControllerOptions, Defaulted>>;

/** The config the controller runs with: what was given, the table's value for what was not. */
export function resolveRolloutConfig(o: ControllerOptions): ResolvedRolloutConfig {
  return withDefaults(o, ROLLOUT_DEFAULTS);
}
