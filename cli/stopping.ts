import type { Command } from 'commander';
import { DEFAULT_STOP_TIMEOUT_MS, GracefulStop, type GracefulStopOptions } from '../util/graceful-stop.ts';
import type { Logger } from '../util/log.ts';

/** The bound of a graceful stop from the global `--stop-timeout` (seconds), ms. */
export function stopTimeoutMs(program: Command): number {
  const s = (program.opts() as { stopTimeout?: number }).stopTimeout;
  return s === undefined ? DEFAULT_STOP_TIMEOUT_MS : s * 1000;
}

/** Every long-running command's signal handling (util/graceful-stop.ts), bounded by `--stop-timeout`. */
export function commandStop(program: Command, log: Logger, o: Partial<GracefulStopOptions> = {}): GracefulStop {
  return new GracefulStop({ timeoutMs: stopTimeoutMs(program), log, ...o });
}
