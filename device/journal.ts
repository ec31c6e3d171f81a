/**
 * Where an install stands, on disk (DIR/journal.json, replaced atomically),
 * so that a crash or power cut at any instant can be finished or undone on
 * the next start:
 *
 *   staging    building the new version in a temporary file: discard it, build again
 *   switching  the new version is complete in models/; the pointer may or may not
 *              name it yet: attempt `attempt` of the trial has begun
 *   testing    switched; checking health or in the health window
 *
 * A stop in `switching` or `testing` counts as a failed attempt of the trial,
 * as an A/B boot counter counts a boot that never confirmed: the next start
 * switches (again) and runs the trial once more, and only after the last of
 * `--max-attempts` attempts goes back to `previous`. The attempt number is
 * written (temp, fsync, rename, fsync) before its attempt starts.
 *
 * The contract is docs/protocol.md §10 (device storage: DIR/journal.json, the install's
 * order of writes, and what the journal decides on start); DESIGN invariant 2.
 */
export type JournalPhase = 'staging' | 'switching' | 'testing';

export interface Journal {
  phase: JournalPhase;
  target: string;
  previous: string;
  rollback: boolean;
  /** ms since the epoch when the phase began. */
  since: number;
  /** switching/testing: the attempt of the trial under way, from 1 (journals written before attempts were counted: 1). */
  attempt?: number;
}

/** The attempt a journal records (1 when it predates the count, or holds nonsense). */
export function attemptOf(j: Journal): number {
  return Number.isSafeInteger(j.attempt) && (j.attempt as number) >= 1 ? (j.attempt as number) : 1;
}

export function isJournal(j: unknown): j is Journal {
  const o = j as Journal;
  return typeof o === 'object' && o !== null && ['staging', 'switching', 'testing'].includes(o.phase) && typeof o.target === 'string' && typeof o.previous === 'string';
}
