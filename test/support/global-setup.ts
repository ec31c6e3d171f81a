/**
 * Once per vitest run, before any test file: dist/ is made current (built when a source is newer),
 * so the `fleet` children the tests start run the build of exactly the sources under test
 * (FLEET_DIST=1 in vitest.config.ts) rather than loading them through tsx at every start.
 */
import { packageRoot } from '../../platform/package-root.ts';
import { ensureFreshDist } from './dist.ts';

export default function setup(): void {
  const root = packageRoot();
  if (!root) throw new Error('no package root above the tests: run vitest from the repository');
  ensureFreshDist(root);
}
