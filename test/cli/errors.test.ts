import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { describeError } from '../../cli/program.ts';
import { tempDir } from '../support/harness.ts';

const fsError = (code: string, p: string, syscall: string): NodeJS.ErrnoException => Object.assign(new Error(`${code}: raw, ${syscall} '${p}'`), { code, path: p, syscall });

describe("file-system errors name the user's path and what to do", () => {
  it('names the file an atomic write was for, not its temporary name, with advice per code', () => {
    expect(describeError(fsError('ENOSPC', '/var/lib/fleet/d1/state.json.tmp-4242-ab12cd', 'write'))).toBe(
      '/var/lib/fleet/d1/state.json: no space left on the device: free some space, or choose a path on another disk (ENOSPC in write)',
    );
    expect(describeError(fsError('EROFS', '/mnt/ro/keys', 'mkdir'))).toBe('/mnt/ro/keys: the file system is read-only: choose a path on a writable one (EROFS in mkdir)');
    expect(describeError(fsError('EACCES', '/etc/fleet/x.env.tmp-1', 'open'))).toBe('/etc/fleet/x.env: permission denied: run as a user that may use it, or choose another path (EACCES in open)');
    expect(describeError(new Error('plain'))).toBe('plain');
  });

  it('as the command line prints them: one line, exit 1', async () => {
    const dir = await tempDir('cli-errors');
    const file = path.join(dir, 'a-file');
    await fs.writeFile(file, 'x');
    const keygen = spawnSync(process.execPath, [FLEET_BIN, 'keygen', '--out', path.join(file, 'keys')], { encoding: 'utf8' });
    expect(keygen.status).toBe(1);
    expect(keygen.stderr).toBe(`fleet: ${path.join(file, 'keys')}: a part of the path is a file, not a directory: check the path (ENOTDIR in mkdir)\n`);
    const device = spawnSync(
      process.execPath,
      [FLEET_BIN, 'device', '--id', 'd', '--model', 'm', '--group', 'g', '--dir', path.join(dir, 'd'), '--trust', path.join(dir, 'missing.json'), '--broker', 'mqtt://127.0.0.1:1'],
      { encoding: 'utf8' },
    );
    expect(device.status).toBe(1);
    expect(device.stderr).toBe(`fleet: ${path.join(dir, 'missing.json')}: no such file or directory: check the path (ENOENT in open)\n`);
    await fs.rm(dir, { recursive: true, force: true });
  }, 60_000);
});
