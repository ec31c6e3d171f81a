#!/usr/bin/env node
// The `fleet` command. An installed package (dist/ and no sources) runs the compiled JavaScript
// that `npm run build` writes; a checkout runs the TypeScript sources through tsx's loader
// (FLEET_DIST=1 runs the build instead). `fleet device …` loads only the device's entry point:
// nothing of the broker, the dashboard or the builder.
import { existsSync } from 'node:fs';

/** Global options that take a value (cli/program.ts): their value is not the command. */
const VALUED = new Set(['--log-level', '--prefix', '--ca', '--client-cert', '--client-key', '--stop-timeout', '--broker-password-file']);
function commandOf(args) {
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('-')) return a;
    if (VALUED.has(a)) i++;
  }
  return undefined;
}

const here = (p) => new URL(p, import.meta.url);
const device = commandOf(process.argv.slice(2)) === 'device';
const sources = existsSync(here('../cli/main.ts'));
if (existsSync(here('../dist/fleet.mjs')) && (!sources || process.env.FLEET_DIST === '1')) {
  await import(here(device ? '../dist/fleet-device.mjs' : '../dist/fleet.mjs').href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(device ? '../cli/device-main.ts' : '../cli/main.ts');
}
