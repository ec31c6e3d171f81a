import { describe, it, expect } from 'vitest';
import { IllegalTransition, TRANSITIONS, nextState, type DeviceEvent } from '../../device/machine.ts';
import { classify, errorFields, FleetError } from '../../platform/errors.ts';
import { DEVICE_ONLY_REASONS, DEVICE_REASONS, DeviceError, toReason, type DeviceReason } from '../../device/reasons.ts';
import { DEVICE_STATES, type DeviceState } from '../../protocol/status.ts';
import { PROTOCOL_REASONS, ProtocolError } from '../../protocol/errors.ts';

/** Every event, spelled out; a Record so the compiler flags a DeviceEvent missing here. */
const EVENT_SET: Record<DeviceEvent, true> = {
  'release-accepted': true,
  'release-current': true,
  'release-refused': true,
  'release-withdrawn': true,
  resume: true,
  'download-progress': true,
  'download-complete': true,
  'download-failed': true,
  'verify-passed': true,
  'verify-failed': true,
  'apply-done': true,
  'apply-failed': true,
  'health-passed': true,
  'health-failed': true,
  'storage-failed': true,
  'switch-back': true,
  'crash-rollback': true,
  'trial-retry': true,
  'trial-resumed': true,
};
const EVENTS = Object.keys(EVENT_SET) as DeviceEvent[];

/** The table as a map "state|event" -> next state. */
function tableMap(): Map<string, DeviceState> {
  const m = new Map<string, DeviceState>();
  for (const row of TRANSITIONS) for (const from of row.from) m.set(`${from}|${row.on}`, row.to);
  return m;
}

describe('transition table', () => {
  it('every row works for every state it lists', () => {
    let pairs = 0;
    for (const row of TRANSITIONS) {
      expect(row.from.length, row.on).toBeGreaterThan(0);
      for (const from of row.from) {
        expect(nextState(from, row.on), `${from} --${row.on}-->`).toBe(row.to);
        pairs++;
      }
    }
    expect(pairs).toBe(tableMap().size);
  });
  it('no (state, event) pair is listed twice (the table is deterministic)', () => {
    const seen = new Set<string>();
    for (const row of TRANSITIONS) {
      for (const from of row.from) {
        const k = `${from}|${row.on}`;
        expect(seen.has(k), k).toBe(false);
        seen.add(k);
      }
    }
  });
  it('only uses known states and events, and every event appears', () => {
    for (const row of TRANSITIONS) {
      expect(DEVICE_STATES).toContain(row.to);
      for (const from of row.from) expect(DEVICE_STATES).toContain(from);
      expect(EVENTS).toContain(row.on);
    }
    expect(new Set(TRANSITIONS.map((r) => r.on))).toEqual(new Set(EVENTS));
  });
  it('a pair not in the table throws IllegalTransition naming the state and event', () => {
    const m = tableMap();
    let illegal = 0;
    for (const state of DEVICE_STATES) {
      for (const event of EVENTS) {
        if (m.has(`${state}|${event}`)) continue;
        illegal++;
        let thrown: unknown;
        try {
          nextState(state, event);
        } catch (e) {
          thrown = e;
        }
        expect(thrown, `${state} --${event}-->`).toBeInstanceOf(IllegalTransition);
        expect((thrown as IllegalTransition).state).toBe(state);
        expect((thrown as IllegalTransition).event).toBe(event);
        expect((thrown as Error).message).toContain(state);
        expect((thrown as Error).message).toContain(event);
      }
    }
    expect(illegal).toBeGreaterThan(0);
  });
  it('some specific pairs are illegal', () => {
    expect(() => nextState('idle', 'download-complete')).toThrow(IllegalTransition);
    expect(() => nextState('idle', 'health-passed')).toThrow(IllegalTransition);
    expect(() => nextState('ok', 'apply-done')).toThrow(IllegalTransition);
    expect(() => nextState('testing', 'release-accepted')).toThrow(IllegalTransition);
    expect(() => nextState('verifying', 'release-withdrawn')).toThrow(IllegalTransition);
    expect(() => nextState('idle', 'storage-failed')).toThrow(IllegalTransition);
  });
  it('the happy path: idle → downloading → verifying → applying → testing → ok', () => {
    const path: DeviceEvent[] = ['release-accepted', 'download-progress', 'download-complete', 'verify-passed', 'apply-done', 'health-passed'];
    let s: DeviceState = 'idle';
    const seen: DeviceState[] = [s];
    for (const e of path) seen.push((s = nextState(s, e)));
    expect(seen).toEqual(['idle', 'downloading', 'downloading', 'verifying', 'applying', 'testing', 'ok']);
  });
  it('a trial: attempts repeat in testing (a failed health command, or a restart after a stop) until ok or rolled_back', () => {
    const path: DeviceEvent[] = ['apply-done', 'trial-retry', 'trial-retry', 'health-failed'];
    let s: DeviceState = 'applying';
    const seen: DeviceState[] = [s];
    for (const e of path) seen.push((s = nextState(s, e)));
    expect(seen).toEqual(['applying', 'testing', 'testing', 'testing', 'rolled_back']);
    // After a restart the agent starts in the state it last saved (testing, or earlier if the save was lost).
    for (const from of ['testing', 'applying', 'idle', 'ok'] as const) expect(nextState(from, 'trial-resumed')).toBe('testing');
    // A retry happens only during a trial.
    expect(TRANSITIONS.find((r) => r.on === 'trial-retry')?.from).toEqual(['testing']);
  });
  it('every DeviceState is reachable from idle', () => {
    const reached = new Set<DeviceState>(['idle']);
    const queue: DeviceState[] = ['idle'];
    while (queue.length) {
      const s = queue.shift() as DeviceState;
      for (const e of EVENTS) {
        let n: DeviceState;
        try {
          n = nextState(s, e);
        } catch {
          continue;
        }
        if (!reached.has(n)) {
          reached.add(n);
          queue.push(n);
        }
      }
    }
    expect([...reached].sort()).toEqual([...DEVICE_STATES].sort());
  });
  it("'ok' is reached only through health-passed or release-current", () => {
    const into = TRANSITIONS.filter((r) => r.to === 'ok')
      .map((r) => r.on)
      .sort();
    expect(into).toEqual(['health-passed', 'release-current']);
    for (const state of DEVICE_STATES) {
      for (const event of EVENTS) {
        let n: DeviceState | undefined;
        try {
          n = nextState(state, event);
        } catch {
          n = undefined;
        }
        if (n === 'ok' && state !== 'ok') expect(['health-passed', 'release-current'], `${state} --${event}--> ok`).toContain(event);
      }
    }
    // health-passed only from testing: a model is 'ok' after an update only once it passed its check.
    expect(TRANSITIONS.find((r) => r.on === 'health-passed')?.from).toEqual(['testing']);
  });
  it('resting states can always take a new release', () => {
    for (const s of ['idle', 'ok', 'rolled_back', 'rejected', 'failed'] as const) {
      expect(nextState(s, 'release-accepted')).toBe('downloading');
      expect(nextState(s, 'release-refused')).toBe('rejected');
    }
  });
});

describe('reasons', () => {
  const codes = Object.keys(DEVICE_REASONS) as DeviceReason[];
  it('covers every protocol reason and every device-only reason', () => {
    expect(new Set(codes)).toEqual(new Set([...Object.keys(PROTOCOL_REASONS), ...Object.keys(DEVICE_ONLY_REASONS)]));
    expect(codes.length).toBe(Object.keys(PROTOCOL_REASONS).length + Object.keys(DEVICE_ONLY_REASONS).length);
  });
  it.each(codes)('%s has a non-empty message ending in a period or closing parenthesis', (code) => {
    const msg = DEVICE_REASONS[code];
    expect(typeof msg).toBe('string');
    expect(msg.trim().length).toBeGreaterThan(0);
    expect(msg).toBe(msg.trim());
    expect(msg).toMatch(/[.)]$/);
  });
  it('DeviceError and toReason carry the code and message', () => {
    const d = new DeviceError('no-space', '3 MB free');
    expect(toReason(d)).toEqual({ code: 'no-space', message: `${DEVICE_REASONS['no-space']} (3 MB free)` });
    expect(new DeviceError('wrong-base').message).toBe(DEVICE_REASONS['wrong-base']);
    const p = new ProtocolError('expired');
    expect(toReason(p)).toEqual({ code: 'expired', message: PROTOCOL_REASONS.expired });
    const io = toReason(Object.assign(new Error("EACCES: permission denied, open '/d/bitmap'"), { code: 'EACCES', syscall: 'open' }));
    expect(io.code).toBe('storage-error');
    expect(io.message).toContain('EACCES');
    expect(toReason('boom').message).toContain('boom');
  });
  it('toReason reports a bug as a bug: a TypeError is internal-error, never storage-error or a refusal', () => {
    let bug: unknown;
    try {
      void (undefined as unknown as { x: number }).x;
    } catch (e) {
      bug = e;
    }
    expect(bug).toBeInstanceOf(TypeError);
    const r = toReason(bug);
    expect(r.code).toBe('internal-error');
    expect(r.message).toContain(DEVICE_REASONS['internal-error']);
    expect(r.message).toContain((bug as Error).message);
    expect(toReason(new RangeError('Invalid array length')).code).toBe('internal-error');
    expect(toReason('boom').code).toBe('internal-error');
    // Its stack goes to the log (the agent logs errorFields), only for bugs.
    expect(errorFields(bug).stack).toContain('TypeError');
    expect(errorFields(new DeviceError('no-space')).stack).toBeUndefined();
  });
  it('every error class is one FleetError family with a kind: refusals, usage, I/O, internal', () => {
    expect(new ProtocolError('bad-signature')).toBeInstanceOf(FleetError);
    expect(classify(new ProtocolError('bad-signature'))).toBe('refusal');
    expect(classify(new DeviceError('wrong-base'))).toBe('refusal');
    expect(classify(new DeviceError('no-space'))).toBe('io');
    expect(classify(new DeviceError('storage-error'))).toBe('io');
    expect(classify(Object.assign(new Error('x'), { code: 'EIO' }))).toBe('io');
    expect(classify(new TypeError('x'))).toBe('internal');
    expect(new DeviceError('no-space').name).toBe('DeviceError');
  });
});
