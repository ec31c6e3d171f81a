import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { inWindow, loadPayloads, parsePlan, parsePlanText, parseWindow, planDigest, PlanError, type RolloutPlan } from '../../rollout/plan.ts';
import { synthesizeModel, synthesizeUpdate } from '../../publisher/synth.ts';
import { SMALL_LAYERS } from '../support/harness.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';

const wave = (o: Record<string, unknown> = {}): Record<string, unknown> => ({
  group: 'canary',
  successThreshold: 1,
  failureThreshold: { count: 1 },
  soakSeconds: 60,
  timeoutSeconds: 600,
  offline: 'block',
  ...o,
});
const plan = (o: Record<string, unknown> = {}): Record<string, unknown> => ({ id: 'r1', model: 'm', updates: ['u.cbor'], waves: [wave()], ...o });
const bad = (v: unknown, msg: RegExp): void => {
  expect(() => parsePlan(v)).toThrow(PlanError);
  expect(() => parsePlan(v)).toThrow(msg);
};

describe('plan validation', () => {
  it('accepts a full plan and keeps every field', () => {
    const p = parsePlan(
      plan({
        full: 't.safetensors',
        chunkSize: 4096,
        ttlSeconds: 3600,
        waves: [wave({ window: '22:00-04:00' }), wave({ group: 'line', successThreshold: 0.9, failureThreshold: { share: 0.1, count: 3 }, offline: 'skip' })],
      }),
    );
    expect(p.waves).toHaveLength(2);
    expect(p.waves[0].window).toBe('22:00-04:00');
    expect(p.waves[1].failureThreshold).toEqual({ share: 0.1, count: 3 });
    expect(p.chunkSize).toBe(4096);
  });
  it('refuses a plan that is not an object, or not JSON', () => {
    bad([], /plan: must be a JSON object/);
    expect(() => parsePlanText('{ id: 1', 'p.json')).toThrow(/p.json is not valid JSON/);
  });
  it('refuses unknown fields, naming them (typos must not become defaults)', () => {
    bad(plan({ wave: [] }), /^wave: unknown field/);
    bad(plan({ waves: [wave({ soakSecond: 5 })] }), /waves\[0\]\.soakSecond: unknown field/);
    bad(plan({ waves: [wave({ failureThreshold: { counts: 1 } })] }), /waves\[0\]\.failureThreshold\.counts: unknown field/);
  });
  it('refuses ids, models and groups that are not topic identifiers', () => {
    bad(plan({ id: 'a/b' }), /^id: must be 1-128 characters/);
    bad(plan({ model: '' }), /^model:/);
    bad(plan({ waves: [wave({ group: 'line+1' })] }), /waves\[0\]\.group:/);
  });
  it('needs updates or a full model; updates must be paths', () => {
    bad(plan({ updates: [] }), /updates: give at least one update file/);
    bad(plan({ updates: 'u.cbor' }), /updates: must be an array/);
    bad(plan({ updates: ['a', 3] }), /updates\[1\]: must be a non-empty string/);
    expect(parsePlan(plan({ updates: undefined, full: 'm.safetensors' })).full).toBe('m.safetensors');
  });
  it('needs at least one wave, and each group only once', () => {
    bad(plan({ waves: [] }), /waves: must be a non-empty array/);
    bad(plan({ waves: [wave(), wave()] }), /waves\[1\]\.group: "canary" is already wave 0/);
  });
  it('successThreshold is a share above 0 and at most 1', () => {
    bad(plan({ waves: [wave({ successThreshold: 1.5 })] }), /waves\[0\]\.successThreshold: must be a number above 0 and to 1 \(got 1.5\)/);
    bad(plan({ waves: [wave({ successThreshold: 0 })] }), /successThreshold/);
    bad(plan({ waves: [wave({ successThreshold: '1' })] }), /successThreshold.*got "1"/);
  });
  it('failureThreshold needs count (integer from 1) and/or share (0..1]', () => {
    bad(plan({ waves: [wave({ failureThreshold: {} })] }), /failureThreshold: must give count, share or both/);
    bad(plan({ waves: [wave({ failureThreshold: { count: 0 } })] }), /failureThreshold\.count: must be an integer from 1/);
    bad(plan({ waves: [wave({ failureThreshold: { count: 1.5 } })] }), /failureThreshold\.count/);
    bad(plan({ waves: [wave({ failureThreshold: { share: 2 } })] }), /failureThreshold\.share/);
    bad(plan({ waves: [wave({ failureThreshold: 1 })] }), /failureThreshold: must be an object/);
  });
  it('soak from 0 seconds, timeout above 0, both numbers', () => {
    expect(parsePlan(plan({ waves: [wave({ soakSeconds: 0 })] })).waves[0].soakSeconds).toBe(0);
    bad(plan({ waves: [wave({ soakSeconds: -1 })] }), /waves\[0\]\.soakSeconds: must be a number of seconds from 0/);
    bad(plan({ waves: [wave({ timeoutSeconds: 0 })] }), /waves\[0\]\.timeoutSeconds: must be a number of seconds above 0/);
    bad(plan({ waves: [wave({ timeoutSeconds: undefined })] }), /timeoutSeconds.*got nothing/);
  });
  it('offline is block, skip or fail', () => {
    bad(plan({ waves: [wave({ offline: 'ignore' })] }), /waves\[0\]\.offline: must be one of block, skip, fail \(got "ignore"\)/);
    bad(plan({ waves: [wave({ offline: undefined })] }), /offline/);
  });
  it('window is HH:MM-HH:MM and not empty', () => {
    bad(plan({ waves: [wave({ window: '25:00-02:00' })] }), /waves\[0\]\.window: window "25:00-02:00" must be HH:MM-HH:MM/);
    bad(plan({ waves: [wave({ window: '02:00-02:00' })] }), /waves\[0\]\.window: .*empty/);
    bad(plan({ waves: [wave({ window: 2 })] }), /waves\[0\]\.window: must be a string/);
  });
  it('chunkSize and ttlSeconds are checked when given', () => {
    bad(plan({ chunkSize: 100 }), /chunkSize: must be an integer from 1024/);
    bad(plan({ ttlSeconds: 5 }), /ttlSeconds/);
  });
});

describe('windows', () => {
  const at = (h: number, m: number): number => new Date(2025, 0, 15, h, m).getTime();
  it('a window inside one day', () => {
    expect(parseWindow('01:30-05:00')).toEqual({ start: 90, end: 300 });
    expect(inWindow('01:30-05:00', at(1, 30))).toBe(true);
    expect(inWindow('01:30-05:00', at(4, 59))).toBe(true);
    expect(inWindow('01:30-05:00', at(5, 0))).toBe(false);
    expect(inWindow('01:30-05:00', at(12, 0))).toBe(false);
  });
  it('a window past midnight', () => {
    expect(inWindow('22:00-04:00', at(23, 0))).toBe(true);
    expect(inWindow('22:00-04:00', at(3, 59))).toBe(true);
    expect(inWindow('22:00-04:00', at(4, 0))).toBe(false);
    expect(inWindow('22:00-04:00', at(21, 59))).toBe(false);
  });
  it('no window: always', () => {
    expect(inWindow(undefined, at(12, 0))).toBe(true);
  });
});

describe('plan files', () => {
  it('the digest ignores key order and changes with content', () => {
    const a = parsePlan(plan());
    const b = parsePlan(JSON.parse(JSON.stringify({ waves: [wave()], updates: ['u.cbor'], model: 'm', id: 'r1' })) as unknown);
    expect(planDigest(a)).toBe(planDigest(b));
    expect(planDigest(a)).not.toBe(planDigest({ ...a, waves: [{ ...a.waves[0], soakSeconds: 61 }] } as RolloutPlan));
  });
  it('loads payloads relative to the plan and computes the target; a missing file names the field', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-plan-'));
    try {
      const u = synthesizeUpdate(synthesizeModel(3, SMALL_LAYERS), 2, 4);
      await fs.writeFile(path.join(dir, 'u.cbor'), encodeUpdateFile(u.payload));
      await fs.writeFile(path.join(dir, 't.safetensors'), u.target);
      const p = await loadPayloads(parsePlan(plan({ full: 't.safetensors' })), dir);
      expect(p.target).toBe(u.targetDigest);
      expect(p.fullModel?.byteLength).toBe(u.target.byteLength);
      await expect(loadPayloads(parsePlan(plan({ updates: ['missing.cbor'] })), dir)).rejects.toThrow(/updates\[0\]: cannot read .*missing.cbor: ENOENT/);
      await fs.writeFile(path.join(dir, 'other.safetensors'), synthesizeModel(9, SMALL_LAYERS));
      await expect(loadPayloads(parsePlan(plan({ full: 'other.safetensors' })), dir)).rejects.toThrow(/full: the full model's digest/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
