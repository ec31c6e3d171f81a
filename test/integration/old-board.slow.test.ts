/**
 * Issue 17: old hardware. Debian's own nodejs 18 (unpacked privately, the machine's node untouched)
 * and an emulated 32-bit ARM board (Debian's armhf nodejs 18 under qemu-arm, memory capped at 256 MB
 * by a cgroup) run a probe and, once `npm run build` has made it, the device bundle through a real update.
 * Each run prints one `old-board:` JSON line with its time and peak memory (docs/device.md quotes them).
 * Skipped with the reason printed when a tool is missing (with $CI set, that is a failure instead).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { prepareArmBoardNode18, prepareDebianNode18, requireInCi, runForeign, type ForeignNode } from '../support/foreign-node.ts';
import { createFixture, type Fixture } from '../support/harness.ts';
import { createMemoryCap, type MemoryCap } from '../support/memory-cap.ts';
import { runDeviceUpdate, runProbe } from '../support/old-board.ts';
import type { Prepared } from '../support/debian-root.ts';

const BUNDLE = path.resolve(process.env.FLEET_DEVICE_BUNDLE ?? 'dist/fleet-device.mjs');
const BOARD_MEMORY = 256 * 1024 * 1024;
/** FLEET_OLD_BOARD_MODEL=25x1024x1024: the device update's model (layers × rows × cols of f32); default the harness's small one. */
function modelLayers(spec: string | undefined): Array<[number, number]> | undefined {
  if (!spec) return undefined;
  const m = /^(\d+)x(\d+)x(\d+)$/.exec(spec);
  if (!m) throw new Error(`FLEET_OLD_BOARD_MODEL=${spec}: expected LAYERSxROWSxCOLS, e.g. 25x1024x1024`);
  return Array.from({ length: Number(m[1]) }, () => [Number(m[2]), Number(m[3])] as [number, number]);
}
const LAYERS = modelLayers(process.env.FLEET_OLD_BOARD_MODEL);
const MB = (n: number | null): number | null => (n === null ? null : Math.round((n / (1 << 20)) * 10) / 10);

const node18 = await prepareDebianNode18();
const board = await prepareArmBoardNode18();
// Whether this process may create a capped cgroup at all (root with a memory controller).
const capCheck = requireInCi(await createMemoryCap('check', BOARD_MEMORY));
if (capCheck.ok) await capCheck.value.remove();
const haveBundle = existsSync(BUNDLE);

for (const [what, p] of [
  ['Debian nodejs 18', node18],
  ['the emulated ARM board', board],
] as const) {
  if (!p.ok) console.log(`old-board: skipping ${what}: ${p.reason}`);
}
if (!capCheck.ok) console.log(`old-board: skipping the emulated ARM board (no 256 MB cap): ${capCheck.reason}`);
if (!haveBundle) console.log(`old-board: skipping the device update: ${BUNDLE} is not built (npm run build)`);

let f: Fixture | undefined;
let cap: MemoryCap | undefined;
afterEach(async () => {
  await f?.close(); // stops the device process by PID before its cgroup goes
  f = undefined;
  await cap?.remove();
  cap = undefined;
});

async function boardCap(name: string): Promise<MemoryCap> {
  const c = await createMemoryCap(name, BOARD_MEMORY);
  if (!c.ok) throw new Error(c.reason);
  cap = c.value;
  return cap;
}

interface Target {
  name: string;
  node: Prepared<ForeignNode>;
  capped: boolean;
}
/** process.arch of a node built for a Debian architecture. */
const NODE_ARCH: Record<string, string> = { amd64: 'x64', armhf: 'arm', arm64: 'arm64', i386: 'ia32' };
const targets: Target[] = [
  { name: 'Debian nodejs 18 (native)', node: node18, capped: false },
  // armhf; arm64 under qemu-aarch64 only when armhf cannot be had (the node's label says which)
  { name: 'emulated ARM board, 256 MB', node: board, capped: true },
];

for (const t of targets) {
  const skip = !t.node.ok || (t.capped && !capCheck.ok);
  describe.skipIf(skip)(t.name, () => {
    const node = (): ForeignNode => (t.node as { ok: true; value: ForeignNode }).value;

    it('runs node 18: SHA-256 of what it reads over a loopback TCP connection', async () => {
      const c = t.capped ? await boardCap('probe') : undefined;
      const r = await runProbe(node(), { cap: c });
      console.log(
        `old-board: ${JSON.stringify({
          run: 'probe',
          node: node().label,
          arch: r.reply.arch,
          version: r.reply.version,
          wallMs: Math.round(r.wallMs),
          probeMs: r.reply.ms,
          guestRssMB: r.reply.rss ? MB(r.reply.rss) : null /* qemu-user reports 0 */,
          hostHwmMB: MB(r.hwmBytes),
          hostAnonPeakMB: MB(r.anonPeakBytes),
          cgroupPeakMB: MB(r.cgroupPeakBytes),
          cgroupAnonPeakMB: MB(r.cgroupAnonPeakBytes),
          capMB: c ? MB(c.limitBytes) : null,
        })}`,
      );
      expect(r.code).toBe(0);
      expect(r.reply.sha256).toBe(r.sentSha256);
      expect(r.reply.version).toMatch(/^v18\./);
      expect(r.reply.arch).toBe(NODE_ARCH[node().debArch]);
      if (c) {
        expect(r.oomKills).toBe(0);
        expect(r.cgroupPeakBytes).toBeGreaterThan(0);
        expect(r.cgroupPeakBytes!).toBeLessThanOrEqual(BOARD_MEMORY);
      }
    }, 600_000);

    // Only where there is a cap.
    if (t.capped)
      it('the 256 MB cap is real: a program that fills 400 MB is killed', async () => {
        const c = await boardCap('overfill');
        const fill = 'const a = []; for (let i = 0; i < 40; i++) a.push(Buffer.alloc(10 << 20, i + 1)); console.log(a.length);';
        const r = await runForeign(node(), ['-e', fill], { cap: c, timeoutMs: 300_000 });
        console.log(`old-board: ${JSON.stringify({ run: 'overfill', node: node().label, exit: r.code ?? r.signal, oomKills: r.oomKills, cgroupPeakMB: MB(r.cgroupPeakBytes) })}`);
        expect(r.stdout).not.toContain('40');
        expect(r.signal).toBe('SIGKILL');
        expect(r.oomKills).toBeGreaterThan(0);
      }, 600_000);

    it.skipIf(!haveBundle)(
      `completes a real update with ${path.relative(process.cwd(), BUNDLE)}`,
      async () => {
        f = await createFixture('old-board', { layers: LAYERS, rank: LAYERS ? 8 : undefined });
        const c = t.capped ? await boardCap('device') : undefined;
        const r = await runDeviceUpdate(f, node(), BUNDLE, { id: t.capped ? 'board-1' : 'node18-1', cap: c });
        console.log(
          `old-board: ${JSON.stringify({
            run: 'device-update',
            node: node().label,
            modelBytes: f.base.byteLength,
            idleMs: Math.round(r.idleMs),
            updateMs: Math.round(r.updateMs),
            payloadBytes: r.bytes,
            wire: r.wire,
            hostHwmMB: MB(r.hwmBytes),
            hostAnonPeakMB: MB(r.anonPeakBytes),
            cgroupPeakMB: MB(r.cgroupPeakBytes),
            cgroupAnonPeakMB: MB(r.cgroupAnonPeakBytes),
            capMB: c ? MB(c.limitBytes) : null,
          })}`,
        );
        expect(r.running).toBe(f.update.targetDigest);
        expect(r.diskDigest).toBe(f.update.targetDigest);
        expect(r.bytes).toBe(f.update.payload.byteLength);
        if (c) expect(r.oomKills).toBe(0);
      },
      900_000,
    );
  });
}
