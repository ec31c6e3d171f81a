import type { Topics } from '../protocol/topics.ts';
import type { FailureThreshold, OfflinePolicy, RolloutPlan } from './plan.ts';
import { stripControls, stripControlsDeep } from '../util/text.ts';
import type { RolloutState } from './machine.ts';

/**
 * The rollout status (JSON, retained on `fleet/rollouts/{id}/status`) and the
 * control messages. The status is also the controller's memory: a restarted
 * controller rebuilds itself from it, the device statuses and the releases.
 */

/** Operators' commands to a running controller: `fleet/rollouts/{id}/control`. */
export function rolloutControlTopic(topics: Topics, rolloutId: string): string {
  return topics.rolloutControl(rolloutId);
}

export type ControlCommand = 'pause' | 'resume' | 'abort';
export const CONTROL_COMMANDS: readonly ControlCommand[] = ['pause', 'resume', 'abort'];

/**
 * Retained, so a command sent while no controller runs is applied when one
 * starts; `id` makes it apply once (the status records the last id applied).
 */
export interface ControlMessage {
  v: 1;
  id: string;
  command: ControlCommand;
  /** ISO 8601. */
  time: string;
  reason?: string;
}

export function parseControl(payload: Uint8Array): ControlMessage | null {
  try {
    const j = JSON.parse(new TextDecoder().decode(payload)) as ControlMessage;
    if (typeof j !== 'object' || j === null || j.v !== 1 || typeof j.id !== 'string' || !CONTROL_COMMANDS.includes(j.command)) return null;
    return j;
  } catch {
    return null;
  }
}

export type RolloutEventType =
  | 'started'
  | 'resumed-controller'
  | 'outside-window'
  | 'no-devices'
  | 'publishing'
  | 'published'
  | 'adopted'
  | 'publish-failed'
  | 'threshold-reached'
  | 'threshold-lost'
  | 'timeout'
  | 'blocked'
  | 'promoted'
  | 'completed'
  | 'device-rolled-back'
  | 'device-failed'
  | 'failure-threshold'
  | 'rollback-published'
  | 'rollback-failed'
  | 'halted'
  | 'paused'
  | 'resumed'
  | 'aborted';

export interface RolloutEvent {
  type: RolloutEventType;
  /** ISO 8601. */
  time: string;
  rollout: string;
  /** Wave index, when the event is about one wave. */
  wave: number | null;
  group: string | null;
  device: string | null;
  /** What happened and why, for a person. */
  reason: string;
}

export interface WaveCounts {
  /** Devices the wave is measured on (the snapshot less those skipped). */
  total: number;
  ok: number;
  failed: number;
  /** Online and not done. */
  pending: number;
  /** Presence offline, or (after the timeout) never reacted to the release. */
  offline: number;
  /** Left out by `offline: skip`. */
  skipped: number;
}

export interface WaveFailure {
  device: string;
  state: string;
  reason: string | null;
}

export interface WaveRecord {
  group: string;
  /** The group's devices (retained status says this group and model) when the wave started. */
  devices: string[] | null;
  /** The release this wave is measured against. */
  release: { seq: number; target: string } | null;
  /** ISO 8601: when the release went out (the timeout runs from here). */
  publishedAt: string | null;
  /** ISO 8601: when the success threshold was reached (the soak runs from here). */
  thresholdAt: string | null;
  timedOut: boolean;
  counts: WaveCounts;
  /** Every device counted failed, as first seen (also what rejections are remembered by). */
  failures: WaveFailure[];
  /** Devices that keep the wave from completing (`offline: block`). */
  blocking: string[];
  /** The controller published the group's rollback. */
  rolledBack: boolean;
}

export interface PlanSummary {
  digest: string;
  model: string;
  target: string;
  updates: number;
  full: boolean;
  waves: Array<{ group: string; successThreshold: number; failureThreshold: FailureThreshold; soakSeconds: number; timeoutSeconds: number; offline: OfflinePolicy; window: string | null }>;
}

export interface RolloutStatus {
  v: 1;
  rollout: string;
  state: RolloutState;
  /** Index of the current wave. */
  wave: number;
  /** The state a paused rollout was in. */
  pausedFrom: RolloutState | null;
  /** Why the rollout is where it is (why paused, halted, blocked, outside its window). */
  reason: string | null;
  plan: PlanSummary;
  waves: WaveRecord[];
  lastEvent: RolloutEvent | null;
  /** The latest events, oldest first (at most 20). */
  events: RolloutEvent[];
  /** Id of the last control message applied. */
  lastCommand: string | null;
  /** ISO 8601. */
  started: string;
  updated: string;
  /** Who runs it: `fleet/VERSION host pid`. */
  controller: string;
}

export const emptyCounts = (): WaveCounts => ({ total: 0, ok: 0, failed: 0, pending: 0, offline: 0, skipped: 0 });

export function newWaveRecord(group: string): WaveRecord {
  return { group, devices: null, release: null, publishedAt: null, thresholdAt: null, timedOut: false, counts: emptyCounts(), failures: [], blocking: [], rolledBack: false };
}

/** The status of a rollout that starts now. */
export function newRolloutStatus(p: RolloutPlan, digest: string, target: string, now: string, controller: string): RolloutStatus {
  return {
    v: 1,
    rollout: p.id,
    state: 'pending',
    wave: 0,
    pausedFrom: null,
    reason: null,
    plan: {
      digest,
      model: p.model,
      target,
      updates: p.updates.length,
      full: p.full !== undefined,
      waves: p.waves.map((w) => ({ ...w, window: w.window ?? null })),
    },
    waves: p.waves.map((w) => newWaveRecord(w.group)),
    lastEvent: null,
    events: [],
    lastCommand: null,
    started: now,
    updated: now,
    controller,
  };
}

export function encodeRolloutStatus(s: RolloutStatus): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(s));
}

export function parseRolloutStatus(payload: Uint8Array): RolloutStatus | null {
  if (payload.byteLength === 0) return null;
  try {
    const j = JSON.parse(new TextDecoder().decode(payload)) as RolloutStatus;
    if (typeof j !== 'object' || j === null || j.v !== 1 || typeof j.rollout !== 'string' || typeof j.state !== 'string' || !Array.isArray(j.waves) || typeof j.plan !== 'object' || j.plan === null) return null;
    // What formatRolloutStatus and the views read without further checks.
    if (!Array.isArray(j.plan.waves) || typeof j.plan.model !== 'string' || typeof j.plan.target !== 'string' || !Number.isInteger(j.wave)) return null;
    if (j.waves.some((w) => typeof w !== 'object' || w === null) || j.plan.waves.some((w) => typeof w !== 'object' || w === null)) return null;
    // Retained on a topic others may publish on: no control character reaches a terminal or a log from it.
    return stripControlsDeep(j);
  } catch {
    return null;
  }
}

const pct = (n: number, d: number): string => (d === 0 ? '-' : `${Math.round((100 * n) / d)} %`);

/** The status for a person: one line per wave, the last event. */
export function formatRolloutStatus(s: RolloutStatus): string {
  const lines = [
    `rollout ${s.rollout}: ${s.state}${s.pausedFrom ? ` (from ${s.pausedFrom})` : ''}, wave ${s.wave + 1}/${s.plan.waves.length}, model ${s.plan.model} -> ${s.plan.target.slice(0, 12)}, updated ${s.updated}`,
  ];
  s.plan.waves.forEach((w, k) => {
    const r = s.waves[k];
    const c = r?.counts;
    const rel = r?.release ? `seq ${r.release.seq}` : 'not published';
    const counts =
      c && r?.devices
        ? `${c.ok}/${c.total} ok (${pct(c.ok, c.total)}, need ${Math.round(w.successThreshold * 100)} %), ${c.failed} failed, ${c.pending} pending, ${c.offline} offline${c.skipped ? `, ${c.skipped} skipped` : ''}`
        : 'not started';
    const extra = [r?.timedOut ? 'timed out' : '', r?.rolledBack ? 'rolled back' : '', Array.isArray(r?.blocking) && r.blocking.length ? `blocked by ${r.blocking.join(', ')}` : ''].filter(Boolean).join(', ');
    lines.push(`  ${k === s.wave ? '>' : ' '} wave ${k + 1} ${w.group}: ${rel}; ${counts}${extra ? `; ${extra}` : ''}`);
  });
  if (s.reason) lines.push(`  why: ${s.reason}`);
  if (s.lastEvent) lines.push(`  last event: ${s.lastEvent.type} at ${s.lastEvent.time}: ${s.lastEvent.reason}`);
  return lines.map(stripControls).join('\n');
}
