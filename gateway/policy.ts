/**
 * When may the gateway download from upstream? Pure: a function of the time
 * (as the local wall clock reads it), the download windows and the month's
 * budget. No I/O; the clock is the caller's.
 */
import { FleetError } from '../platform/errors.ts';

/** Why upstream downloads wait (none: they may run). */
export type WaitReason = 'window-closed' | 'budget-exhausted' | 'upstream-down';

/** A daily window in local time, minutes since midnight; `end < start` wraps past midnight. */
export interface DownloadWindow {
  start: number;
  end: number;
}

/** A gateway window or budget option that does not parse: the caller's to fix. */
export class PolicyError extends FleetError<'bad-window' | 'bad-budget'> {
  override readonly name = 'PolicyError';
  constructor(code: 'bad-window' | 'bad-budget', message: string) {
    super('usage', code, message);
  }
}

const HHMM = /^([01]?\d|2[0-3]):([0-5]\d)$/;

function parseClock(s: string, whole: string): number {
  const m = HHMM.exec(s.trim());
  if (!m) throw new PolicyError('bad-window', `window "${whole}": "${s}" is not HH:MM (00:00 to 23:59)`);
  return Number(m[1]) * 60 + Number(m[2]);
}

/** `HH:MM-HH:MM`, e.g. `01:00-05:30` or `22:00-06:00` (across midnight). Equal ends are refused. */
export function parseWindow(s: string): DownloadWindow {
  const parts = s.split('-');
  if (parts.length !== 2) throw new PolicyError('bad-window', `window "${s}" must be HH:MM-HH:MM`);
  const start = parseClock(parts[0], s);
  const end = parseClock(parts[1], s);
  if (start === end) throw new PolicyError('bad-window', `window "${s}" is empty (start equals end); leave --window out to download at any time`);
  return { start, end };
}

export function formatWindow(w: DownloadWindow): string {
  const f = (m: number): string => `${String(Math.floor(m / 60)).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;
  return `${f(w.start)}-${f(w.end)}`;
}

/** Megabytes (10^6 bytes, fractions allowed) per calendar month → bytes. */
export function parseBudget(s: string): number {
  const mb = Number(s);
  if (!Number.isFinite(mb) || mb <= 0) throw new PolicyError('bad-budget', `budget "${s}" must be a positive number of megabytes per month`);
  return Math.round(mb * 1_000_000);
}

/** Minutes since local midnight. */
export function localMinutes(now: number): number {
  const d = new Date(now);
  return d.getHours() * 60 + d.getMinutes();
}

/** The local calendar month, `YYYY-MM`: the budget's accounting period. */
export function monthKey(now: number): string {
  const d = new Date(now);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}`;
}

export function inWindow(w: DownloadWindow, minutes: number): boolean {
  return w.start < w.end ? minutes >= w.start && minutes < w.end : minutes >= w.start || minutes < w.end;
}

/** The next moment (ms, local time) the window opens, from `now` (which is outside it). */
export function nextWindowOpen(w: DownloadWindow, now: number): number {
  const d = new Date(now);
  const open = new Date(d.getFullYear(), d.getMonth(), d.getDate(), Math.floor(w.start / 60), w.start % 60, 0, 0).getTime();
  return open > now ? open : new Date(d.getFullYear(), d.getMonth(), d.getDate() + 1, Math.floor(w.start / 60), w.start % 60, 0, 0).getTime();
}

/** The first moment of the next local calendar month. */
export function nextMonth(now: number): number {
  const d = new Date(now);
  return new Date(d.getFullYear(), d.getMonth() + 1, 1, 0, 0, 0, 0).getTime();
}

export interface PolicyInput {
  now: number;
  window?: DownloadWindow;
  /** Bytes per calendar month over the upstream link; undefined = no limit. */
  budgetBytes?: number;
  /** Bytes used in `now`'s month so far. */
  usedBytes: number;
  upstreamConnected: boolean;
}

export type PolicyDecision = { go: true } | { go: false; reason: WaitReason; until: number | null; message: string };

/**
 * Whether upstream downloads may run now, and if not why and until when
 * (null: until the link returns). A closed window is said first (it ends by
 * itself), then an exhausted budget, then a link that is down.
 */
export function decide(p: PolicyInput): PolicyDecision {
  if (p.window && !inWindow(p.window, localMinutes(p.now))) {
    const until = nextWindowOpen(p.window, p.now);
    return { go: false, reason: 'window-closed', until, message: `outside the download window ${formatWindow(p.window)} (local time); resumes at ${new Date(until).toString()}` };
  }
  if (p.budgetBytes !== undefined && p.usedBytes >= p.budgetBytes) {
    const until = nextMonth(p.now);
    return {
      go: false,
      reason: 'budget-exhausted',
      until,
      message: `monthly budget used: ${p.usedBytes} of ${p.budgetBytes} bytes in ${monthKey(p.now)}; resumes at ${new Date(until).toString()} or with a larger --budget`,
    };
  }
  if (!p.upstreamConnected) return { go: false, reason: 'upstream-down', until: null, message: 'the upstream broker is unreachable; serving what the gateway holds and queueing statuses' };
  return { go: true };
}

/** Budget accounting: bytes per calendar month (kept as a small JSON map on disk by the caller). */
export type BudgetLedger = Record<string, number>;

/** Add `bytes` to `now`'s month; keeps the last 12 months. Returns a new ledger. */
export function charge(ledger: BudgetLedger, now: number, bytes: number): BudgetLedger {
  const key = monthKey(now);
  const next: BudgetLedger = { ...ledger, [key]: (ledger[key] ?? 0) + Math.max(0, bytes) };
  const keys = Object.keys(next).sort();
  for (const k of keys.slice(0, Math.max(0, keys.length - 12))) delete next[k];
  return next;
}

export function used(ledger: BudgetLedger, now: number): number {
  return ledger[monthKey(now)] ?? 0;
}
