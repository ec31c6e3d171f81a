import { FleetError, ignoreBecause, IoError } from '../platform/errors.ts';
import { promises as fs, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EXIT_CONFLICT } from './exit-codes.ts';

/**
 * One process per directory: a device directory, a broker's or a gateway's
 * data directory. Two agents on one device directory expose, for a moment, a
 * model no release named and corrupt each other's state; two brokers on one
 * data directory fail deep inside LevelDB.
 *
 * The lock is a file created exclusively (O_EXCL) holding who holds it. A
 * process that died (SIGKILL, power cut) cannot remove it, so a lock is
 * stale, and taken over, when its holder is gone: another boot (the kernel's
 * boot id differs), no such PID, or a PID now used by another process (its
 * start time differs). A stale lock is removed under a second short-lived
 * lock and only if it still holds what was judged stale, so of several
 * processes starting together exactly one wins.
 */
export interface LockHolder {
  pid: number;
  /** What holds it, for the message ("fleet device d1"). */
  what: string;
  host: string;
  /** /proc/sys/kernel/random/boot_id, where there is one. */
  boot: string | null;
  /** The holder's start time in clock ticks since boot (/proc/PID/stat), where there is one. */
  start: number | null;
  /** ISO time it was taken. */
  since: string;
}

/** Another process holds the directory: a usage error that a service manager must not restart into. */
export class DirLockedError extends FleetError<'dir-locked'> {
  override readonly name = 'DirLockedError';
  /** The process exit code for it: not to be restarted into (util/exit-codes.ts). */
  readonly exitCode = EXIT_CONFLICT;
  constructor(
    readonly dir: string,
    readonly holder: LockHolder,
  ) {
    super('usage', 'dir-locked', `${dir} is in use by ${holder.what} (PID ${holder.pid} on ${holder.host}, since ${holder.since}); stop it first, or give this one a directory of its own`);
  }
}

export const LOCK_FILE = '.fleet.lock';

function readOr<T>(read: () => T, fallback: T): T {
  try {
    return read();
  } catch {
    return fallback;
  }
}

const bootId = (): string | null => readOr(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(), null);

/** Field 22 of /proc/PID/stat (after the command name, which may hold spaces and parentheses). */
function startTicks(pid: number): number | null {
  return readOr(() => {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const n = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    return Number.isFinite(n) ? n : null;
  }, null);
}

/** Is there a process with this PID (ours to signal or not)? */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Is the process that wrote `h` still running? */
export function holderAlive(h: LockHolder): boolean {
  if (h.host !== os.hostname()) return true; // a shared file system: cannot tell, so assume so
  const boot = bootId();
  if (h.boot && boot && h.boot !== boot) return false;
  if (!pidAlive(h.pid)) return false;
  const start = startTicks(h.pid);
  return !(h.start !== null && start !== null && h.start !== start);
}

function parseHolder(text: string): LockHolder | null {
  try {
    const h = JSON.parse(text) as LockHolder;
    return Number.isSafeInteger(h.pid) && h.pid > 0 && typeof h.what === 'string' ? h : null;
  } catch {
    return null;
  }
}

export class DirLock {
  private released = false;
  private readonly onExit = (): void => this.releaseSync();

  private constructor(readonly file: string) {
    process.once('exit', this.onExit);
  }

  /**
   * Takes `dir`'s lock for this process, or throws DirLockedError naming the
   * live holder. `what` says what holds it ("fleet device d1").
   */
  static async acquire(dir: string, what: string): Promise<DirLock> {
    await fs.mkdir(dir, { recursive: true });
    const file = path.join(dir, LOCK_FILE);
    const me: LockHolder = { pid: process.pid, what, host: os.hostname(), boot: bootId(), start: startTicks(process.pid), since: new Date().toISOString() };
    for (let tries = 0; tries < 100; tries++) {
      try {
        const h = await fs.open(file, 'wx', 0o644);
        try {
          await h.writeFile(JSON.stringify(me));
          await h.sync();
        } finally {
          await h.close();
        }
        return new DirLock(file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const text = await fs.readFile(file, 'utf8').catch(ignoreBecause('removed meanwhile: try again'));
      if (text === undefined) continue;
      const holder = parseHolder(text);
      if (holder === null) {
        // Created but not yet written, or torn by a power cut: young means someone is starting.
        const age = await fs.stat(file).then(
          (s) => Date.now() - s.mtimeMs,
          () => Infinity,
        );
        if (age < 10_000) {
          await new Promise((r) => setTimeout(r, 200));
          continue;
        }
      } else if (holder.pid !== process.pid && holderAlive(holder)) {
        throw new DirLockedError(dir, holder);
      }
      // Stale. One contender at a time may remove it (under a second, short-lived lock), and only
      // while it still holds what was judged stale; then everyone races to create it afresh.
      const takeover = `${file}.takeover`;
      try {
        await (await fs.open(takeover, 'wx')).close();
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        const age = await fs.stat(takeover).then(
          (s) => Date.now() - s.mtimeMs,
          () => 0,
        );
        if (age > 10_000) await fs.rm(takeover, { force: true }); // its taker died
        await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
        continue;
      }
      try {
        if ((await fs.readFile(file, 'utf8').catch(ignoreBecause('already removed by its holder: nothing to take over'))) === text) await fs.rm(file, { force: true });
      } finally {
        await fs.rm(takeover, { force: true });
      }
    }
    throw new IoError('lock-contended', `could not take the lock ${file}: it keeps changing hands; is something else starting in ${dir}?`);
  }

  /** Gives the lock up (idempotent); only removes the file while it is still this process's. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    process.removeListener('exit', this.onExit);
    const h = parseHolder(await fs.readFile(this.file, 'utf8').catch(() => ''));
    if (h?.pid === process.pid) await fs.rm(this.file, { force: true });
  }

  private releaseSync(): void {
    if (this.released) return;
    this.released = true;
    const h = parseHolder(readOr(() => readFileSync(this.file, 'utf8'), ''));
    if (h?.pid === process.pid) readOr(() => rmSync(this.file, { force: true }), undefined);
  }
}
