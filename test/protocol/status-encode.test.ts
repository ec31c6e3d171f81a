import { describe, expect, it } from 'vitest';
import { encodeStatus, parseStatus, type DeviceStatus } from '../../protocol/status.ts';
import { statusFixture } from '../support/status.ts';

const digest = (c: string): string => c.repeat(64);
const base: DeviceStatus = statusFixture({
  device: 'dev-1',
  group: 'site',
  attempt: null,
  maxAttempts: null,
  agent: '0.3.0',
  instance: '0123456789abcdef',
  started: '2026-12-07T09:00:00.000Z',
  time: '2026-12-07T10:00:00.000Z',
});
const statuses: Array<[string, DeviceStatus]> = [
  ['idle', base],
  ['downloading at the start', { ...base, state: 'downloading', target: digest('b'), seq: 0, updateId: 'c'.repeat(32), totalBytes: 1_057_345, wire: { bytesIn: 0, bytesOut: 0, connects: 1 } }],
  [
    'downloading half-way',
    {
      ...base,
      state: 'downloading',
      target: digest('b'),
      seq: 7,
      updateId: 'c'.repeat(32),
      progress: 0.5,
      bytes: 528_672,
      totalBytes: 1_057_345,
      rateBps: 61_000,
      wire: { bytesIn: 540_000, bytesOut: 9_000, connects: 2 },
      message: 'receiving 61000 B/s',
    },
  ],
  ['ok after a trial', { ...base, state: 'ok', running: digest('b'), target: digest('b'), seq: 7, progress: 1, attempt: 1, maxAttempts: 3, validation: { accuracy: 0.9, runningAccuracy: null, samples: 100 } }],
  ['rolled back', { ...base, state: 'rolled_back', target: digest('b'), seq: 7, rollback: true, reason: 'health-failed', message: 'the health check failed', attempt: 3, maxAttempts: 3 }],
];

/** What a reader gets back: the status, an optional field that was null left out (readers take `?? null`). */
function asRead(s: DeviceStatus): DeviceStatus {
  const r: Record<string, unknown> = { ...s };
  for (const k of ['attempt', 'maxAttempts', 'validation']) if (r[k] === null) delete r[k];
  return r as unknown as DeviceStatus;
}

describe('encodeStatus (protocol.md §8): fields at the value a reader takes when absent are left out', () => {
  it.each(statuses)('%s: parseStatus gives the same status back', (_name, s) => {
    expect(parseStatus(encodeStatus(s))).toEqual(asRead(s));
  });

  it('an idle status carries no null, false or 0 field, and is shorter than the whole object', () => {
    const json = new TextDecoder().decode(encodeStatus(base));
    for (const k of ['target', 'seq', 'updateId', 'rollback', 'progress', 'bytes', 'badChunks', 'rateBps', 'wire', 'reason', 'message', 'attempt', 'maxAttempts']) expect(json).not.toContain(`"${k}"`);
    expect(json.length).toBeLessThan(JSON.stringify(base).length * 0.7);
  });

  it('a value that only looks empty is kept: seq 0 (its absence means null), an attempt of 0', () => {
    const s: DeviceStatus = { ...base, seq: 0, attempt: 0 };
    const back = parseStatus(encodeStatus(s))!;
    expect(back.seq).toBe(0);
    expect(back.attempt).toBe(0);
  });
});
