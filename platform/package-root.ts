import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

let found: string | null | undefined;

/**
 * The directory of this package (where package.json names it), found by walking
 * up from this module: the same from the sources (platform/), from the compiled
 * chunks (dist/chunks/) and from an installed package. Null in a bundle copied
 * alone to a device.
 */
export function packageRoot(): string | null {
  if (found !== undefined) return found;
  for (let dir = path.dirname(fileURLToPath(import.meta.url)); ; dir = path.dirname(dir)) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'fleet-model-updates') return (found = dir);
      } catch {
        // not ours; keep walking
      }
    }
    if (path.dirname(dir) === dir) return (found = null);
  }
}
