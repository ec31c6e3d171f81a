/**
 * Node.js builds other than the one running the tests, unpacked from Debian's own packages into a
 * private cache (never installed, the machine's node is untouched):
 *  - Debian bookworm's `nodejs` 18 for this machine's architecture;
 *  - Debian's armhf `nodejs` 18 run under qemu-user (`qemu-arm -L ROOT`), an emulated 32-bit ARM board
 *    (arm64 under qemu-aarch64 when armhf cannot be had).
 * Each prepare function returns the node or the reason a test should skip; with $CI set, a node that
 * cannot be had (a missing tool, or one that does not start) is an error instead (CI installs it, see .ci/run).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { cacheDir, findVersion, inCi, isRoot, onPath, packageClosure, sh, unpackRoot, type Prepared } from './debian-root.ts';
import type { MemoryCap } from './memory-cap.ts';

export interface ForeignNode {
  /** For logs: "Debian nodejs 18.20.4+dfsg-1~deb12u3 amd64 (unshare)". */
  label: string;
  /** Debian architecture of the node binary (amd64, armhf, arm64). */
  debArch: string;
  /** The private root the packages were unpacked into. */
  root: string;
  /** Program and the arguments that come before node's own (`node <args>` = command + prefixArgs + args). */
  command: string;
  prefixArgs: string[];
  /** A small clean environment (the test process's NODE_OPTIONS etc. are not for this node). */
  env: Record<string, string>;
  /** What the node printed for process.version / process.arch when it was checked. */
  version: string;
  arch: string;
}

const TRIPLET: Record<string, string> = { amd64: 'x86_64-linux-gnu', armhf: 'arm-linux-gnueabihf', arm64: 'aarch64-linux-gnu', i386: 'i386-linux-gnu' };
const QEMU: Record<string, string> = { armhf: 'qemu-arm', arm64: 'qemu-aarch64' };

function cleanEnv(): Record<string, string> {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', LANG: 'C.UTF-8', TZ: 'UTC' };
}

function unavailable(reason: string): Prepared<never> {
  return { ok: false, reason };
}

/** Outside CI a node that cannot be had is a reason to skip; in CI (which installs everything) an error. */
export function requireInCi<T>(p: Prepared<T>): Prepared<T> {
  if (!p.ok && inCi()) throw new Error(`${p.reason} (CI installs what this needs: see .ci/run)`);
  return p;
}

/** Runs `node -e` with the prepared command and fills in version/arch, or says why it does not start. */
async function check(node: Omit<ForeignNode, 'version' | 'arch'>): Promise<Prepared<ForeignNode>> {
  const r = await runForeign({ ...node, version: '', arch: '' }, ['-e', 'console.log(process.arch, process.version)'], { timeoutMs: 120_000 });
  const m = /^(\S+) (v\d+\.\d+\.\d+)$/m.exec(r.stdout);
  if (r.code !== 0 || !m) return { ok: false, reason: `${node.label} does not start (exit ${r.code ?? r.signal}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}` };
  return { ok: true, value: { ...node, arch: m[1]!, version: m[2]! } };
}

async function tools(): Promise<string | null> {
  for (const t of ['apt-get', 'apt-cache', 'dpkg-deb', 'dpkg']) if (!onPath(t)) return `${t} is not installed (a Debian-based machine is needed)`;
  return null;
}

/**
 * Debian bookworm's nodejs 18 for this machine's architecture. Debian's node loads some of its
 * builtins (undici, cjs-module-lexer, acorn) from /usr/share/nodejs, a path compiled in; the private
 * root's /usr/share is overlaid on the real one in a private mount namespace (`unshare --mount`, or
 * `--user --map-root-user` when not root), so nothing outside that process sees it.
 */
export async function prepareDebianNode18(): Promise<Prepared<ForeignNode>> {
  return requireInCi(await nativeNode18());
}

async function nativeNode18(): Promise<Prepared<ForeignNode>> {
  const missing = await tools();
  if (missing) return unavailable(missing);
  if (!onPath('unshare')) return unavailable('unshare (util-linux) is not installed');
  const arch = (await sh('dpkg', ['--print-architecture'])).trim();
  const triplet = TRIPLET[arch];
  if (!triplet) return { ok: false, reason: `no multiarch triplet known for ${arch}` };
  const version = await findVersion('nodejs', arch, '18.');
  if (!version) return unavailable(`apt knows no nodejs 18.x for ${arch} (Debian bookworm's main/security lists are needed)`);
  const root = path.join(cacheDir(), 'roots', `nodejs-${version}-${arch}`);
  await unpackRoot(root, () =>
    packageClosure({
      arch,
      roots: [
        { name: 'nodejs', version },
        { name: 'libnode108', version },
      ],
      skipInstalled: true,
    }),
  );
  const script = 'r=$0; mount -t overlay fleet-node18 -o "lowerdir=$r/usr/share:/usr/share" /usr/share || exit 97; ' + `LD_LIBRARY_PATH="$r/usr/lib/${triplet}" exec "$r/usr/bin/node" "$@"`;
  const ns = isRoot() ? ['--mount', '--propagation', 'private'] : ['--user', '--map-root-user', '--mount', '--propagation', 'private'];
  return check({
    label: `Debian nodejs ${version} ${arch} (private root ${root})`,
    debArch: arch,
    root,
    command: 'unshare',
    prefixArgs: [...ns, '/bin/sh', '-c', script, root],
    env: cleanEnv(),
  });
}

async function ensureForeignArch(arch: string): Promise<string | null> {
  const foreign = (await sh('dpkg', ['--print-foreign-architectures'])).split('\n').map((s) => s.trim());
  if (foreign.includes(arch) && (await findVersion('nodejs', arch, '18.'))) return null;
  if (!isRoot()) return `dpkg has no ${arch} architecture or no ${arch} package lists (as root: dpkg --add-architecture ${arch} && apt-get update)`;
  if (!foreign.includes(arch)) await sh('dpkg', ['--add-architecture', arch]);
  await sh('apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'update', '-qq']);
  return (await findVersion('nodejs', arch, '18.')) ? null : `apt knows no nodejs 18.x for ${arch} after apt-get update`;
}

/** Debian's nodejs 18 for `arch` (armhf or arm64) under qemu-user, its root given with -L. */
export async function prepareEmulatedNode18(arch: 'armhf' | 'arm64'): Promise<Prepared<ForeignNode>> {
  return requireInCi(await emulatedNode18(arch));
}

async function emulatedNode18(arch: 'armhf' | 'arm64'): Promise<Prepared<ForeignNode>> {
  const missing = await tools();
  if (missing) return unavailable(missing);
  const qemu = onPath(QEMU[arch]!) ?? onPath(`${QEMU[arch]}-static`);
  if (!qemu) return unavailable(`${QEMU[arch]} is not installed (Debian package qemu-user)`);
  const archProblem = await ensureForeignArch(arch);
  if (archProblem) return unavailable(archProblem);
  const version = (await findVersion('nodejs', arch, '18.'))!;
  const root = path.join(cacheDir(), 'roots', `nodejs-${version}-${arch}`);
  await unpackRoot(root, () =>
    packageClosure({
      arch,
      roots: [
        { name: 'nodejs', version },
        { name: 'libnode108', version },
      ],
      skipInstalled: false,
    }),
  );
  return check({
    label: `Debian nodejs ${version} ${arch} under ${path.basename(qemu)} (root ${root})`,
    debArch: arch,
    root,
    command: qemu,
    // -L redirects the guest's file lookups (loader, libraries, /usr/share/nodejs) to the root first.
    prefixArgs: ['-L', root, path.join(root, 'usr/bin/node')],
    env: cleanEnv(),
  });
}

/** The emulated 32-bit ARM board (armhf); arm64 if armhf cannot be prepared. */
export async function prepareArmBoardNode18(): Promise<Prepared<ForeignNode>> {
  const armhf = await emulatedNode18('armhf');
  if (armhf.ok) return armhf;
  const arm64 = await emulatedNode18('arm64');
  return requireInCi(arm64.ok ? arm64 : { ok: false, reason: `armhf: ${armhf.reason}; arm64: ${arm64.reason}` });
}

export interface SpawnOptions {
  cap?: MemoryCap;
  cwd?: string;
  env?: Record<string, string>;
}

/** Starts `node args…` with the foreign node (inside the cap's cgroup when given). Stop it by PID. */
export function spawnForeign(node: ForeignNode, args: string[], o: SpawnOptions = {}): ChildProcess {
  const full = { command: node.command, args: [...node.prefixArgs, ...args] };
  const { command, args: argv } = o.cap ? o.cap.wrap(full.command, full.args) : full;
  return spawn(command, argv, { cwd: o.cwd, env: { ...node.env, ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * Peak resident set of a live process, sampled until it exits: VmHWM (the kernel's own high-water mark,
 * mapped files included) and the largest RssAnon seen (its private memory: heap, and under qemu the translator).
 */
export function trackHighWater(pid: number, everyMs = 100): { stop(): number | null; anonPeak(): number | null } {
  let hwm: number | null = null;
  let anon: number | null = null;
  const sample = (): void => {
    fs.readFile(`/proc/${pid}/status`, 'utf8').then(
      (s) => {
        const h = /^VmHWM:\s+(\d+) kB$/m.exec(s);
        if (h) hwm = Math.max(hwm ?? 0, Number(h[1]) * 1024);
        const a = /^RssAnon:\s+(\d+) kB$/m.exec(s);
        if (a) anon = Math.max(anon ?? 0, Number(a[1]) * 1024);
      },
      () => {},
    );
  };
  sample();
  const timer = setInterval(sample, everyMs);
  return { stop: () => (clearInterval(timer), hwm), anonPeak: () => anon };
}

/** What a run under a foreign node measured of memory. */
export interface MemoryPeaks {
  /** The process's own peak RSS (host pages; under qemu this includes the translator), and its peak RssAnon (sampled). */
  hwmBytes: number | null;
  anonPeakBytes: number | null;
  /** The cgroup's peak charge (page cache included), and its sampled peak of anonymous memory, when run under a cap. */
  cgroupPeakBytes: number | null;
  cgroupAnonPeakBytes: number | null;
  oomKills: number;
}

export interface ForeignRun extends MemoryPeaks {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  wallMs: number;
}

const OUTPUT_LIMIT = 1 << 20;

/** Runs `node args…` to completion (killed by PID after timeoutMs), bounding what it keeps of its output. */
export async function runForeign(node: ForeignNode, args: string[], o: SpawnOptions & { timeoutMs?: number } = {}): Promise<ForeignRun> {
  const t0 = performance.now();
  const child = spawnForeign(node, args, o);
  const hwm = trackHighWater(child.pid!);
  const anon = o.cap?.trackAnon();
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => {
    if (stdout.length < OUTPUT_LIMIT) stdout += b.toString('utf8');
  });
  child.stderr!.on('data', (b: Buffer) => {
    if (stderr.length < OUTPUT_LIMIT) stderr += b.toString('utf8');
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 300_000);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
  clearTimeout(timer);
  const wallMs = performance.now() - t0;
  return {
    code,
    signal,
    stdout,
    stderr,
    wallMs,
    hwmBytes: hwm.stop(),
    anonPeakBytes: hwm.anonPeak(),
    cgroupPeakBytes: o.cap ? await o.cap.peakBytes() : null,
    cgroupAnonPeakBytes: anon?.stop() ?? null,
    oomKills: o.cap ? await o.cap.oomKills() : 0,
  };
}
