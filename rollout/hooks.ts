import { runEventCommand as runCommandFor } from '../util/event-command.ts';
import type { Logger } from '../util/log.ts';
import type { RolloutEvent } from './status.ts';

/** `--on-event CMD` for rollout events (also FLEET_ROLLOUT in the environment). */
export function runEventCommand(command: string, event: RolloutEvent, log: Logger, timeoutMs: number): Promise<number | null> {
  return runCommandFor(command, event, log, { FLEET_ROLLOUT: event.rollout }, timeoutMs);
}
