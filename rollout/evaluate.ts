import type { DeviceStatus } from '../protocol/status.ts';
import type { DeviceRecord } from './inventory.ts';
import type { FailureThreshold, WavePlan } from './plan.ts';
import type { WaveCounts, WaveFailure, WaveRecord } from './status.ts';

/** Device states that count as a failure of the release they name. */
export const FAILURE_STATES = ['rolled_back', 'rejected', 'failed'] as const;

/**
 * Where one device of a wave stands against the wave's release:
 * ok      running the target (state ok)
 * failed  rolled_back / rejected / failed for this release (seq at least the release's), or a
 *         refusal the controller saw arrive after the release (a refusal keeps the old target)
 * offline presence `offline`, not done
 * silent  no status for this release yet (none at all, or an older seq): offline once the timeout passes
 * pending online and working on it
 */
export type DeviceOutcome = 'ok' | 'failed' | 'offline' | 'silent' | 'pending';

export interface WaveRelease {
  seq: number;
  target: string;
}

const isFailureState = (s: string): boolean => (FAILURE_STATES as readonly string[]).includes(s);

export function classifyDevice(rec: DeviceRecord | undefined, release: WaveRelease, remembered: WaveFailure | undefined): DeviceOutcome {
  const s = rec?.status ?? null;
  if (s && s.state === 'ok' && s.running === release.target) return 'ok';
  if (s && isFailureState(s.state)) {
    if (s.target === release.target && s.seq !== null && s.seq >= release.seq) return 'failed';
    if (remembered && remembered.state === s.state && isFailureState(remembered.state)) return 'failed';
  }
  if (rec?.presence === 'offline') return 'offline';
  if (!s || s.seq === null || s.seq < release.seq) return 'silent';
  return 'pending';
}

export interface WaveEvaluation {
  counts: WaveCounts;
  outcomes: Map<string, DeviceOutcome>;
  /** Devices counted failed, with why (timed-out and offline ones included). */
  failures: WaveFailure[];
  /** Offline devices that keep a `block` wave from completing (after the timeout). */
  blocking: string[];
  /** Offline or silent devices (before any policy). */
  offline: string[];
  success: boolean;
  failureCrossed: boolean;
}

/** Share comparisons with a little slack so 2/3 meets 0.6667's intent and 1/3 * 3 meets 1. */
const atLeast = (n: number, total: number, share: number): boolean => total > 0 && n >= Math.ceil(share * total - 1e-9);

/**
 * Counts one wave. Before the timeout, silent devices are pending; at the
 * timeout, online devices still not done count as failures (timed out) and
 * offline/silent ones follow the wave's `offline` policy.
 */
export function evaluateWave(plan: WavePlan, devices: string[], release: WaveRelease, lookup: (device: string) => DeviceRecord | undefined, remembered: WaveFailure[], timedOut: boolean): WaveEvaluation {
  const mem = new Map(remembered.map((f) => [f.device, f]));
  const counts: WaveCounts = { total: 0, ok: 0, failed: 0, pending: 0, offline: 0, skipped: 0 };
  const outcomes = new Map<string, DeviceOutcome>();
  const failures: WaveFailure[] = [];
  const blocking: string[] = [];
  const offline: string[] = [];
  for (const d of devices) {
    const rec = lookup(d);
    const o = classifyDevice(rec, release, mem.get(d));
    outcomes.set(d, o);
    const state = rec?.status?.state ?? 'unknown';
    if (o === 'ok') counts.ok++;
    else if (o === 'failed') {
      counts.failed++;
      failures.push({ device: d, state, reason: rec?.status?.reason ?? mem.get(d)?.reason ?? null });
    } else if (o === 'offline' || (o === 'silent' && timedOut)) {
      offline.push(d);
      if (!timedOut) counts.offline++;
      else if (plan.offline === 'skip') counts.skipped++;
      else if (plan.offline === 'fail') {
        counts.failed++;
        failures.push({ device: d, state: 'offline', reason: o === 'silent' ? 'no status for this release before the timeout' : 'offline at the timeout' });
      } else {
        counts.offline++;
        blocking.push(d);
      }
    } else if (timedOut) {
      counts.failed++;
      failures.push({ device: d, state, reason: `timed out (${o === 'silent' ? 'no status' : state})` });
    } else counts.pending++;
  }
  counts.total = devices.length - counts.skipped;
  const ft = plan.failureThreshold;
  const failureCrossed = counts.failed > 0 && ((ft.count !== undefined && counts.failed >= ft.count) || (ft.share !== undefined && atLeast(counts.failed, Math.max(1, counts.total), ft.share)));
  const success = counts.ok > 0 && atLeast(counts.ok, counts.total, plan.successThreshold);
  return { counts, outcomes, failures, blocking, offline, success, failureCrossed };
}

/**
 * A refusal keeps the device's old target and seq in its status (device/agent.ts),
 * so a `rejected` status that arrives live after a wave's release is recorded
 * against that wave (and stays counted while the device stays rejected).
 * Returns the indices of the waves it was newly recorded for.
 */
export function recordRejection(waves: WaveRecord[], s: DeviceStatus): number[] {
  const out: number[] = [];
  waves.forEach((w, k) => {
    if (!w.release || !w.devices?.includes(s.device) || s.target === w.release.target) return;
    if (w.failures.some((f) => f.device === s.device && f.state === 'rejected')) return;
    w.failures.push({ device: s.device, state: 'rejected', reason: s.reason });
    out.push(k);
  });
  return out;
}

export function describeThreshold(f: FailureThreshold): string {
  const pct = (x: number): string => `${Math.round(x * 100)} %`;
  return [f.count !== undefined ? `${f.count} device(s)` : '', f.share !== undefined ? pct(f.share) : ''].filter(Boolean).join(' or ');
}
