import type { DeviceState, DeviceStatus, WireStats } from '../protocol/status.ts';
import { VERSION } from '../util/version.ts';
import type { Fetcher } from './fetcher.ts';

/** The status fields a transition sets; the rest are read from the agent when the status is made. */
export type StatusFields = Pick<DeviceStatus, 'target' | 'seq' | 'updateId' | 'reason' | 'message' | 'rollback' | 'attempt' | 'maxAttempts' | 'validation'>;

export interface StatusSnapshot {
  device: string;
  group: string;
  model: string;
  state: DeviceState;
  running: string;
  fields: StatusFields;
  /** The fetch the status reports on (kept after it ends, so an ack shows what was received). */
  shown: Fetcher | undefined;
  /** The fetch under way, if any (its rate). */
  active: Fetcher | undefined;
  wire: WireStats | null;
  now: number;
  /** Which agent process speaks. */
  identity: { instance: string; started: string };
}

/** The device's status as published (protocol.md §8). */
export function composeStatus(s: StatusSnapshot): DeviceStatus {
  const f = s.shown;
  return {
    device: s.device,
    group: s.group,
    model: s.model,
    state: s.state,
    running: s.running,
    ...s.fields,
    progress: f ? f.progress : s.state === 'ok' ? 1 : 0,
    rateBps: s.active ? s.active.bytesPerSecond(s.now) : 0,
    wire: s.wire,
    bytes: f?.receivedBytes ?? 0,
    totalBytes: f?.totalBytes ?? 0,
    badChunks: f?.badChunks ?? 0,
    agent: VERSION,
    instance: s.identity.instance,
    started: s.identity.started,
    time: new Date(s.now).toISOString(),
  };
}

/**
 * The state and status fields to start from after a restart: those of the status remembered
 * (storage.memory().lastStatus); fields an older agent did not write take their defaults.
 */
export function restoredStatus(last: DeviceStatus): { state: DeviceState; fields: StatusFields } {
  return {
    state: last.state,
    fields: {
      target: last.target,
      seq: last.seq,
      updateId: last.updateId,
      reason: last.reason,
      message: last.message,
      rollback: last.rollback ?? false,
      attempt: last.attempt ?? null,
      maxAttempts: last.maxAttempts ?? null,
      validation: last.validation ?? null,
    },
  };
}
