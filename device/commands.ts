import { spawn } from 'node:child_process';

export interface CommandResult {
  ok: boolean;
  code: number | null;
  timedOut: boolean;
  /** The last lines of what it printed (stdout and stderr together). */
  tail: string;
}

const TAIL_LINES = 10;

/**
 * Run an operator's command (through the shell) with extra environment and
 * a timeout. On timeout the whole process group is killed. Exit 0 is success.
 */
export function runCommand(command: string, env: Record<string, string>, timeoutMs: number): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(command, { shell: true, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    const keep = (d: Buffer): void => {
      out = (out + d.toString()).slice(-8192);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, timeoutMs);
    const done = (code: number | null): void => {
      clearTimeout(timer);
      const tail = out.trimEnd().split('\n').slice(-TAIL_LINES).join('\n');
      resolve({ ok: !timedOut && code === 0, code, timedOut, tail });
    };
    child.on('error', (e) => {
      out += `\n${e.message}`;
      done(null);
    });
    child.on('close', (code) => done(code));
  });
}

/** A one-line description of a failed command, with its last output lines. */
export function describeFailure(what: string, r: CommandResult, timeoutMs: number): string {
  const head = r.timedOut ? `${what} did not finish within ${Math.round(timeoutMs / 1000)} s` : `${what} exited with ${r.code}`;
  return r.tail ? `${head}; last output:\n${r.tail}` : head;
}
