import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { charge, decide, formatWindow, inWindow, localMinutes, monthKey, nextMonth, nextWindowOpen, parseBudget, parseWindow, PolicyError, used } from '../../gateway/policy.ts';

/** Local wall-clock time (the policy reads local time, like the operator's --window). */
const at = (y: number, mo: number, d: number, h: number, mi = 0): number => new Date(y, mo - 1, d, h, mi).getTime();

describe('download window', () => {
  it('parses HH:MM-HH:MM and refuses nonsense', () => {
    expect(parseWindow('01:00-05:30')).toEqual({ start: 60, end: 330 });
    expect(parseWindow('22:00-6:00')).toEqual({ start: 1320, end: 360 });
    expect(formatWindow(parseWindow('22:00-6:00'))).toBe('22:00-06:00');
    for (const bad of ['', '01:00', '25:00-02:00', '01:60-02:00', '02:00-02:00', 'a-b', '01:00-02:00-03:00']) {
      expect(() => parseWindow(bad), bad).toThrow(PolicyError);
    }
  });

  it('is open from start (inclusive) to end (exclusive), also across midnight', () => {
    const w = parseWindow('02:00-03:00');
    expect(inWindow(w, 119)).toBe(false);
    expect(inWindow(w, 120)).toBe(true);
    expect(inWindow(w, 179)).toBe(true);
    expect(inWindow(w, 180)).toBe(false);
    const night = parseWindow('22:00-06:00');
    expect(inWindow(night, 23 * 60)).toBe(true);
    expect(inWindow(night, 5 * 60 + 59)).toBe(true);
    expect(inWindow(night, 6 * 60)).toBe(false);
    expect(inWindow(night, 12 * 60)).toBe(false);
  });

  it('says when it opens next: later today or tomorrow', () => {
    const w = parseWindow('02:00-03:00');
    expect(nextWindowOpen(w, at(2026, 3, 10, 1, 15))).toBe(at(2026, 3, 10, 2, 0));
    expect(nextWindowOpen(w, at(2026, 3, 10, 4, 0))).toBe(at(2026, 3, 11, 2, 0));
    expect(nextWindowOpen(w, at(2026, 12, 31, 4, 0))).toBe(at(2027, 1, 1, 2, 0));
  });

  it('property: outside the window, the next opening is within a day and inside the window', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1439 }), fc.integer({ min: 0, max: 1439 }), fc.integer({ min: 0, max: 365 * 24 * 60 }), (s, e, off) => {
        fc.pre(s !== e);
        const w = { start: s, end: e };
        const now = at(2026, 1, 1, 0) + off * 60_000;
        if (inWindow(w, localMinutes(now))) return;
        const next = nextWindowOpen(w, now);
        expect(next).toBeGreaterThan(now);
        expect(next - now).toBeLessThanOrEqual(25 * 3600_000);
        expect(inWindow(w, localMinutes(next))).toBe(true);
      }),
    );
  });
});

describe('budget', () => {
  it('parses megabytes per month', () => {
    expect(parseBudget('50')).toBe(50_000_000);
    expect(parseBudget('0.5')).toBe(500_000);
    for (const bad of ['0', '-1', 'x', '']) expect(() => parseBudget(bad), bad).toThrow(PolicyError);
  });

  it('charges each local calendar month separately and keeps twelve', () => {
    let l = charge({}, at(2026, 1, 31, 23, 59), 100);
    l = charge(l, at(2026, 2, 1, 0, 1), 7);
    l = charge(l, at(2026, 2, 15, 12), 3);
    expect(used(l, at(2026, 1, 2, 0))).toBe(100);
    expect(used(l, at(2026, 2, 28, 0))).toBe(10);
    expect(used(l, at(2026, 3, 1, 0))).toBe(0);
    expect(monthKey(at(2026, 2, 1, 0))).toBe('2026-02');
    for (let m = 3; m <= 20; m++) l = charge(l, at(2026, m, 1, 12), 1);
    expect(Object.keys(l)).toHaveLength(12);
    expect(nextMonth(at(2026, 12, 5, 10))).toBe(at(2027, 1, 1, 0));
  });
});

describe('decide', () => {
  const base = { usedBytes: 0, upstreamConnected: true };
  it('goes when the window is open, the budget left and the link up', () => {
    expect(decide({ ...base, now: at(2026, 5, 1, 2, 30), window: parseWindow('02:00-03:00'), budgetBytes: 10 })).toEqual({ go: true });
    expect(decide({ ...base, now: at(2026, 5, 1, 12) })).toEqual({ go: true });
  });

  it('waits for the window, says why and until when', () => {
    const d = decide({ ...base, now: at(2026, 5, 1, 1), window: parseWindow('02:00-03:00') });
    expect(d.go).toBe(false);
    if (d.go) return;
    expect(d.reason).toBe('window-closed');
    expect(d.until).toBe(at(2026, 5, 1, 2));
    expect(d.message).toContain('02:00-03:00');
  });

  it('waits for the next month when the budget is used', () => {
    const d = decide({ ...base, now: at(2026, 5, 20, 12), budgetBytes: 1000, usedBytes: 1000 });
    expect(d).toMatchObject({ go: false, reason: 'budget-exhausted', until: at(2026, 6, 1, 0) });
    expect(decide({ ...base, now: at(2026, 5, 20, 12), budgetBytes: 1000, usedBytes: 999 })).toEqual({ go: true });
  });

  it('waits for the link last, and names the window before the budget', () => {
    expect(decide({ ...base, now: at(2026, 5, 1, 12), upstreamConnected: false })).toMatchObject({ go: false, reason: 'upstream-down', until: null });
    expect(decide({ now: at(2026, 5, 1, 1), window: parseWindow('02:00-03:00'), budgetBytes: 1, usedBytes: 5, upstreamConnected: false })).toMatchObject({ reason: 'window-closed' });
    expect(decide({ now: at(2026, 5, 1, 12), budgetBytes: 1, usedBytes: 5, upstreamConnected: false })).toMatchObject({ reason: 'budget-exhausted' });
  });
});
