import { createRequire } from 'node:module';

/** Set by `npm run build` (scripts/build.ts): a bundle copied alone to a board has no package.json beside it. */
declare const __FLEET_VERSION__: string | undefined;

/** This package's version, reported by agents in their status. */
export const VERSION: string = typeof __FLEET_VERSION__ === 'string' ? __FLEET_VERSION__ : (createRequire(import.meta.url)('../package.json') as { version: string }).version;
