/**
 * `npm run build`: the compiled JavaScript that installed packages and devices run.
 *
 *   dist/fleet.mjs (+ dist/chunks/): every command, each command's heavy parts
 *       (broker, builder, dashboard, gateway) in chunks loaded only by that
 *       command; npm dependencies stay external (installed with the package).
 *   dist/fleet-device.mjs: `fleet device` alone in one self-contained file,
 *       its dependencies bundled (mqtt, cbor-x's pure-JS path, tweetnacl,
 *       commander), no native add-ons: copy it to a board with Node 18+ and run
 *       `node fleet-device.mjs device …`.
 *
 * Ends with one JSON line: the files and their sizes.
 */
import { build, type Metafile, type Plugin } from 'esbuild';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildDashboardBundle, PREBUILT_NAME } from '../operator/browser/bundle.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
/** CommonJS dependencies call require(); an ESM bundle gives them one. */
const banner = { js: "import { createRequire as __fleetCreateRequire } from 'node:module'; const require = __fleetCreateRequire(import.meta.url);" };
/** Modules a device must never load (checked in the device bundle's metafile). */
const NOT_ON_A_DEVICE = ['aedes', 'level', 'classic-level', 'ml-matrix', 'esbuild', 'prom-client', 'ws', 'pngjs', 'ioredis', 'mnist', 'broker/', 'operator/', 'publisher/build', 'publisher/rsvd', 'gateway/'];

/**
 * mqtt.js's entry point loads its WebSocket transport, and with it `ws`; a device speaks
 * MQTT over TCP or TLS only, so the bundle gets an empty `ws` (any use would throw).
 */
const stubWebSocket: Plugin = {
  name: 'stub-ws',
  setup(b) {
    b.onResolve({ filter: /^ws$/ }, () => ({ path: 'ws', namespace: 'fleet-stub' }));
    b.onLoad({ filter: /.*/, namespace: 'fleet-stub' }, () => ({ contents: 'module.exports = {};', loader: 'js' }));
  },
};

async function main(): Promise<void> {
  await fs.rm(dist, { recursive: true, force: true });
  const version = (JSON.parse(await fs.readFile(path.join(root, 'package.json'), 'utf8')) as { version: string }).version;
  const define = { __FLEET_VERSION__: JSON.stringify(version) };
  await build({
    entryPoints: { fleet: path.join(root, 'cli/main.ts') },
    outdir: dist,
    outExtension: { '.js': '.mjs' },
    chunkNames: 'chunks/[name]-[hash]',
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node18',
    packages: 'external',
    sourcemap: 'linked',
    logLevel: 'warning',
    define,
  });
  const device = await build({
    entryPoints: { 'fleet-device': path.join(root, 'cli/device-main.ts') },
    outdir: dist,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'node18',
    banner,
    // cbor-x tries this native accelerator and falls back to JavaScript without it. ONNX Runtime
    // (native, optional) is loaded only for --validate-onnx, from the device's own node_modules.
    external: ['cbor-extract', 'onnxruntime-node'],
    plugins: [stubWebSocket],
    minify: true,
    sourcemap: 'linked',
    metafile: true,
    legalComments: 'linked',
    logLevel: 'warning',
    define,
  });
  // The dashboard's browser script: an installed package has no sources to build it from at run time.
  await fs.writeFile(path.join(root, PREBUILT_NAME), (await buildDashboardBundle()).code);
  const inputs = Object.keys((device.metafile as Metafile).inputs);
  const bad = inputs.filter((i) => NOT_ON_A_DEVICE.some((n) => i.includes(`node_modules/${n}/`) || i.startsWith(n)));
  if (bad.length > 0) throw new Error(`the device bundle pulls in what a device must not load: ${bad.slice(0, 5).join(', ')}`);
  const files: Record<string, number> = {};
  for (const f of await fs.readdir(dist, { recursive: true })) {
    const p = path.join(dist, String(f));
    if ((await fs.stat(p)).isFile() && (p.endsWith('.mjs') || p.endsWith('.js'))) files[path.relative(root, p)] = (await fs.stat(p)).size;
  }
  process.stderr.write(`built ${Object.keys(files).length} files in dist/ (device bundle: ${inputs.length} modules)\n`);
  process.stdout.write(
    `${JSON.stringify({ build: 'dist', deviceModules: inputs.length, deviceBytes: files['dist/fleet-device.mjs'], files: Object.keys(files).length, totalBytes: Object.values(files).reduce((a, b) => a + b, 0) })}\n`,
  );
}

main().catch((e: unknown) => {
  process.stderr.write(`build: ${(e as Error).message}\n`);
  process.exit(1);
});
