/**
 * A process assembled from named steps, as Aedes builds its connect flow from
 * a list of named functions (lib/handlers/connect.js): each step starts one
 * part and knows how to stop it. Steps start in order; when one fails, the
 * ones already started are stopped in reverse (the undo), and the failure is
 * thrown on. Stopping a running process stops them all in reverse, once.
 */
export interface Step<C> {
  /** What the step starts, in logs ("persistence", "tcp listener", ...). */
  readonly name: string;
  /** Run only when this says so (default: always). */
  readonly when?: (ctx: C) => boolean;
  /** Start the part and record it on the context. */
  start(ctx: C): Promise<void> | void;
  /** Stop what `start` started; also the undo when a later step fails. */
  stop?(ctx: C): Promise<void> | void;
  /** Its stop may be left undone harmlessly (a last presence message, a clean TCP close). */
  readonly optional?: boolean;
  /** A bound of the stop's own, ms (within a process's stop bound). */
  readonly stopTimeoutMs?: number;
}

/** A stack of named stop work, run last added first (util/graceful-stop.ts's GracefulStop is one). */
export interface StopStack {
  add(step: { name: string; run: () => Promise<unknown> | void; optional?: boolean; timeoutMs?: number }): unknown;
}

/** Where a step's failure to stop is reported (the other steps still stop). */
export interface StepLog {
  warn(message: string, fields?: Record<string, unknown>): void;
}

/** A started list of steps: `stop()` stops them in reverse, once, whoever calls it. */
export interface Started {
  readonly names: readonly string[];
  stop(): Promise<void>;
}

/** Start `steps` in order on `ctx`; on a failure undo those started and rethrow. */
export async function startSteps<C>(steps: readonly Step<C>[], ctx: C, log?: StepLog): Promise<Started> {
  const started: Step<C>[] = [];
  for (const step of steps) {
    if (step.when && !step.when(ctx)) continue;
    try {
      await step.start(ctx);
    } catch (e) {
      // The start's failure is the one to report; the undo's own failures are logged.
      await stopAll(started, ctx, log, false);
      throw e;
    }
    started.push(step);
  }
  let stopping: Promise<void> | undefined;
  return { names: started.map((s) => s.name), stop: () => (stopping ??= stopAll(started, ctx, log)) };
}

/**
 * Stop steps in reverse order. Every one is tried: a step that fails to stop is
 * reported, and (with `rethrow`) the first such failure is thrown once all have been tried.
 */
async function stopAll<C>(started: readonly Step<C>[], ctx: C, log?: StepLog, rethrow = true): Promise<void> {
  let first: { error: unknown } | undefined;
  for (const step of [...started].reverse()) {
    try {
      await step.stop?.(ctx);
    } catch (e) {
      log?.warn('a step failed to stop', { step: step.name, error: e instanceof Error ? e.message : String(e) });
      first ??= { error: e };
    }
  }
  if (first && rethrow) throw first.error;
}

/**
 * Start `steps` in order, handing each step's stop to `stack` as soon as the
 * step has started: for a process whose stop is driven by signals, so that a
 * signal during a later (long) start still stops what has started. The stack
 * owns the undo: it runs the stops when the process stops, whatever the reason.
 */
export async function startStepsOnto<C>(steps: readonly Step<C>[], ctx: C, stack: StopStack): Promise<void> {
  for (const step of steps) {
    if (step.when && !step.when(ctx)) continue;
    await step.start(ctx);
    const stop = step.stop;
    if (stop) stack.add({ name: step.name, run: () => stop.call(step, ctx), optional: step.optional, timeoutMs: step.stopTimeoutMs });
  }
}
