import { FleetError, ignoreBecause } from '../../platform/errors.ts';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { packageRoot } from '../../platform/package-root.ts';

/**
 * The dashboard's browser script: operator/browser/live.ts with mqtt.js's browser
 * build and the view model (whatever operator/fleet-view.ts imports today),
 * bundled by esbuild into one self-contained, minified ES2020 script. Built on
 * first use and kept in memory (one build per process, ~0.2 s).
 *
 * `node:crypto` (protocol/chunks.ts, reached through the release codec) becomes
 * operator/browser/node-crypto-shim.ts; any other Node built-in fails the build
 * with its name, so the bundle can never need one.
 *
 * esbuild is a devDependency: `npm ci` installs it. Without it the page says the
 * script is unavailable and `fleet dashboard` (Server-Sent Events) still works.
 */

/** The dashboard's browser script cannot be built here (esbuild missing or failing). */
export class BundleError extends FleetError<'bundle-unavailable'> {
  override readonly name = 'BundleError';
  constructor(message: string) {
    super('usage', 'bundle-unavailable', message);
  }
}

export interface DashboardBundle {
  /** The script (UTF-8 JavaScript). */
  code: string;
  /** Build time in ms. */
  ms: number;
  /** Source files that went in (relative paths). */
  inputs: string[];
}

const ENTRY = fileURLToPath(new URL('./live.ts', import.meta.url));
const CRYPTO_SHIM = fileURLToPath(new URL('./node-crypto-shim.ts', import.meta.url));

let cached: Promise<DashboardBundle> | undefined;

/** Where `npm run build` leaves the script, for installed packages (which carry no sources to build it from). */
export const PREBUILT_NAME = path.join('dist', 'dashboard.js');

async function prebuilt(): Promise<DashboardBundle | undefined> {
  const root = packageRoot();
  // In a checkout the sources are the truth: a stale build must not shadow them.
  if (!root || existsSync(ENTRY)) return undefined;
  const code = await fs.readFile(path.join(root, PREBUILT_NAME), 'utf8').catch(ignoreBecause('no prebuilt script in this package: built from the sources instead'));
  return code === undefined ? undefined : { code, ms: 0, inputs: [PREBUILT_NAME] };
}

/** The bundle, built once per process (a failed build is retried on the next call); an installed package's prebuilt one. */
export function dashboardBundle(): Promise<DashboardBundle> {
  cached ??= prebuilt()
    .then((p) => p ?? buildDashboardBundle())
    .catch((e: unknown) => {
      cached = undefined;
      throw e;
    });
  return cached;
}

export async function buildDashboardBundle(): Promise<DashboardBundle> {
  let esbuild: typeof import('esbuild');
  try {
    esbuild = await import('esbuild');
  } catch (e) {
    throw new BundleError(`the dashboard's browser script needs esbuild (a devDependency: npm ci): ${(e as Error).message}`);
  }
  const t0 = performance.now();
  try {
    const r = await esbuild.build({
      entryPoints: [ENTRY],
      bundle: true,
      write: false,
      format: 'iife',
      platform: 'browser',
      target: 'es2020',
      minify: true,
      legalComments: 'none',
      metafile: true,
      logLevel: 'silent',
      plugins: [
        {
          name: 'no-node-builtins',
          setup(b) {
            b.onResolve({ filter: /^node:crypto$/ }, () => ({ path: CRYPTO_SHIM }));
            b.onResolve({ filter: /^node:/ }, (a) => ({ errors: [{ text: `${a.path} (imported by ${a.importer}) cannot run in a browser` }] }));
          },
        },
      ],
    });
    return { code: r.outputFiles[0].text, ms: Math.round(performance.now() - t0), inputs: Object.keys(r.metafile.inputs) };
  } catch (e) {
    const errs = (e as { errors?: Array<{ text: string }> }).errors;
    throw new BundleError(`building the dashboard's browser script failed: ${errs?.map((x) => x.text).join('; ') ?? (e as Error).message}`);
  }
}
