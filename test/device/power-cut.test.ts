import { describe, expect, it } from 'vitest';
import path from 'node:path';
import { chunkCount, chunkList, sha256Hex, updateIdOf } from '../../protocol/chunks.ts';
import type { ReleaseStep } from '../../protocol/release.ts';
import { synthesizeModel, synthesizeUpdate } from '../../publisher/synth.ts';
import type { HealthCheck } from '../../device/health.ts';
import { Installer, type Recovery, type TrialOutcome } from '../../device/installer.ts';
import { attemptOf } from '../../device/journal.ts';
import { DeviceStorage, type ActiveRelease, type AgentMemory } from '../../device/storage.ts';
import type { FsPort } from '../../platform/fs-port.ts';
import { silentLogger } from '../../util/log.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { mulberry32 } from '../../util/random.ts';
import { CrashFs, PowerCut } from '../support/crash-fs.ts';

const DIR = '/device';
const CHUNK = 1024;
const LAYERS: Array<[number, number]> = [
  [64, 96],
  [128, 64],
  [10, 128],
];
const DIGEST_FILE = /^[0-9a-f]{64}\.safetensors$/;

// --- the model of the disk itself --------------------------------------------------

describe('CrashFs: what survives a power cut', () => {
  const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
  const text = (b: Uint8Array): string => new TextDecoder().decode(b);
  const seeded = (): CrashFs => {
    const c = CrashFs.empty();
    c.seedDir('/d');
    c.seedFile('/d/old', 'old');
    return c;
  };
  const write = async (c: CrashFs, file: string, s: string, sync: boolean): Promise<void> => {
    const h = await c.open(file, 'w');
    await h.write(bytes(s), 0, s.length, 0);
    if (sync) await h.sync();
    await h.close();
  };

  it('a write without fsync is lost; with fsync it survives', async () => {
    const c = seeded();
    const h = await c.open('/d/old', 'r+');
    await h.write(bytes('new'), 0, 3, 0);
    expect(text(await c.readFile('/d/old'))).toBe('new');
    expect(text(await c.crash().readFile('/d/old'))).toBe('old');
    await h.sync();
    expect(text(await c.crash().readFile('/d/old'))).toBe('new');
  });

  it('a new file, fsynced, is lost unless its directory is fsynced too', async () => {
    const c = seeded();
    await write(c, '/d/f', 'data', true);
    expect(await c.crash().exists('/d/f')).toBe(false);
    await c.fsyncDir('/d');
    expect(text(await c.crash().readFile('/d/f'))).toBe('data');
  });

  it('a directory fsync without the file fsync leaves the name and loses the bytes', async () => {
    const c = seeded();
    await write(c, '/d/f', 'data', false);
    await c.fsyncDir('/d');
    expect((await c.crash().readFile('/d/f')).byteLength).toBe(0);
  });

  it('a rename without a directory fsync is undone; with one it survives', async () => {
    const c = seeded();
    await write(c, '/d/tmp', 'new', true);
    await c.rename('/d/tmp', '/d/old');
    expect(text(await c.readFile('/d/old'))).toBe('new');
    const lost = c.crash();
    expect(text(await lost.readFile('/d/old'))).toBe('old');
    expect(await lost.readdir('/d')).toEqual(['old']);
    await c.fsyncDir('/d');
    const kept = c.crash();
    expect(text(await kept.readFile('/d/old'))).toBe('new');
    expect(await kept.readdir('/d')).toEqual(['old']);
  });

  it('an unlink without a directory fsync is undone', async () => {
    const c = seeded();
    await c.rm('/d/old');
    expect(await c.exists('/d/old')).toBe(false);
    expect(await c.crash().exists('/d/old')).toBe(true);
  });

  it('a symlink replaced by rename and a directory fsync survives; before the fsync the old one does', async () => {
    const c = seeded();
    c.seedFile('/d/m/a', 'A');
    c.seedFile('/d/m/b', 'B');
    c.seedLink('m/a', '/d/cur');
    expect(text(await c.readFile('/d/cur'))).toBe('A');
    await c.symlink('m/b', '/d/cur.tmp');
    await c.rename('/d/cur.tmp', '/d/cur');
    expect(await c.readlink('/d/cur')).toBe('m/b');
    expect(await c.crash().readlink('/d/cur')).toBe('m/a');
    await c.fsyncDir('/d');
    const after = c.crash();
    expect(await after.readlink('/d/cur')).toBe('m/b');
    expect(text(await after.readFile('/d/cur'))).toBe('B');
    expect(await after.exists('/d/cur.tmp')).toBe(false);
  });

  it('cutAfter(n): the n-th mutating operation and all later ones throw PowerCut; reads do not count', async () => {
    const c = seeded();
    c.cutAfter(2);
    await c.readFile('/d/old');
    await c.fsyncDir('/d');
    await expect(c.rm('/d/old')).rejects.toBeInstanceOf(PowerCut);
    expect(c.dead).toBe(true);
    await expect(c.readFile('/d/old')).rejects.toBeInstanceOf(PowerCut);
    expect(await c.crash().exists('/d/old')).toBe(true);
  });
});

// --- the install path under power cuts ---------------------------------------------

interface Scenario {
  fs: CrashFs;
  base: string;
  target: string;
  active: ActiveRelease;
}

/** A device directory as provision and a complete download leave it, all durable. */
function provisioned(kind: 'low-rank' | 'full-model'): Scenario {
  const baseBytes = synthesizeModel(11, LAYERS);
  const u = synthesizeUpdate(baseBytes, 3, 12);
  const payload = kind === 'low-rank' ? u.payload : u.target;
  const step: ReleaseStep = {
    updateId: updateIdOf(payload),
    from: kind === 'low-rank' ? u.baseDigest : null,
    to: u.targetDigest,
    size: payload.byteLength,
    sha256: sha256Hex(payload),
    chunkSize: CHUNK,
    chunks: chunkCount(payload.byteLength, CHUNK),
    listSha256: sha256Hex(chunkList(payload, CHUNK)),
  };
  const active: ActiveRelease = { releaseHash: 'ab'.repeat(32), seq: 1, target: u.targetDigest, steps: [step], rollback: false };
  const s = new DeviceStorage(DIR);
  const c = CrashFs.empty();
  c.seedDir(path.posix.join(DIR, 'models'));
  c.seedFile(s.modelPath(u.baseDigest), baseBytes);
  c.seedLink(`models/${u.baseDigest}.safetensors`, s.currentPath);
  c.seedFile(path.posix.join(DIR, 'previous'), JSON.stringify({ digest: null }));
  const memory: AgentMemory = { highestSeq: 1, clockFloor: 0, refused: [], handled: active.releaseHash, active, lastStatus: null };
  c.seedFile(path.posix.join(DIR, 'state.json'), JSON.stringify(memory));
  const dl = s.downloadDir(step.updateId);
  c.seedFile(path.posix.join(dl, 'payload'), payload);
  c.seedFile(path.posix.join(dl, 'bitmap'), new Uint8Array(Math.ceil(step.chunks / 8)).fill(0xff));
  c.seedFile(path.posix.join(dl, 'list'), chunkList(payload, CHUNK));
  return { fs: c, base: u.baseDigest, target: u.targetDigest, active };
}

/** digestHealthCheck, reading through the port. */
function healthOver(fsys: FsPort): HealthCheck {
  return {
    async check(modelPath, expected) {
      try {
        const got = await digestModelFile(modelPath, fsys);
        return got === expected ? { healthy: true } : { healthy: false, message: `digest ${got.slice(0, 16)}…` };
      } catch (e) {
        if (e instanceof PowerCut) throw e;
        return { healthy: false, message: (e as Error).message };
      }
    },
  };
}

/** The digest of a model file, or why it cannot be read (a torn file). */
const digestOf = (file: string, fsys: FsPort): Promise<string> => digestModelFile(file, fsys).catch((e: unknown) => `unreadable: ${(e as Error).message}`);

/** How the device under test checks a trial: its health port and command, and its attempts. */
interface TrialSetup {
  health?: (fsys: CrashFs) => HealthCheck;
  healthCmd?: string;
  maxAttempts?: number;
}

interface Booted {
  storage: DeviceStorage;
  installer: Installer;
  memory: AgentMemory;
  recovered: Recovery | undefined;
  /** How the resumed trial ended, when the start resumed one. */
  trial?: TrialOutcome;
}

/** The agent's start(): storage, memory, installer, recover, and (as the agent does next) the resumed trial. */
async function boot(fsys: CrashFs, t: TrialSetup = {}): Promise<Booted> {
  const storage = new DeviceStorage(DIR, fsys);
  await storage.init();
  const memory = await storage.memory();
  const installer = new Installer(
    storage,
    {
      deviceId: 'd1',
      validateTimeoutMs: 1000,
      healthTimeoutMs: 10_000,
      onSwitchTimeoutMs: 1000,
      healthCmd: t.healthCmd,
      maxAttempts: t.maxAttempts,
    },
    (t.health ?? healthOver)(fsys),
    silentLogger,
  );
  const recovered = await installer.recover();
  let trial: TrialOutcome | undefined;
  if (recovered?.action === 'resume-trial') {
    const j = recovered.journal;
    trial = await installer.trial(j.target, j.previous, j.rollback, attemptOf(j), async () => storage.saveMemory(memory));
  }
  if (recovered?.action === 'resume-trial' || recovered?.action === 'rolled-back') {
    memory.active = null;
    await storage.saveMemory(memory);
  }
  // The agent removes a recovery's journal once its switch back is recorded.
  if (recovered?.action === 'rolled-back') await installer.closeJournal();
  return { storage, installer, memory, recovered, trial };
}

/** The agent's install(), step for step, with its status saves: build, switch (attempt 1), the trial. */
async function install(storage: DeviceStorage, installer: Installer, memory: AgentMemory, a: ActiveRelease): Promise<TrialOutcome> {
  const previous = (await storage.pointer())!.digest;
  const verified = await installer.verify(a.steps);
  await storage.saveMemory(memory); // verify-passed
  await installer.stage(previous, verified, a.target, a.rollback);
  await installer.switchTo(a.target, previous, a.rollback, 1);
  await storage.saveMemory(memory); // apply-done
  const r = await installer.trial(a.target, previous, a.rollback, 1, async () => storage.saveMemory(memory)); // trial-retry
  if (r.healthy) for (const s of a.steps) await storage.removeDownload(s.updateId);
  memory.active = null;
  await storage.saveMemory(memory); // health-passed or health-failed
  return r;
}

/** install() where the update is healthy. */
async function installHealthy(storage: DeviceStorage, installer: Installer, memory: AgentMemory, a: ActiveRelease): Promise<void> {
  const r = await install(storage, installer, memory, a);
  if (!r.healthy) throw new Error(`unhealthy: ${r.message}`);
}

/** Run the install on a fresh copy of the scenario, cut at its mutating operation `k` (none when undefined). */
async function runCut(sc: Scenario, k: number | undefined): Promise<{ fsys: CrashFs; ops: number }> {
  const fsys = sc.fs.crash();
  const { storage, installer, memory } = await boot(fsys);
  const before = fsys.ops;
  if (k !== undefined) fsys.cutAfter(k);
  try {
    await installHealthy(storage, installer, memory, memory.active!);
  } catch (e) {
    if (!fsys.dead) throw e;
  }
  if (k !== undefined) expect(fsys.dead, `cut at ${k} never happened`).toBe(true);
  return { fsys, ops: fsys.ops - before };
}

/** Restart on what survived: recover, check the model, then finish the install. */
async function restartAndCheck(sc: Scenario, survived: CrashFs, what: string): Promise<'old' | 'new'> {
  const { storage, installer, memory } = await boot(survived);
  const p = await storage.pointer();
  expect(p, `${what}: no pointer`).toBeDefined();
  const digest = await digestOf(storage.currentPath, survived);
  expect([sc.base, sc.target], `${what}: current is torn or foreign`).toContain(digest);
  expect(p!.digest, what).toBe(digest);
  const models = await survived.readdir(path.posix.join(DIR, 'models'));
  expect(
    models.filter((f) => !DIGEST_FILE.test(f)),
    `${what}: staging left in models/`,
  ).toEqual([]);
  expect(
    (await survived.readdir(DIR)).filter((f) => f.includes('.tmp-')),
    `${what}: temporary files left`,
  ).toEqual([]);
  expect(await storage.journal(), `${what}: journal left`).toBeUndefined();
  for (const f of models) expect(await digestOf(path.posix.join(DIR, 'models', f), survived), `${what}: ${f}`).toBe(f.slice(0, 64));
  const outcome = digest === sc.base ? 'old' : 'new';
  // The device can always finish: as the agent resumes an active release not yet running.
  if (outcome === 'old') await installHealthy(storage, installer, memory, memory.active ?? sc.active);
  expect(await digestOf(storage.currentPath, survived), `${what}: finishing`).toBe(sc.target);
  expect((await storage.pointer())!.digest).toBe(sc.target);
  // And what it finished with survives the next power cut.
  expect(await digestOf(storage.currentPath, survived.crash()), `${what}: finished, then cut`).toBe(sc.target);
  return outcome;
}

/** 200 cut points in 1..n: the first and last three, the rest from a seeded PRNG. */
function cutPoints(n: number, seed: number): number[] {
  const rand = mulberry32(seed);
  const ks = [1, 2, 3, n - 2, n - 1, n].filter((k) => k >= 1 && k <= n);
  while (ks.length < 200) ks.push(1 + Math.floor(rand() * n));
  return ks;
}

describe.each(['low-rank', 'full-model'] as const)('power cut during a %s install', (kind) => {
  it('at 200 random points: the device restarts on the old or the new model, never a torn one, and can finish', async () => {
    const sc = provisioned(kind);
    const { fsys: clean, ops: n } = await runCut(sc, undefined);
    expect(await digestOf(path.posix.join(DIR, 'current.safetensors'), clean.crash())).toBe(sc.target);
    const ks = cutPoints(n, kind === 'low-rank' ? 0x5eed : 0xf011);
    const tally = { old: 0, new: 0 };
    const byPoint = new Map<number, 'old' | 'new'>();
    for (const k of ks) {
      const survived = (await runCut(sc, k)).fsys.crash();
      const outcome = await restartAndCheck(sc, survived, `${kind}, cut at ${k}/${n}`);
      tally[outcome]++;
      byPoint.set(k, outcome);
    }
    const newFrom = Math.min(...[...byPoint].filter(([, o]) => o === 'new').map(([k]) => k));
    console.log(
      `power cut, ${kind} install: ${n} mutating operations ${JSON.stringify(Object.fromEntries(clean.counts))}; ` +
        `${ks.length} cuts (${byPoint.size} distinct points) -> old ${tally.old}, new ${tally.new}; new from operation ${newFrom} on`,
    );
    expect(tally.old + tally.new).toBe(200);
    // Monotone: once a cut ends on the new model, every later one does too.
    for (const [k, o] of byPoint) expect(o, `cut at ${k}`).toBe(k >= newFrom ? 'new' : 'old');
  }, 120_000);

  it('a kill (SIGKILL: page cache kept) at every operation: restart, recover, no temporary files, finish', async () => {
    const sc = provisioned(kind);
    const n = (await runCut(sc, undefined)).ops;
    const tally = { old: 0, new: 0 };
    for (let k = 1; k <= n; k++) tally[await restartAndCheck(sc, (await runCut(sc, k)).fsys.revive(), `${kind}, killed at ${k}/${n}`)]++;
    console.log(`kill, ${kind} install: ${n} cut points -> old ${tally.old}, new ${tally.new}`);
  }, 120_000);

  it('a second power cut during recovery still leaves the old or the new model', async () => {
    const sc = provisioned(kind);
    const n = (await runCut(sc, undefined)).ops;
    const rand = mulberry32(kind === 'low-rank' ? 77 : 78);
    for (let i = 0; i < 60; i++) {
      const k = 1 + Math.floor(rand() * n);
      const first = (await runCut(sc, k)).fsys.crash();
      // Count recovery's own operations on a copy, then cut it somewhere in them.
      const probe = first.crash();
      await boot(probe);
      if (probe.ops === 0) continue;
      const j = 1 + Math.floor(rand() * probe.ops);
      const again = first.crash();
      again.cutAfter(j);
      await boot(again).then(
        () => expect.fail('recovery was not cut'),
        (e: unknown) => expect(again.dead, String(e)).toBe(true),
      );
      await restartAndCheck(sc, again.crash(), `${kind}, cut at ${k}/${n}, then in recovery at ${j}/${probe.ops}`);
    }
  }, 120_000);
});

// --- the trial: attempts counted across power cuts (issue: a power cut is not a verdict) ---

/**
 * A health port that takes the power away whenever it runs: the model crashes the device in every
 * attempt. (With a health command configured: without one the switch is the commit.)
 */
const crashingHealth =
  (crashes: { n: number }) =>
  (fsys: CrashFs): HealthCheck => ({
    async check() {
      crashes.n++;
      fsys.dead = true;
      throw new PowerCut(fsys.ops, 'the model under trial crashed the device');
    },
  });

/** How the device came to rest: healthy on the new model, or back on the old one after `attempt` attempts. */
type Rest = { healthy: boolean; attempt: number; reason: string | null; boots: number };

/**
 * The device's life from a complete download: install (cut at operation k
 * when k is given), then reboot on what survived, as often as it takes,
 * until the install has ended. A start that finds an unfinished build, or
 * the release still active on the old model, installs again (as the agent
 * resumes an active release).
 */
async function untilRest(sc: Scenario, t: TrialSetup, k: number | undefined, cutsLeft = 0): Promise<Rest & { fsys: CrashFs }> {
  let fsys = sc.fs.crash();
  for (let boots = 1; boots <= 50; boots++) {
    // Later starts may themselves be cut (during recovery: journaling the next attempt, switching again).
    if (boots > 1 && cutsLeft > 0) {
      cutsLeft--;
      fsys.cutAfter(1 + (boots % 7));
    }
    try {
      const b = await boot(fsys, t);
      // The first start has nothing to recover: the cut falls in the install.
      if (boots === 1 && k !== undefined) fsys.cutAfter(k);
      if (b.recovered?.action === 'rolled-back') return { healthy: false, attempt: attemptOf(b.recovered.journal), reason: 'crashed-while-testing', boots, fsys };
      const r = b.trial ?? (b.memory.active ? await install(b.storage, b.installer, b.memory, b.memory.active) : undefined);
      if (!r) throw new Error('the device has nothing left to do, yet the install never ended');
      return { healthy: r.healthy, attempt: r.attempt, reason: r.healthy ? null : r.reason, boots, fsys };
    } catch (e) {
      if (!(e instanceof PowerCut)) throw e;
    }
    fsys = fsys.crash();
  }
  throw new Error('the device never came to rest');
}

describe('the trial after a switch counts attempts across power cuts (as A/B boot counters do)', () => {
  it('no health command: a cut at every operation of the install ends ok on the new model, never rolled back', async () => {
    const sc = provisioned('low-rank');
    const n = (await runCut(sc, undefined)).ops;
    for (let k = 1; k <= n; k++) {
      const r = await untilRest(sc, {}, k);
      expect(r, `cut at ${k}/${n}`).toMatchObject({ healthy: true, reason: null });
      expect(await digestOf(path.posix.join(DIR, 'current.safetensors'), r.fsys.crash()), `cut at ${k}/${n}`).toBe(sc.target);
    }
  }, 120_000);

  it('a model that crashes the device in every attempt: exactly N crashes, then back on the old model', async () => {
    const sc = provisioned('low-rank');
    for (const max of [1, 3, 5]) {
      const crashes = { n: 0 };
      const r = await untilRest(sc, { health: crashingHealth(crashes), healthCmd: 'true', maxAttempts: max }, undefined);
      expect(r, `maxAttempts ${max}`).toMatchObject({ healthy: false, attempt: max, reason: 'crashed-while-testing' });
      expect(crashes.n, `maxAttempts ${max}`).toBe(max);
      expect(r.boots).toBe(max + 1);
      const after = r.fsys.crash();
      expect(await digestOf(path.posix.join(DIR, 'current.safetensors'), after)).toBe(sc.base);
      expect(await new DeviceStorage(DIR, after).journal()).toBeUndefined();
    }
  }, 120_000);

  it('a health command that always fails, cut at every operation (the attempt-count writes among them): rolled back after exactly N attempts', async () => {
    const sc = provisioned('low-rank');
    const t: TrialSetup = { healthCmd: 'echo "inference failed"; exit 1', maxAttempts: 3 };
    const clean = await untilRest(sc, t, undefined);
    expect(clean).toMatchObject({ healthy: false, attempt: 3, reason: 'health-check-failed', boots: 1 });
    // The operations of the whole failing install, three attempts and the switch back included.
    const probe = sc.fs.crash();
    const b = await boot(probe, t);
    const before = probe.ops;
    await install(b.storage, b.installer, b.memory, b.memory.active!);
    const n = probe.ops - before;
    const journalWrites = probe.counts.get('rename') ?? 0;
    let rolledBackByRecovery = 0;
    for (let k = 1; k <= n; k++) {
      const r = await untilRest(sc, t, k);
      expect(r.healthy, `cut at ${k}/${n}`).toBe(false);
      expect(r.attempt, `cut at ${k}/${n}`).toBe(3);
      if (r.reason === 'crashed-while-testing') rolledBackByRecovery++;
      else expect(r.reason, `cut at ${k}/${n}`).toBe('health-check-failed');
      const after = r.fsys.crash();
      expect(await digestOf(path.posix.join(DIR, 'current.safetensors'), after), `cut at ${k}/${n}`).toBe(sc.base);
      expect(await new DeviceStorage(DIR, after).journal(), `cut at ${k}/${n}`).toBeUndefined();
    }
    console.log(`failing health command: ${n} cut points (${journalWrites} renames) -> all rolled back after 3 attempts; ${rolledBackByRecovery} by recovery after a cut in the last attempt`);
    expect(rolledBackByRecovery).toBeGreaterThan(0);
  }, 240_000);

  it('cuts during recovery itself (while it journals the next attempt) still end after exactly N attempts', async () => {
    const sc = provisioned('low-rank');
    const crashes = { n: 0 };
    const rand = mulberry32(21);
    for (let i = 0; i < 30; i++) {
      crashes.n = 0;
      const r = await untilRest(sc, { health: crashingHealth(crashes), healthCmd: 'true', maxAttempts: 3 }, undefined, 1 + Math.floor(rand() * 4));
      expect(r).toMatchObject({ healthy: false, attempt: 3, reason: 'crashed-while-testing' });
      expect(crashes.n).toBeLessThanOrEqual(3);
      expect(await digestOf(path.posix.join(DIR, 'current.safetensors'), r.fsys.crash())).toBe(sc.base);
    }
  }, 120_000);
});
