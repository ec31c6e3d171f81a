import os from 'node:os';
import { withDeadline } from './deadline.ts';
import type { Logger } from './log.ts';

/**
 * How every long-running command stops (docs/safety.md, "Stopping"): the
 * first SIGINT or SIGTERM runs the command's named stop steps within one
 * bound, a step still running at the bound is abandoned, one log line names
 * what was left undone, and the process exits; a second signal exits at once.
 */

/** Default bound of a graceful stop, ms (`--stop-timeout`). */
export const DEFAULT_STOP_TIMEOUT_MS = 5000;

/** Exit code when required stop work was abandoned or failed (unless the command's own code is already non-zero). */
export const EXIT_STOP_ABANDONED = 1;

export interface StopStep {
  /** Named in the log line when it is left undone. */
  name: string;
  run: () => Promise<unknown> | void;
  /** Work whose loss is harmless (a last presence message, a clean TCP close): leaving it undone still exits 0. */
  optional?: boolean;
  /** A cap of its own, ms, within what is left of the overall bound. */
  timeoutMs?: number;
}

export interface UndoneStep {
  step: string;
  optional: boolean;
  /** `timeout`: still running at its deadline; `failed`: threw; `skipped`: no time was left to start it. */
  why: 'timeout' | 'failed' | 'skipped';
  error?: string;
}

export interface StopOutcome {
  undone: UndoneStep[];
  /** True when nothing required was left undone. */
  ok: boolean;
  ms: number;
}

export interface GracefulStopOptions {
  /** The bound of the whole graceful stop, ms. */
  timeoutMs: number;
  log: Logger;
  /** Exit code of a complete stop caused by a signal (default 0; `rollout start` uses 130). */
  signalExitCode?: number;
  /** Signals handled (default SIGINT and SIGTERM); [] installs none (a caller that only wants bounded steps). */
  signals?: NodeJS.Signals[];
  /** Called on the first signal before the steps run (a message for the person at the terminal). */
  onSignal?: (signal: NodeJS.Signals) => void;
  /** Default process.exit. */
  exit?: (code: number) => void;
}

/** Stops begun by a signal in this process and not yet ended by its exit. */
let signalStops = 0;

/**
 * True while a stop that a signal began is running: it owns the exit (its code,
 * its log line). What fails meanwhile because the command is being taken down (a
 * subscribe whose connection is closing) is part of that stop, not a failure of
 * its own that may exit first with another code.
 */
export function signalStopInProgress(): boolean {
  return signalStops > 0;
}

export class GracefulStop {
  private readonly steps: StopStep[] = [];
  private running: Promise<StopOutcome> | undefined;
  private exiting = false;
  private readonly handlers: Array<[NodeJS.Signals, () => void]> = [];
  private current: string[] = [];

  constructor(private readonly o: GracefulStopOptions) {
    for (const sig of o.signals ?? ['SIGINT', 'SIGTERM']) {
      const h = (): void => this.onSignal(sig);
      process.on(sig, h);
      this.handlers.push([sig, h]);
    }
  }

  /** True once the stop has begun (by a signal or by the command). */
  get stopping(): boolean {
    return this.running !== undefined;
  }

  /** The bound of the whole stop, ms. */
  get timeoutMs(): number {
    return this.o.timeoutMs;
  }

  /** Adds a step; steps run last-added first (like deferred clean-ups: what started last stops first). */
  add(step: StopStep): this {
    this.steps.push(step);
    return this;
  }

  /** Runs the steps once within the bound (later calls share the first run) and logs what was left undone. */
  run(reason: string): Promise<StopOutcome> {
    this.running ??= this.runSteps(reason);
    return this.running;
  }

  /** `run`, then exit with `code`, or EXIT_STOP_ABANDONED when required work was left undone and `code` is 0. */
  async stop(reason: string, code = 0): Promise<void> {
    const r = await this.run(reason);
    this.exit(r.ok || code !== 0 ? code : EXIT_STOP_ABANDONED);
  }

  /** Removes the signal handlers (in-process users that do not exit). */
  dispose(): void {
    for (const [sig, h] of this.handlers.splice(0)) process.off(sig, h);
  }

  private onSignal(sig: NodeJS.Signals): void {
    if (this.running) {
      // The second signal (or a signal after the command began stopping by itself): exit at once.
      const left = this.current.length ? this.current : ['nothing'];
      this.o.log.warn('second signal: exiting at once', { signal: sig, undone: left });
      this.exit(128 + (os.constants.signals[sig] ?? os.constants.signals.SIGTERM));
      return;
    }
    this.o.log.info('stopping', { signal: sig, timeoutMs: this.o.timeoutMs });
    this.o.onSignal?.(sig);
    signalStops++;
    void this.stop(`signal ${sig}`, this.o.signalExitCode ?? 0).finally(() => signalStops--);
  }

  private exit(code: number): void {
    if (this.exiting) return;
    this.exiting = true;
    (this.o.exit ?? process.exit)(code);
  }

  private async runSteps(reason: string): Promise<StopOutcome> {
    const t0 = Date.now();
    const deadline = t0 + this.o.timeoutMs;
    const undone: UndoneStep[] = [];
    const order = [...this.steps].reverse();
    this.current = order.map((s) => s.name);
    // Set when a step ran out the overall bound: a timer may fire a millisecond before the clock
    // reads the deadline, and the steps after it are skipped all the same, not given that millisecond.
    let boundReached = false;
    for (const s of order) {
      const left = deadline - Date.now();
      if (boundReached || left <= 0) {
        undone.push({ step: s.name, optional: s.optional === true, why: 'skipped' });
      } else {
        try {
          const cap = Math.min(left, s.timeoutMs ?? left);
          const r = await withDeadline(Promise.resolve().then(s.run), cap);
          if (r === 'timeout') {
            undone.push({ step: s.name, optional: s.optional === true, why: 'timeout' });
            boundReached = cap === left;
          }
        } catch (e) {
          undone.push({ step: s.name, optional: s.optional === true, why: 'failed', error: String(e) });
        }
      }
      this.current = this.current.slice(1);
    }
    const ms = Date.now() - t0;
    const ok = undone.every((u) => u.optional);
    if (undone.length === 0) this.o.log.info('stopped', { reason, ms });
    else {
      const fields = { reason, ms, timeoutMs: this.o.timeoutMs, undone: undone.map((u) => `${u.step} (${u.why}${u.optional ? ', optional' : ''}${u.error ? `: ${u.error}` : ''})`) };
      if (ok) this.o.log.warn('stopped; optional work left undone', fields);
      else this.o.log.error('stop abandoned: required work left undone', fields);
    }
    return { undone, ok, ms };
  }
}
