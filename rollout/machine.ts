/**
 * The rollout controller's states and its one transition table (like
 * device/machine.ts). A pair not listed is a bug: the controller refuses it.
 *
 * pending      the current wave's release is not out yet (outside its window, or about to publish)
 * publishing   uploading the payloads and publishing the wave's signed release
 * waiting      the release is out; counting acks until the success threshold (or the timeout)
 * soaking      the success threshold holds; waiting soakSeconds before the next wave
 * paused       an operator (or an empty group) stopped progress; failures still halt
 * rolling_back the failure threshold was crossed: every group reached is being rolled back
 * halted       rolled back after failures (terminal)
 * completed    every wave soaked (terminal)
 * aborted      stopped by an operator; releases left as they are (terminal)
 */
import { FleetError } from '../platform/errors.ts';
export const ROLLOUT_STATES = ['pending', 'publishing', 'waiting', 'soaking', 'paused', 'halted', 'rolling_back', 'completed', 'aborted'] as const;
export type RolloutState = (typeof ROLLOUT_STATES)[number];

export type RolloutMachineEvent =
  | 'publish'
  | 'adopt'
  | 'published'
  | 'publish-failed'
  | 'interrupted'
  | 'threshold-reached'
  | 'threshold-lost'
  | 'promote'
  | 'complete'
  | 'failure-threshold'
  | 'timed-out'
  | 'rollback-failed'
  | 'rolled-back'
  | 'pause'
  | 'resume'
  | 'abort';

export const TERMINAL_STATES: readonly RolloutState[] = ['halted', 'completed', 'aborted'];

export const ROLLOUT_TRANSITIONS: ReadonlyArray<{ from: readonly RolloutState[]; on: RolloutMachineEvent; to: RolloutState }> = [
  // Inside the wave's window, with the group's devices known: publish its release.
  { from: ['pending'], on: 'publish', to: 'publishing' },
  // The group's retained release already names the target (a restart, a resume): nothing is published again.
  { from: ['pending'], on: 'adopt', to: 'waiting' },
  { from: ['publishing'], on: 'published', to: 'waiting' },
  // Upload or publish failed (no update server, broker gone): tried again later.
  { from: ['publishing'], on: 'publish-failed', to: 'pending' },
  // A restarted controller found the rollout mid-publish: it checks the release again.
  { from: ['publishing'], on: 'interrupted', to: 'pending' },
  { from: ['waiting'], on: 'threshold-reached', to: 'soaking' },
  { from: ['soaking'], on: 'threshold-lost', to: 'waiting' },
  { from: ['soaking'], on: 'promote', to: 'pending' },
  { from: ['soaking'], on: 'complete', to: 'completed' },
  // Failures of any wave reached so far halt the rollout, paused or not.
  { from: ['pending', 'waiting', 'soaking', 'paused'], on: 'failure-threshold', to: 'rolling_back' },
  // The timeout passed without the success threshold (and no offline device blocks): a failed wave.
  { from: ['waiting'], on: 'timed-out', to: 'rolling_back' },
  { from: ['rolling_back'], on: 'rollback-failed', to: 'rolling_back' },
  { from: ['rolling_back'], on: 'rolled-back', to: 'halted' },
  { from: ['pending', 'waiting', 'soaking'], on: 'pause', to: 'paused' },
  // Back to pending: the wave's release is adopted if it is out, published if not; a soak starts again.
  { from: ['paused'], on: 'resume', to: 'pending' },
  { from: ['pending', 'waiting', 'soaking', 'paused'], on: 'abort', to: 'aborted' },
];

/** A step the table does not allow: a bug in the controller, never caused by input. */
export class IllegalRolloutTransition extends FleetError<'illegal-transition'> {
  override readonly name = 'IllegalRolloutTransition';
  constructor(
    readonly state: RolloutState,
    readonly event: RolloutMachineEvent,
  ) {
    super('internal', 'illegal-transition', `no rollout transition from ${state} on ${event}`);
  }
}

export function nextRolloutState(state: RolloutState, event: RolloutMachineEvent): RolloutState {
  const row = ROLLOUT_TRANSITIONS.find((t) => t.on === event && t.from.includes(state));
  if (!row) throw new IllegalRolloutTransition(state, event);
  return row.to;
}

export function canTransition(state: RolloutState, event: RolloutMachineEvent): boolean {
  return ROLLOUT_TRANSITIONS.some((t) => t.on === event && t.from.includes(state));
}

export const isTerminal = (s: RolloutState): boolean => TERMINAL_STATES.includes(s);
