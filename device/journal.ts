/**
 * Where an install stands, on disk (DIR/journal.json, replaced atomically),
 * so that a crash or power cut at any instant can be finished or undone on
 * the next start:
 *
 *   staging    building the new version in a temporary file: discard it, build again
 *   switching  the new version is complete in models/; the pointer may or may not
 *              name it yet: the switch was not confirmed, so go back to `previous`
 *   testing    switched; in the health window: a crash here means the new model
 *              may be what crashed us, so go back to `previous`
 */
export type JournalPhase = 'staging' | 'switching' | 'testing';

export interface Journal {
  phase: JournalPhase;
  target: string;
  previous: string;
  rollback: boolean;
  /** ms since the epoch when the phase began. */
  since: number;
}

export function isJournal(j: unknown): j is Journal {
  const o = j as Journal;
  return typeof o === 'object' && o !== null && ['staging', 'switching', 'testing'].includes(o.phase) && typeof o.target === 'string' && typeof o.previous === 'string';
}
