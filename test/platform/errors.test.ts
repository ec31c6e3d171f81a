/**
 * The error family (platform/errors.ts): kinds, how a thrown value is
 * classified, ignoreBecause, and that core code drops no promise without
 * saying why.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { classify, errorFields, FleetError, ignoreBecause, InternalError, IoError, RefusalError, UsageError } from '../../platform/errors.ts';
import { CborError } from '../../protocol/cbor-strict.ts';
import { BuildError } from '../../publisher/build-error.ts';
import { DirLockedError } from '../../util/dir-lock.ts';
import { createLogger } from '../../util/log.ts';

describe('FleetError', () => {
  it('each family is a FleetError with its own name, code and kind', () => {
    const cases: Array<[FleetError, string, string, string]> = [
      [new RefusalError('x', 'm'), 'RefusalError', 'x', 'refusal'],
      [new UsageError('y', 'm'), 'UsageError', 'y', 'usage'],
      [new IoError('z', 'm'), 'IoError', 'z', 'io'],
      [new InternalError('w', 'm'), 'InternalError', 'w', 'internal'],
      [new CborError('tag', 3, 'tag 1'), 'CborError', 'tag', 'refusal'],
      [new BuildError('bad-rank', 'm'), 'BuildError', 'bad-rank', 'usage'],
      [new BuildError('non-finite', 'm'), 'BuildError', 'non-finite', 'refusal'],
      [new DirLockedError('/d', { what: 'x', pid: 1, host: 'h', boot: null, start: null, since: 's' }), 'DirLockedError', 'dir-locked', 'usage'],
    ];
    for (const [e, name, code, kind] of cases) {
      expect(e).toBeInstanceOf(FleetError);
      expect(e).toBeInstanceOf(Error);
      expect([e.name, e.code, e.kind, classify(e)]).toEqual([name, code, kind, kind]);
    }
  });

  it('classify: operating-system errors are I/O, anything else unknown is a bug', () => {
    expect(classify(Object.assign(new Error('x'), { code: 'ENOENT' }))).toBe('io');
    expect(classify(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBe('io');
    expect(classify(new Error('plain'))).toBe('internal');
    expect(classify(new TypeError('x'))).toBe('internal');
    expect(classify('a string')).toBe('internal');
    expect(classify(Object.assign(new Error('x'), { code: 'not-errno' }))).toBe('internal');
    expect(errorFields(new IoError('z', 'disk')).stack).toBeUndefined();
    expect(errorFields(new RangeError('r')).stack).toContain('RangeError');
  });

  it('ignoreBecause logs the reason and the error at debug, and resolves to undefined', async () => {
    const lines: string[] = [];
    const log = createLogger('t', 'debug', (l) => lines.push(l));
    const r = await Promise.reject(new Error('gone')).catch(ignoreBecause('the session ends it anyway', log));
    expect(r).toBeUndefined();
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0])).toMatchObject({ level: 'debug', msg: 'ignored: the session ends it anyway', error: 'gone' });
  });
});

const CORE = ['platform', 'protocol', 'transport', 'publisher', 'server', 'broker', 'device', 'rollout', 'operator', 'gateway', 'util', 'nodes', 'cli'];

async function tsFiles(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [];
    throw e;
  });
  const out: string[] = [];
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await tsFiles(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

describe('no silently swallowed promise', () => {
  it('no `.catch(() => undefined)` (or null, or {}) in core code or the command line: ignoreBecause(why) or a handler', async () => {
    const root = path.resolve(import.meta.dirname, '../..');
    const found: string[] = [];
    for (const dir of CORE) {
      for (const file of await tsFiles(path.join(root, dir))) {
        const rel = path.relative(root, file).split(path.sep).join('/');
        (await fs.readFile(file, 'utf8')).split('\n').forEach((line, i) => {
          if (/\.catch\(\s*\(\)\s*=>\s*(undefined|null|\{\s*\})\s*\)/.test(line)) found.push(`${rel}:${i + 1}: ${line.trim()}`);
        });
      }
    }
    expect(found).toEqual([]);
  });
});
