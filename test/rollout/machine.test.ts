import { describe, expect, it } from 'vitest';
import { IllegalRolloutTransition, nextRolloutState, ROLLOUT_STATES, ROLLOUT_TRANSITIONS, TERMINAL_STATES, type RolloutMachineEvent, type RolloutState } from '../../rollout/machine.ts';
import { classifyDevice, evaluateWave } from '../../rollout/evaluate.ts';
import type { DeviceRecord } from '../../rollout/inventory.ts';
import type { WavePlan } from '../../rollout/plan.ts';
import type { DeviceState } from '../../protocol/status.ts';
import { statusFixture } from '../support/status.ts';

/** Every event, spelled out; a Record so the compiler flags one missing here. */
const EVENT_SET: Record<RolloutMachineEvent, true> = {
  publish: true,
  adopt: true,
  published: true,
  'publish-failed': true,
  interrupted: true,
  'threshold-reached': true,
  'threshold-lost': true,
  promote: true,
  complete: true,
  'failure-threshold': true,
  'timed-out': true,
  'rollback-failed': true,
  'rolled-back': true,
  pause: true,
  resume: true,
  abort: true,
};
const EVENTS = Object.keys(EVENT_SET) as RolloutMachineEvent[];

/** The whole table, spelled out once more: "state event" -> next. A change to the table must change this. */
const EXPECTED: Record<string, RolloutState> = {
  'pending publish': 'publishing',
  'pending adopt': 'waiting',
  'publishing published': 'waiting',
  'publishing publish-failed': 'pending',
  'publishing interrupted': 'pending',
  'waiting threshold-reached': 'soaking',
  'soaking threshold-lost': 'waiting',
  'soaking promote': 'pending',
  'soaking complete': 'completed',
  'pending failure-threshold': 'rolling_back',
  'waiting failure-threshold': 'rolling_back',
  'soaking failure-threshold': 'rolling_back',
  'paused failure-threshold': 'rolling_back',
  'waiting timed-out': 'rolling_back',
  'rolling_back rollback-failed': 'rolling_back',
  'rolling_back rolled-back': 'halted',
  'pending pause': 'paused',
  'waiting pause': 'paused',
  'soaking pause': 'paused',
  'paused resume': 'pending',
  'pending abort': 'aborted',
  'waiting abort': 'aborted',
  'soaking abort': 'aborted',
  'paused abort': 'aborted',
};

describe('rollout transition table', () => {
  it('is exactly the documented table: every listed pair works, every other pair is refused', () => {
    for (const state of ROLLOUT_STATES) {
      for (const ev of EVENTS) {
        const want = EXPECTED[`${state} ${ev}`];
        if (want) expect(nextRolloutState(state, ev), `${state} ${ev}`).toBe(want);
        else expect(() => nextRolloutState(state, ev), `${state} ${ev}`).toThrow(IllegalRolloutTransition);
      }
    }
    const rows = ROLLOUT_TRANSITIONS.reduce((n, r) => n + r.from.length, 0);
    expect(rows).toBe(Object.keys(EXPECTED).length);
  });
  it('terminal states have no way out; every other state can be left', () => {
    for (const t of TERMINAL_STATES) expect(ROLLOUT_TRANSITIONS.some((r) => r.from.includes(t))).toBe(false);
    for (const s of ROLLOUT_STATES.filter((x) => !TERMINAL_STATES.includes(x)))
      expect(
        ROLLOUT_TRANSITIONS.some((r) => r.from.includes(s)),
        s,
      ).toBe(true);
  });
  it('every state is reachable from pending', () => {
    const seen = new Set<RolloutState>(['pending']);
    for (let grew = true; grew;) {
      grew = false;
      for (const r of ROLLOUT_TRANSITIONS) {
        if (r.from.some((f) => seen.has(f)) && !seen.has(r.to)) {
          seen.add(r.to);
          grew = true;
        }
      }
    }
    expect([...seen].sort()).toEqual([...ROLLOUT_STATES].sort());
  });
  it('a rollout being rolled back cannot be paused or aborted half way', () => {
    expect(() => nextRolloutState('rolling_back', 'abort')).toThrow(/no rollout transition from rolling_back on abort/);
    expect(() => nextRolloutState('rolling_back', 'pause')).toThrow(IllegalRolloutTransition);
  });
});

const T = 'b'.repeat(64);
const OLD = 'a'.repeat(64);
const rec = (device: string, state: DeviceState | null, o: { running?: string; target?: string | null; seq?: number | null; presence?: 'online' | 'offline' } = {}): DeviceRecord => ({
  device,
  presence: o.presence ?? 'online',
  status:
    state === null
      ? null
      : statusFixture({
          device,
          group: 'g',
          state,
          running: o.running ?? OLD,
          target: o.target ?? null,
          seq: o.seq ?? null,
          reason: state === 'rolled_back' ? 'health-check-failed' : null,
          agent: 'x',
          time: '',
        }),
});
const wave = (o: Partial<WavePlan> = {}): WavePlan => ({ group: 'g', successThreshold: 1, failureThreshold: { count: 2 }, soakSeconds: 0, timeoutSeconds: 10, offline: 'block', ...o });
const release = { seq: 10, target: T };

describe('counting a wave', () => {
  it('classifies by state, target and seq: stale failures of older releases do not count', () => {
    expect(classifyDevice(rec('d', 'ok', { running: T }), release, undefined)).toBe('ok');
    expect(classifyDevice(rec('d', 'rolled_back', { target: T, seq: 10 }), release, undefined)).toBe('failed');
    expect(classifyDevice(rec('d', 'rolled_back', { target: T, seq: 9 }), release, undefined)).toBe('silent');
    expect(classifyDevice(rec('d', 'rejected', { target: OLD, seq: 3 }), release, { device: 'd', state: 'rejected', reason: 'wrong-base' })).toBe('failed');
    expect(classifyDevice(rec('d', 'downloading', { target: T, seq: 10 }), release, undefined)).toBe('pending');
    expect(classifyDevice(rec('d', 'downloading', { target: T, seq: 10, presence: 'offline' }), release, undefined)).toBe('offline');
    expect(classifyDevice(rec('d', 'ok', { running: T, presence: 'offline' }), release, undefined)).toBe('ok');
    expect(classifyDevice(undefined, release, undefined)).toBe('silent');
  });
  it('a device retrying its trial (testing, attempt 2 of 3, after a power cut) is pending, not failed, until it ends', () => {
    const retrying = rec('d', 'testing', { running: T, target: T, seq: 10 });
    retrying.status = { ...retrying.status!, attempt: 2, maxAttempts: 3, message: 'attempt 2 of 3: the agent stopped during attempt 1' };
    expect(classifyDevice(retrying, release, undefined)).toBe('pending');
    const recs = new Map([rec('a', 'ok', { running: T }), retrying].map((r) => [r.device, r]));
    const e = evaluateWave(wave({ failureThreshold: { count: 1 } }), ['a', 'd'], release, (d) => recs.get(d), [], false);
    expect(e.counts).toMatchObject({ ok: 1, failed: 0, pending: 1 });
    expect(e.failureCrossed).toBe(false);
  });
  it('success and failure thresholds, by count and by share', () => {
    const recs = new Map([rec('a', 'ok', { running: T }), rec('b', 'ok', { running: T }), rec('c', 'rolled_back', { target: T, seq: 10 })].map((r) => [r.device, r]));
    const look = (d: string): DeviceRecord | undefined => recs.get(d);
    const e = evaluateWave(wave({ successThreshold: 0.66 }), ['a', 'b', 'c'], release, look, [], false);
    expect(e.counts).toEqual({ total: 3, ok: 2, failed: 1, pending: 0, offline: 0, skipped: 0 });
    expect(e.success).toBe(true);
    expect(e.failureCrossed).toBe(false);
    expect(evaluateWave(wave({ successThreshold: 0.67 }), ['a', 'b', 'c'], release, look, [], false).success).toBe(false);
    expect(evaluateWave(wave({ failureThreshold: { share: 0.3 } }), ['a', 'b', 'c'], release, look, [], false).failureCrossed).toBe(true);
    expect(evaluateWave(wave({ failureThreshold: { count: 1 } }), ['a', 'b', 'c'], release, look, [], false).failureCrossed).toBe(true);
  });
  it('at the timeout: online unfinished devices fail; offline ones follow the policy', () => {
    const recs = new Map([rec('a', 'ok', { running: T }), rec('b', 'downloading', { target: T, seq: 10 }), rec('c', 'idle', { presence: 'offline' }), rec('d', 'idle')].map((r) => [r.device, r]));
    const look = (d: string): DeviceRecord | undefined => recs.get(d);
    const devs = ['a', 'b', 'c', 'd'];
    const before = evaluateWave(wave(), devs, release, look, [], false);
    expect(before.counts).toEqual({ total: 4, ok: 1, failed: 0, pending: 2, offline: 1, skipped: 0 });
    const block = evaluateWave(wave({ failureThreshold: { count: 5 } }), devs, release, look, [], true);
    expect(block.counts).toEqual({ total: 4, ok: 1, failed: 1, pending: 0, offline: 2, skipped: 0 });
    expect(block.blocking).toEqual(['c', 'd']);
    const skip = evaluateWave(wave({ offline: 'skip', successThreshold: 0.5 }), devs, release, look, [], true);
    expect(skip.counts).toEqual({ total: 2, ok: 1, failed: 1, pending: 0, offline: 0, skipped: 2 });
    expect(skip.success).toBe(true);
    const fail = evaluateWave(wave({ offline: 'fail', failureThreshold: { count: 3 } }), devs, release, look, [], true);
    expect(fail.counts.failed).toBe(3);
    expect(fail.failureCrossed).toBe(true);
  });
  it('a wave whose devices are all skipped is not a success', () => {
    const e = evaluateWave(wave({ offline: 'skip', successThreshold: 0.1 }), ['x'], release, () => undefined, [], true);
    expect(e.counts).toMatchObject({ total: 0, skipped: 1 });
    expect(e.success).toBe(false);
  });
});
