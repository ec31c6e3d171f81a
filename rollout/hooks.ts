import { spawn } from 'node:child_process';
import type { Logger } from '../util/log.ts';
import type { RolloutEvent } from './status.ts';

/**
 * `--on-event CMD`: runs the operator's command through the shell with the
 * event as JSON in FLEET_EVENT and on stdin (pager, chat webhook, ticket).
 * Its exit code is logged; it never stops the rollout. Killed (its process
 * group) after `timeoutMs`.
 */
export function runEventCommand(command: string, event: RolloutEvent, log: Logger, timeoutMs = 60_000): Promise<number | null> {
  const json = JSON.stringify(event);
  return new Promise((resolve) => {
    const child = spawn(command, {
      shell: true, detached: true, stdio: ['pipe', 'inherit', 'inherit'],
      env: { ...process.env, FLEET_EVENT: json, FLEET_EVENT_TYPE: event.type, FLEET_ROLLOUT: event.rollout },
    });
    const timer = setTimeout(() => {
      log.warn('on-event command timed out; killed', { command, timeoutMs });
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, timeoutMs);
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(json + '\n');
    child.on('error', (e) => {
      clearTimeout(timer);
      log.warn('on-event command could not start', { command, error: e.message });
      resolve(null);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) log.warn('on-event command failed', { command, code, event: event.type });
      resolve(code);
    });
  });
}
