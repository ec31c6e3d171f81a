import { execFile, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

/*
 * The commands a NetnsLink (simulations/netns-link.ts) runs (ip, tc, nft; no shell), and the
 * housekeeping of its namespaces and processes: listing and deleting namespaces, killing by PID.
 */

const CMD_TIMEOUT_MS = 15_000;

/** Runs a command with an argument array (no shell); rejects with the command and its stderr. */
export function run(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: CMD_TIMEOUT_MS, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const what = [cmd, ...args].join(' ');
        reject(new Error(`command failed: ${what}: ${String(stderr).trim() || err.message}`));
      } else resolve(String(stdout));
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

export function runSync(cmd: string, args: string[]): { ok: boolean; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: CMD_TIMEOUT_MS });
  return { ok: r.status === 0 && !r.error, out: r.stdout ?? '', err: (r.stderr || r.error?.message || '').trim() };
}

export function findBinary(name: string): string | undefined {
  for (const dir of ['/usr/sbin', '/sbin', '/usr/bin', '/bin', ...(process.env.PATH ?? '').split(':')]) {
    if (dir && fs.existsSync(`${dir}/${name}`)) return `${dir}/${name}`;
  }
  return undefined;
}

export function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    if (pid > 0 && pid !== process.pid) process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export async function listNamespaces(): Promise<string[]> {
  const out = await run('ip', ['netns', 'list']);
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((n): n is string => !!n);
}

/** PIDs of processes living in a namespace (ours: the namespace is ours). */
async function nsPids(ns: string): Promise<number[]> {
  try {
    const out = await run('ip', ['netns', 'pids', ns]);
    return out
      .split(/\s+/)
      .filter(Boolean)
      .map(Number)
      .filter((p) => p > 0 && p !== process.pid);
  } catch {
    return [];
  }
}

/** Kills what lives in a namespace and deletes it (gone already is fine). */
export async function deleteNamespace(ns: string): Promise<void> {
  for (const pid of await nsPids(ns)) killPid(pid, 'SIGKILL');
  try {
    await run('ip', ['netns', 'del', ns]);
  } catch (e) {
    if ((await listNamespaces()).includes(ns)) throw e;
  }
}
