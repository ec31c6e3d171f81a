import { spawn } from 'node:child_process';
import type { Logger } from './log.ts';
import { stripControls, stripControlsDeep } from './text.ts';

/**
 * `--on-event CMD`: runs the operator's command through the shell with the
 * event as JSON in FLEET_EVENT (and FLEET_EVENT_TYPE, plus `env`) and on
 * stdin — a pager, a chat webhook, a ticket. Resolves its exit code (null:
 * could not start, or killed); it never throws. Its process group is killed
 * after `timeoutMs`.
 */
export function runEventCommand(command: string, event: { type: string }, log: Logger, env: Record<string, string> = {}, timeoutMs = 60_000): Promise<number | null> {
  // The event carries strings from the network (device ids, reasons): none reaches the command with a control character.
  const json = JSON.stringify(stripControlsDeep(event));
  const extra = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, stripControls(v)]));
  return new Promise((resolve) => {
    const child = spawn(command, {
      shell: true,
      detached: true,
      stdio: ['pipe', 'inherit', 'inherit'],
      env: { ...process.env, FLEET_EVENT: json, FLEET_EVENT_TYPE: stripControls(event.type), ...extra },
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
