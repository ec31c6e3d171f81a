import { encodeStatus, type DeviceStatus } from '../../protocol/status.ts';
import { Topics } from '../../protocol/topics.ts';
import { encodeRolloutStatus, newWaveRecord, type RolloutStatus } from '../../rollout/status.ts';
import { FleetView } from '../../operator/fleet-view.ts';
import { statusFixture } from '../support/status.ts';

export const topics = new Topics();
export const T0 = Date.parse('2025-03-01T12:00:00.000Z');
export const D1 = 'a'.repeat(64);
export const D2 = 'b'.repeat(64);

/** A view on a clock the test moves by hand. */
export function clockedView(staleMs = 60_000): { view: FleetView; clock: { t: number } } {
  const clock = { t: T0 };
  return { view: new FleetView(topics, { now: () => clock.t, staleMs }), clock };
}

export function status(device: string, over: Partial<DeviceStatus> = {}): DeviceStatus {
  return statusFixture({ device, group: 'line-1', running: D1, wire: { bytesIn: 1000, bytesOut: 200, connects: 1 }, agent: 'fleet/0.1.0', time: new Date(T0).toISOString(), ...over });
}

export const statusMsg = (s: DeviceStatus): [string, Uint8Array] => [topics.status(s.device), encodeStatus(s)];
export const presenceMsg = (device: string, p: string): [string, Uint8Array] => [topics.presence(device), new TextEncoder().encode(p)];

export function rolloutStatus(id: string, over: Partial<RolloutStatus> = {}): RolloutStatus {
  const waves = [newWaveRecord('canary'), newWaveRecord('line-1')];
  waves[0].devices = ['d1', 'd2'];
  waves[0].counts = { total: 2, ok: 1, failed: 0, pending: 1, offline: 0, skipped: 0 };
  return {
    v: 1,
    rollout: id,
    state: 'waiting',
    wave: 0,
    pausedFrom: null,
    reason: null,
    plan: {
      digest: 'c'.repeat(64),
      model: 'm',
      target: D2,
      updates: 1,
      full: false,
      waves: waves.map((w) => ({ group: w.group, successThreshold: 1, failureThreshold: { count: 1 }, soakSeconds: 60, timeoutSeconds: 600, offline: 'block' as const, window: null })),
    },
    waves,
    lastEvent: { type: 'published', time: new Date(T0).toISOString(), rollout: id, wave: 0, group: 'canary', device: null, reason: 'release seq 3 published' },
    events: [],
    lastCommand: null,
    started: new Date(T0).toISOString(),
    updated: new Date(T0).toISOString(),
    controller: 'fleet/0.1.0 host 1',
    ...over,
  };
}

export const rolloutMsg = (s: RolloutStatus): [string, Uint8Array] => [topics.rolloutStatus(s.rollout), encodeRolloutStatus(s)];
