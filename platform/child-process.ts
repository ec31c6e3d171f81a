import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { packageRoot } from './package-root.ts';

/** The `fleet` command of this package (the same from the sources, the build and an installed package). */
export const FLEET_BIN = path.join(packageRoot() ?? process.cwd(), 'bin', 'fleet.js');

/** Stop a child by its PID: SIGTERM, then SIGKILL if it has not exited in time. */
export async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  process.kill(child.pid!, 'SIGTERM');
  const timer = setTimeout(() => child.exitCode === null && child.signalCode === null && process.kill(child.pid!, 'SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** `fleet ARGS` as a child process (this node, this package's bin), its stdout and stderr written to `logPath`. */
export function spawnFleetLogged(args: readonly string[], logPath: string): ChildProcess {
  const logFile = createWriteStream(logPath);
  const child = spawn(process.execPath, [FLEET_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(logFile);
  child.stderr!.pipe(logFile);
  return child;
}
