/**
 * Debian packages unpacked into a private root: `apt-get download` + `dpkg-deb -x`, never `dpkg -i`,
 * so the machine's own packages (its node above all) are left as they are. Used by foreign-node.ts.
 */
import { execFile } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The result of preparing something a test may need: the thing, or why the test skips. */
export type Prepared<T> = { ok: true; value: T } | { ok: false; reason: string };

export async function sh(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await run(cmd, args, { cwd: opts.cwd, timeout: opts.timeoutMs ?? 600_000, maxBuffer: 64 << 20, env: { ...process.env, LC_ALL: 'C' } });
  return r.stdout;
}

export function onPath(tool: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':')) {
    const p = path.join(dir, tool);
    if (existsSync(p)) return p;
  }
  for (const dir of ['/usr/sbin', '/sbin']) if (existsSync(path.join(dir, tool))) return path.join(dir, tool);
  return null;
}

export const isRoot = (): boolean => process.getuid?.() === 0;
export const inCi = (): boolean => !!process.env.CI;

/**
 * Where downloaded .debs and unpacked roots live between runs: $FLEET_FOREIGN_NODE_CACHE, else
 * /var/cache/fleet-test as root, else a per-user directory under the temporary directory.
 */
export function cacheDir(): string {
  if (process.env.FLEET_FOREIGN_NODE_CACHE) return process.env.FLEET_FOREIGN_NODE_CACHE;
  return isRoot() ? '/var/cache/fleet-test' : path.join(os.tmpdir(), `fleet-test-cache-${process.getuid?.() ?? 'user'}`);
}

interface PackageInfo {
  name: string;
  version: string;
  architecture: string;
  depends: string[];
}

function field(stanza: string, name: string): string {
  const m = new RegExp(`^${name}: (.*)$`, 'm').exec(stanza);
  return m ? m[1]!.trim() : '';
}

/** Dependency names (first alternative of each, no version, no `:any`). */
function depNames(value: string): string[] {
  if (!value) return [];
  return value
    .split(',')
    .map((d) =>
      d
        .split('|')[0]!
        .trim()
        .replace(/\s*\(.*\)$/, '')
        .replace(/:any$/, ''),
    )
    .filter(Boolean);
}

/** The candidate (or the pinned version) of `name` for `arch`; arch:all packages are found without the suffix. */
async function showPackage(name: string, arch: string, version?: string): Promise<PackageInfo | null> {
  for (const spec of [`${name}:${arch}`, name]) {
    let out: string;
    try {
      out = await sh('apt-cache', ['show', ...(version ? [] : ['--no-all-versions']), spec]);
    } catch {
      continue;
    }
    const stanzas = out.split(/\n\s*\n/).filter((s) => s.includes('Package:'));
    const st = stanzas.find((s) => (!version || field(s, 'Version') === version) && [arch, 'all'].includes(field(s, 'Architecture')));
    if (!st) continue;
    return {
      name,
      version: field(st, 'Version'),
      architecture: field(st, 'Architecture'),
      depends: [...depNames(field(st, 'Pre-Depends')), ...depNames(field(st, 'Depends'))],
    };
  }
  return null;
}

/** The newest version of `name:arch` in the apt lists whose version starts with `prefix` (e.g. "18."). */
export async function findVersion(name: string, arch: string, prefix: string): Promise<string | null> {
  const out = await sh('apt-cache', ['madison', `${name}:${arch}`]).catch(() => '');
  const versions = out
    .split('\n')
    .map((l) => l.split('|').map((s) => s.trim()))
    .filter((c) => c.length >= 3 && c[2]!.includes(` ${arch} `))
    .map((c) => c[1]!);
  return versions.find((v) => v.startsWith(prefix)) ?? null;
}

/** Only libraries and Debian's node-* modules are followed: no debconf, perl, python or the host's tools. */
const FOLLOW = /^(lib|zlib1g$|gcc-\d+-base$|node-)/;

async function installedNative(name: string, arch: string): Promise<boolean> {
  const out = await sh('dpkg-query', ['-W', '-f=${db:Status-Abbrev}', `${name}:${arch}`]).catch(() => '');
  if (out.startsWith('ii')) return true;
  const all = await sh('dpkg-query', ['-W', '-f=${db:Status-Abbrev}', name]).catch(() => '');
  return all.startsWith('ii');
}

export interface ClosureOptions {
  arch: string;
  /** Packages to start from, with pinned versions. */
  roots: Array<{ name: string; version: string }>;
  /** Leave out packages that are installed on this machine (only sensible for the native architecture). */
  skipInstalled: boolean;
}

/** apt-get download specs for the roots and the library closure of their Depends/Pre-Depends. */
export async function packageClosure(o: ClosureOptions): Promise<string[]> {
  const pinned = new Map(o.roots.map((r) => [r.name, r.version]));
  const queue = o.roots.map((r) => r.name);
  const seen = new Set<string>(queue);
  const specs: string[] = [];
  while (queue.length) {
    const name = queue.shift()!;
    const info = await showPackage(name, o.arch, pinned.get(name));
    if (!info) {
      if (pinned.has(name)) throw new Error(`apt has no ${name}:${o.arch} ${pinned.get(name)}`);
      continue; // a virtual package; its providers are libraries already followed
    }
    if (!pinned.has(name) && o.skipInstalled && (await installedNative(name, o.arch))) continue;
    specs.push(info.architecture === 'all' ? `${name}=${info.version}` : `${name}:${o.arch}=${info.version}`);
    for (const d of info.depends) {
      if (seen.has(d) || !FOLLOW.test(d)) continue;
      seen.add(d);
      queue.push(d);
    }
  }
  return specs;
}

/**
 * Downloads the packages into the cache (kept between runs) and unpacks them into `root`.
 * Built in a temporary sibling and renamed, so concurrent test files see either nothing or a whole root.
 */
export async function unpackRoot(root: string, closure: () => Promise<string[]>): Promise<void> {
  if (existsSync(path.join(root, '.complete'))) return;
  const specs = await closure();
  const debDir = path.join(cacheDir(), 'debs');
  await fs.mkdir(debDir, { recursive: true });
  const fileOf = (spec: string): string => {
    const [nameArch, version] = spec.split('=') as [string, string];
    const [name, arch] = nameArch.split(':');
    // apt-get download names files name_version-with-%3a-for-epoch_arch.deb
    return `${name}_${version.replace(/:/g, '%3a')}_${arch ?? 'all'}.deb`;
  };
  const missing = specs.filter((s) => !existsSync(path.join(debDir, fileOf(s))));
  if (missing.length) {
    const tmp = await fs.mkdtemp(path.join(debDir, '.dl-'));
    try {
      await sh('apt-get', ['download', '-qq', ...missing], { cwd: tmp });
      for (const f of await fs.readdir(tmp)) await fs.rename(path.join(tmp, f), path.join(debDir, f));
    } finally {
      await fs.rm(tmp, { recursive: true, force: true });
    }
  }
  await fs.mkdir(path.dirname(root), { recursive: true });
  const tmpRoot = await fs.mkdtemp(`${root}.tmp-`);
  try {
    for (const s of specs) {
      const deb = path.join(debDir, fileOf(s));
      if (!existsSync(deb)) throw new Error(`apt-get download left no ${fileOf(s)} in ${debDir}`);
      await sh('dpkg-deb', ['-x', deb, tmpRoot]);
    }
    await usrMerge(tmpRoot);
    await fs.writeFile(path.join(tmpRoot, '.complete'), specs.join('\n') + '\n');
    await fs.rename(tmpRoot, root).catch(async (e: NodeJS.ErrnoException) => {
      if (!existsSync(path.join(root, '.complete'))) throw e; // someone else finished first: theirs is as good
    });
  } finally {
    await fs.rm(tmpRoot, { recursive: true, force: true });
  }
}

/**
 * Bookworm is usr-merged (/lib -> usr/lib) but its packages still ship files under /lib; the loader's
 * built-in search path relies on the merge, so the unpacked root gets it too.
 */
async function usrMerge(root: string): Promise<void> {
  for (const top of ['lib', 'bin', 'sbin']) {
    const dir = path.join(root, top);
    const st = await fs.lstat(dir).catch(() => null);
    if (!st?.isDirectory()) continue;
    await fs.mkdir(path.join(root, 'usr', top), { recursive: true });
    await fs.cp(dir, path.join(root, 'usr', top), { recursive: true, verbatimSymlinks: true });
    await fs.rm(dir, { recursive: true });
    await fs.symlink(`usr/${top}`, dir);
  }
}
