/**
 * Whether dist/ (`npm run build`) was built after the last change to any source, and building it
 * when not: the suite's `fleet` children run the build (FLEET_DIST=1, see vitest.config.ts), which
 * starts in a fraction of the time tsx takes to load the sources.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

/** Everything but the tests, the docs and the outputs: whatever dist/ is built from. */
const NOT_SOURCES = new Set(['node_modules', 'dist', 'docs', 'test', 'test-output']);

function newestSource(root: string): number {
  let newest = statSync(path.join(root, 'package.json')).mtimeMs;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  for (const e of readdirSync(root, { withFileTypes: true })) if (e.isDirectory() && !e.name.startsWith('.') && !NOT_SOURCES.has(e.name)) walk(path.join(root, e.name));
  return newest;
}

/** dist/ exists and was built after the last change to any source. */
export function distIsFresh(root: string): boolean {
  const built = ['fleet.mjs', 'fleet-device.mjs'].map((f) => path.join(root, 'dist', f));
  if (!built.every((f) => existsSync(f))) return false;
  const newest = newestSource(root);
  return built.every((f) => statSync(f).mtimeMs >= newest);
}

/** Runs `npm run build` when dist/ is missing or older than a source; throws naming the cause when the build fails. */
export function ensureFreshDist(root: string): 'fresh' | 'built' {
  if (distIsFresh(root)) return 'fresh';
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(root, 'scripts', 'build.ts')], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`npm run build failed (exit ${r.status ?? r.signal}), so the suite cannot run the fleet children from dist/: ${r.stderr.trim().slice(-2000)}`);
  return 'built';
}
