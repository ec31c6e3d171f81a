import { describe, expect, it } from 'vitest';
import type { DeviceStatus } from '../../protocol/status.ts';
import { composeStatus, restoredStatus, type StatusFields } from '../../device/status-report.ts';

const FIELDS: StatusFields = {
  target: 'sha256:' + 'b'.repeat(64),
  seq: 7,
  updateId: 'u-7',
  reason: null,
  message: null,
  rollback: true,
  attempt: 2,
  maxAttempts: 3,
  validation: { accuracy: 0.91, runningAccuracy: 0.88, samples: 64 },
};

function remembered(fields: StatusFields): DeviceStatus {
  const identity = { instance: 'i1', started: '2026-01-01T00:00:00.000Z' };
  return composeStatus({ device: 'd1', group: 'g', model: 'm', state: 'testing', running: 'sha256:' + 'a'.repeat(64), fields, shown: undefined, active: undefined, wire: null, now: 1_000, identity });
}

describe('restoredStatus (the status remembered across a restart)', () => {
  it('gives back the state and every transition field of the status the agent published', () => {
    expect(restoredStatus(remembered(FIELDS))).toEqual({ state: 'testing', fields: FIELDS });
  });

  it("fills the fields an older agent's status file lacks with their defaults", () => {
    const old = remembered(FIELDS) as Partial<DeviceStatus>;
    delete old.rollback;
    delete old.attempt;
    delete old.maxAttempts;
    delete old.validation;
    expect(restoredStatus(old as DeviceStatus).fields).toEqual({ ...FIELDS, rollback: false, attempt: null, maxAttempts: null, validation: null });
  });
});
