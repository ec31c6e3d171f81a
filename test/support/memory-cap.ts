/**
 * A memory cap for one process tree: a child of this process's own memory cgroup (v1, or v2 where
 * the memory controller is delegated), so the cap nests inside whatever limits the machine already sets.
 */
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Prepared } from './debian-root.ts';

export interface MemoryCap {
  readonly dir: string;
  readonly limitBytes: number;
  readonly version: 1 | 2;
  /** Wrap a command so that it enters the cgroup before exec'ing (same PID from then on). */
  wrap(command: string, args: string[]): { command: string; args: string[] };
  /** Peak charge of the cgroup (memory.max_usage_in_bytes, v2: memory.peak), page cache included. */
  peakBytes(): Promise<number | null>;
  /**
   * Samples the cgroup's anonymous memory (v1 memory.stat total_rss, v2 anon) until stop(): its peak
   * without the page cache, which the kernel charges too but reclaims under the limit.
   */
  trackAnon(everyMs?: number): { stop(): number | null };
  /** OOM kills inside the cgroup so far. */
  oomKills(): Promise<number>;
  /** Removes the cgroup (its processes must have exited). */
  remove(): Promise<void>;
}

function ownCgroup(): { version: 1 | 2; dir: string } | null {
  let lines: string[];
  try {
    lines = readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n');
  } catch {
    return null;
  }
  for (const l of lines) {
    const [, ctrls, rel] = l.split(':') as [string, string, string];
    if (ctrls.split(',').includes('memory') && existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes')) {
      return { version: 1, dir: path.join('/sys/fs/cgroup/memory', rel) };
    }
  }
  const v2 = lines.find((l) => l.startsWith('0::'));
  if (v2) {
    const base = existsSync('/sys/fs/cgroup/cgroup.controllers') ? '/sys/fs/cgroup' : '/sys/fs/cgroup/unified';
    const dir = path.join(base, v2.slice(3));
    const ctl = path.join(dir, 'cgroup.subtree_control');
    if (existsSync(ctl) && readFileSync(ctl, 'utf8').split(/\s+/).includes('memory')) return { version: 2, dir };
  }
  return null;
}

async function readNumber(file: string): Promise<number | null> {
  try {
    const n = Number((await fs.readFile(file, 'utf8')).trim());
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

/**
 * Creates a cgroup capped at `limitBytes` (memory and, where the kernel accounts it, memory+swap).
 * Not available (a reason to skip) without a writable memory controller, e.g. when not root.
 */
export async function createMemoryCap(name: string, limitBytes: number): Promise<Prepared<MemoryCap>> {
  const own = ownCgroup();
  if (!own) return { ok: false, reason: 'no memory cgroup controller for this process (neither v1 nor a delegated v2)' };
  const dir = path.join(own.dir, `fleet-${name}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
  try {
    await fs.mkdir(dir);
  } catch (e) {
    return { ok: false, reason: `cannot create a memory cgroup under ${own.dir} (${(e as NodeJS.ErrnoException).code}); run as root` };
  }
  try {
    if (own.version === 1) {
      await fs.writeFile(path.join(dir, 'memory.limit_in_bytes'), String(limitBytes));
      const memsw = path.join(dir, 'memory.memsw.limit_in_bytes');
      if (existsSync(memsw)) await fs.writeFile(memsw, String(limitBytes));
    } else {
      await fs.writeFile(path.join(dir, 'memory.max'), String(limitBytes));
      if (existsSync(path.join(dir, 'memory.swap.max'))) await fs.writeFile(path.join(dir, 'memory.swap.max'), '0');
    }
  } catch (e) {
    await fs.rmdir(dir).catch(() => {});
    return { ok: false, reason: `cannot set the memory limit in ${dir}: ${(e as Error).message}` };
  }
  const cap: MemoryCap = {
    dir,
    limitBytes,
    version: own.version,
    wrap(command, args) {
      // $0 is the cgroup's procs file; the shell moves itself in, then becomes the command.
      return { command: '/bin/sh', args: ['-c', 'echo $$ > "$0" && exec "$@"', path.join(dir, 'cgroup.procs'), command, ...args] };
    },
    async peakBytes() {
      return readNumber(path.join(dir, own.version === 1 ? 'memory.max_usage_in_bytes' : 'memory.peak'));
    },
    trackAnon(everyMs = 100) {
      let peak: number | null = null;
      const key = own.version === 1 ? 'total_rss' : 'anon';
      const sample = (): void => {
        fs.readFile(path.join(dir, 'memory.stat'), 'utf8').then(
          (text) => {
            const m = new RegExp(`^${key} (\\d+)$`, 'm').exec(text);
            if (m) peak = Math.max(peak ?? 0, Number(m[1]));
          },
          () => {},
        );
      };
      sample();
      const timer = setInterval(sample, everyMs);
      return { stop: () => (clearInterval(timer), peak) };
    },
    async oomKills() {
      const file = path.join(dir, own.version === 1 ? 'memory.oom_control' : 'memory.events');
      const text = await fs.readFile(file, 'utf8').catch(() => '');
      const m = /^oom_kill (\d+)$/m.exec(text);
      return m ? Number(m[1]) : 0;
    },
    async remove() {
      // An exited process's charges move to the parent; rmdir fails only while a task is inside.
      for (let i = 0; i < 50; i++) {
        try {
          await fs.rmdir(dir);
          return;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      throw new Error(`memory cgroup ${dir} still has processes in it`);
    },
  };
  return { ok: true, value: cap };
}
