import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { DirLock, DirLockedError, LOCK_FILE, type LockHolder } from '../../util/dir-lock.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const LOCK_MODULE = path.join(ROOT, 'util/dir-lock.ts');
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) process.kill(c.pid!, 'SIGKILL');
});

/** A node process that takes the lock, prints "held" (or the refusal) and then waits (or exits). */
function contender(dir: string, what: string, hold: boolean): ChildProcess {
  const code = `import { DirLock } from ${JSON.stringify(LOCK_MODULE)};
    try { await DirLock.acquire(${JSON.stringify(dir)}, ${JSON.stringify(what)}); console.log('held'); }
    catch (e) { console.log('refused: ' + e.message); process.exit(3); }
    ${hold ? 'setInterval(() => {}, 1000);' : ''}`;
  const c = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(c);
  return c;
}

const firstLine = (c: ChildProcess): Promise<string> =>
  new Promise((resolve) => {
    let out = '';
    c.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]);
    });
    c.once('exit', () => resolve(out.split('\n')[0]));
  });

const tmp = (): string => mkdtempSync(path.join(os.tmpdir(), 'fleet-lock-'));
const holderIn = (dir: string): LockHolder => JSON.parse(readFileSync(path.join(dir, LOCK_FILE), 'utf8')) as LockHolder;

describe('one process per directory (util/dir-lock.ts)', () => {
  it('a second process is refused with the holder named; after the holder is SIGKILLed its stale lock is taken over', async () => {
    const dir = tmp();
    const a = contender(dir, 'fleet device d1', true);
    expect(await firstLine(a)).toBe('held');
    const b = contender(dir, 'fleet device d1', false);
    const refusal = await firstLine(b);
    expect(refusal).toContain(`in use by fleet device d1 (PID ${a.pid}`);
    await new Promise((r) => b.once('exit', r));
    expect(b.exitCode).toBe(3);
    process.kill(a.pid!, 'SIGKILL');
    await new Promise((r) => a.once('exit', r));
    // The dead holder could not remove its file: it is stale now.
    expect(holderIn(dir).pid).toBe(a.pid);
    const c = contender(dir, 'fleet device d1', true);
    expect(await firstLine(c)).toBe('held');
    expect(holderIn(dir).pid).toBe(c.pid);
  }, 30_000);

  it('a lock left by another boot, or by a PID that now belongs to another process, is stale', async () => {
    const dir = tmp();
    const me: LockHolder = { pid: process.ppid, what: 'fleet device old', host: os.hostname(), boot: 'another-boot', start: null, since: '2026-01-01T00:00:00Z' };
    writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify(me));
    const l1 = await DirLock.acquire(dir, 'fleet device new');
    expect(holderIn(dir).what).toBe('fleet device new');
    await l1.release();
    expect(existsSync(path.join(dir, LOCK_FILE))).toBe(false);
    // A live PID (our parent) whose start time is not the recorded one: reused after a power cut.
    writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ ...me, boot: null, start: 1 }));
    const l2 = await DirLock.acquire(dir, 'fleet device new');
    await l2.release();
    // The same live PID with no start time to compare: held.
    writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ ...me, boot: null, start: null }));
    await expect(DirLock.acquire(dir, 'x')).rejects.toBeInstanceOf(DirLockedError);
  });

  it('eight processes racing for one stale lock: exactly one holds it', async () => {
    const dir = tmp();
    // A holder that is certainly dead: a process that has exited.
    const gone = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
    writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ pid: Number(gone.stdout.trim()), what: 'dead', host: os.hostname(), boot: null, start: null, since: '' }));
    const cs = Array.from({ length: 8 }, (_, i) => contender(dir, `racer ${i}`, true));
    const lines = await Promise.all(cs.map(firstLine));
    expect(lines.filter((l) => l === 'held')).toHaveLength(1);
    expect(lines.filter((l) => l.startsWith('refused: ') && l.includes('in use by racer'))).toHaveLength(7);
    expect(readdirSync(dir)).toEqual([LOCK_FILE]);
  }, 60_000);
});
