import { FleetError } from '../platform/errors.ts';
import type { DeviceState } from '../protocol/status.ts';

/** Everything that can happen to the agent. */
export type DeviceEvent =
  | 'release-accepted'
  | 'release-current'
  | 'release-refused'
  | 'release-withdrawn'
  | 'resume'
  | 'switch-back'
  | 'crash-rollback'
  | 'download-progress'
  | 'download-complete'
  | 'download-failed'
  | 'verify-passed'
  | 'verify-failed'
  | 'apply-done'
  | 'apply-failed'
  | 'health-passed'
  | 'health-failed'
  | 'trial-retry'
  | 'trial-resumed'
  | 'storage-failed';

const RESTING: DeviceState[] = ['idle', 'ok', 'rolled_back', 'rejected', 'failed'];

/**
 * The one transition table. A pair not listed here is a bug: the agent
 * refuses it (and logs it) rather than guessing.
 */
export const TRANSITIONS: ReadonlyArray<{ from: readonly DeviceState[]; on: DeviceEvent; to: DeviceState }> = [
  { from: [...RESTING, 'downloading'], on: 'release-accepted', to: 'downloading' },
  { from: [...RESTING, 'downloading'], on: 'release-current', to: 'ok' },
  { from: [...RESTING, 'downloading'], on: 'release-refused', to: 'rejected' },
  { from: ['downloading'], on: 'release-withdrawn', to: 'idle' },
  // After a restart or reconnect: continue the accepted release's download from what is on disk.
  { from: [...RESTING, 'downloading', 'verifying', 'applying'], on: 'resume', to: 'downloading' },
  { from: ['downloading'], on: 'download-progress', to: 'downloading' },
  { from: ['downloading'], on: 'download-complete', to: 'verifying' },
  { from: ['downloading'], on: 'download-failed', to: 'failed' },
  { from: ['verifying'], on: 'verify-passed', to: 'applying' },
  { from: ['verifying'], on: 'verify-failed', to: 'rejected' },
  { from: ['applying'], on: 'apply-done', to: 'testing' },
  { from: ['applying'], on: 'apply-failed', to: 'rejected' },
  { from: ['testing'], on: 'health-passed', to: 'ok' },
  { from: ['testing'], on: 'health-failed', to: 'rolled_back' },
  // A failed attempt of the trial with attempts left: the next one (journaled first).
  { from: ['testing'], on: 'trial-retry', to: 'testing' },
  // On start, the journal says the agent stopped during attempt k of the trial, and attempts are left: attempt k+1.
  { from: [...RESTING, 'downloading', 'verifying', 'applying', 'testing'], on: 'trial-resumed', to: 'testing' },
  { from: ['downloading', 'verifying', 'applying', 'testing'], on: 'storage-failed', to: 'failed' },
  // A release whose target this device still holds (an operator rollback): no download, no arithmetic.
  { from: [...RESTING, 'downloading'], on: 'switch-back', to: 'applying' },
  // On start, the journal says the agent stopped during the last attempt of the trial: it went back.
  { from: [...RESTING, 'downloading', 'verifying', 'applying', 'testing'], on: 'crash-rollback', to: 'rolled_back' },
];

/** A step the table does not allow: a bug in the agent, never caused by input. */
export class IllegalTransition extends FleetError<'illegal-transition'> {
  override readonly name = 'IllegalTransition';
  constructor(
    readonly state: DeviceState,
    readonly event: DeviceEvent,
  ) {
    super('internal', 'illegal-transition', `no transition from ${state} on ${event}`);
  }
}

export function nextState(state: DeviceState, event: DeviceEvent): DeviceState {
  const row = TRANSITIONS.find((t) => t.on === event && t.from.includes(state));
  if (!row) throw new IllegalTransition(state, event);
  return row.to;
}
