import type { DeviceStatus } from '../../protocol/status.ts';

/** A well-formed device status for tests: an idle device with nothing in progress, and the fields given. */
export function statusFixture(fields: Pick<DeviceStatus, 'device' | 'group'> & Partial<DeviceStatus>): DeviceStatus {
  return {
    model: 'm',
    state: 'idle',
    running: 'a'.repeat(64),
    target: null,
    seq: null,
    updateId: null,
    rollback: false,
    progress: 0,
    bytes: 0,
    totalBytes: 0,
    badChunks: 0,
    rateBps: 0,
    wire: null,
    reason: null,
    message: null,
    agent: 'test',
    time: new Date().toISOString(),
    ...fields,
  };
}
