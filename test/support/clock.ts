/** The manual clock of the unit tests: time moves only when the test says so. */
import { systemClock, type Clock } from '../../platform/clock.ts';

/** A clock the test moves by hand. */
export class ManualClock implements Clock {
  private timers: Array<{ at: number; fn: () => void; id: number }> = [];
  private next = 1;
  constructor(public t = Date.UTC(2025, 0, 15, 12, 0)) {}
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.timers.push({ at: this.t + ms, fn, id });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== h);
  }
  /** Moves time on, firing due timers in order, letting queued promises run after each. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const due = this.timers[0];
      if (!due || due.at > end) break;
      this.timers.shift();
      this.t = due.at;
      due.fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

/** Lets queued promises and microtasks run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 30; i++) await new Promise((r) => setImmediate(r));
}

/**
 * The system clock, with real timers, that a test can move forward at once: a wait for a timeout
 * (a rollout wave's, say) without waiting it out, once the test has seen what comes before it.
 */
export class JumpClock implements Clock {
  private offset = 0;
  now(): number {
    return Date.now() + this.offset;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    return systemClock.setTimeout(fn, ms);
  }
  clearTimeout(h: unknown): void {
    systemClock.clearTimeout(h);
  }
  /** Moves the time on by `ms` from now on. */
  jump(ms: number): void {
    this.offset += ms;
  }
}
