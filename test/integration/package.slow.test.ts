import { spawnSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../platform/package-root.ts';
import { VERSION } from '../../util/version.ts';
import { distIsFresh } from '../support/dist.ts';

const ROOT = packageRoot()!;
let dir: string | undefined;
afterAll(async () => {
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

function run(cmd: string, args: string[], cwd: string, timeoutMs = 300_000): { code: number | null; out: string; err: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, npm_config_update_notifier: 'false' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('the package a machine without the repository installs', () => {
  it('npm pack builds dist/ and packs it; npm install -g into a private prefix gives a fleet that prints its version and runs the demo', () => {
    dir = spawnSync('mktemp', ['-d', path.join(os.tmpdir(), 'fleet-pack-XXXXXX')], { encoding: 'utf8' }).stdout.trim();
    // npm pack builds first (prepack); when dist/ is newer than every source (.ci/run builds before the
    // tests) it packs what is there, so that it never rebuilds dist/ under the old-board suite's feet.
    const pack = run('npm', ['pack', ROOT, '--pack-destination', dir, ...(distIsFresh(ROOT) ? ['--ignore-scripts'] : [])], dir);
    expect(pack.code, pack.err).toBe(0);
    const tgz = path.join(dir, `fleet-model-updates-${VERSION}.tgz`);
    expect(existsSync(tgz)).toBe(true);
    const list = run('tar', ['-tzf', tgz], dir).out.split('\n');
    expect(list).toContain('package/dist/fleet.mjs');
    expect(list).toContain('package/dist/fleet-device.mjs');
    expect(list).toContain('package/dist/dashboard.js');
    // No TypeScript: an installed fleet never transpiles.
    expect(list.filter((f) => f.endsWith('.ts'))).toEqual([]);
    const prefix = path.join(dir, 'prefix');
    const install = run('npm', ['install', '-g', '--prefix', prefix, tgz, '--no-audit', '--no-fund'], dir, 600_000);
    expect(install.code, install.err).toBe(0);
    const fleet = path.join(prefix, 'bin', 'fleet');
    const version = run(fleet, ['--version'], dir);
    expect(version.out.trim()).toBe(VERSION);
    const demo = run(fleet, ['demo', '--devices', '2', '--json'], dir, 300_000);
    expect(demo.code, demo.err).toBe(0);
    const figures = JSON.parse(demo.out.trim().split('\n').at(-1)!) as { devices: number; acked: number };
    expect(figures).toMatchObject({ devices: 2, acked: 2 });
    console.log(`packed ${list.length - 1} files; the installed fleet's demo: ${demo.out.trim().split('\n').at(-1)}`);
  }, 900_000);
});
