/**
 * Waiting in tests: for an event or a condition, never for a fixed time.
 *
 * - `until(probe, { what })` polls until the probe yields a value (or `accept` takes it) and
 *   returns that value; on timeout it throws naming what it waited for and the last value seen.
 * - `nextEvent(emitter, name, { what })` resolves on the first matching event.
 * - `expectNoEventWithin(ms, probe, what)` is the one bounded wait left: it asserts that something
 *   does NOT happen for `ms` (checked throughout, failing as soon as it does).
 */
import type { EventEmitter } from 'node:events';

export interface UntilOptions<T> {
  /** What the test waits for, as the failure message should name it. */
  what: string;
  /** 30 s unless said: generous, since two loaded cores run the suite. */
  timeoutMs?: number;
  /** How often to ask the probe (50 ms unless said). */
  intervalMs?: number;
  /** Which value ends the wait; by default any but `undefined`, `null` and `false`. */
  accept?: (v: T) => boolean;
  /** More to show when it times out (a child's output, say). */
  context?: () => string;
}

const show = (v: unknown): string => {
  let s: string;
  try {
    s = typeof v === 'string' ? JSON.stringify(v) : (JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? String(x) : x)) ?? String(v));
  } catch {
    s = String(v);
  }
  return s.length > 2000 ? `${s.slice(0, 2000)}… (${s.length} chars)` : s;
};

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const defaultAccept = (v: unknown): boolean => v !== undefined && v !== null && v !== false;

/** Polls `probe` until it yields an accepted value, and returns it. */
export async function until<T>(probe: () => T | Promise<T>, o: UntilOptions<T>): Promise<Exclude<T, undefined | null | false>> {
  const timeoutMs = o.timeoutMs ?? 30_000;
  const accept = o.accept ?? defaultAccept;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (accept(v)) return v as Exclude<T, undefined | null | false>;
    if (Date.now() > deadline) {
      const extra = o.context ? `; ${o.context()}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${o.what}; last seen: ${show(v)}${extra}`);
    }
    await pause(o.intervalMs ?? 50);
  }
}

/** The first `name` event of `emitter` whose arguments pass `filter`. */
export function nextEvent<A extends unknown[]>(emitter: EventEmitter, name: string, o: { what: string; timeoutMs?: number; filter?: (...args: A) => boolean }): Promise<A> {
  const timeoutMs = o.timeoutMs ?? 30_000;
  return new Promise<A>((resolve, reject) => {
    const on = (...args: unknown[]): void => {
      if (o.filter && !o.filter(...(args as A))) return;
      clearTimeout(timer);
      emitter.off(name, on);
      resolve(args as A);
    };
    const timer = setTimeout(() => {
      emitter.off(name, on);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${o.what} (event '${name}')`));
    }, timeoutMs);
    emitter.on(name, on);
  });
}

/**
 * Asserts that `happened` stays falsy for `ms`: the bounded wait of a test that something does
 * NOT happen (no second message, no reconnect). Fails as soon as it happens, naming what it saw.
 */
export async function expectNoEventWithin<T>(ms: number, happened: () => T | Promise<T>, what: string, intervalMs = 50): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await happened();
    if (defaultAccept(v)) throw new Error(`expected no ${what} within ${ms} ms, but saw: ${show(v)}`);
    const left = end - Date.now();
    if (left <= 0) return;
    await pause(Math.min(intervalMs, left));
  }
}

/**
 * A window that is itself part of an assertion: what arrives during it is all the test
 * will see (a fresh subscriber's retained messages, say, where "none" is a possible answer).
 * Never a way to let something happen: wait for that with `until` or `nextEvent`.
 */
export function observeFor(ms: number, _what: string): Promise<void> {
  return pause(ms);
}
