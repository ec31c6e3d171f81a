/**
 * `fleet build` refuses before computing when --out cannot be written, asks
 * for --yes before writing an update larger than half the model or far from
 * its target, and `fleet inspect --base` refuses a model the update does not
 * start from (issue 15, part 4).
 */
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { modelPair, writeModels, type Spec } from '../support/models.ts';

function fleet(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [FLEET_BIN, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const SPECS: Spec[] = [
  { name: 'a.weight', shape: [24, 16] },
  { name: 'b.weight', shape: [24, 16] },
];

let dir: string;
let low: { base: string; target: string };
let full: { base: string; target: string };
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-buildguards-'));
  low = await writeModels(path.join(dir, 'low'), modelPair(3, SPECS, { 'a.weight': { rank: 2 } }));
  // Every weight changed at full rank: a dense update is most of the model, rank 1 leaves most of ΔW out.
  full = await writeModels(path.join(dir, 'full'), modelPair(4, SPECS, { 'a.weight': { dense: true }, 'b.weight': { dense: true } }));
});
afterAll(async () => {
  await fs.chmod(path.join(dir, 'ro'), 0o755).catch(() => undefined);
  await fs.rm(dir, { recursive: true, force: true });
});

function expectOneLine(r: ReturnType<typeof fleet>, message: RegExp): void {
  expect(r.code).toBe(1);
  expect(r.err.trim().split('\n')).toHaveLength(1);
  expect(r.err).toMatch(message);
}

describe('fleet build checks --out before it computes', () => {
  it('names a missing directory before reading any model', () => {
    const out = path.join(dir, 'no-such-dir', 'u.cbor');
    // The target does not exist either: the --out check comes first.
    expectOneLine(
      fleet(['build', '--base', low.base, '--target', path.join(dir, 'missing.safetensors'), '--rank', '2', '--out', out]),
      new RegExp(`cannot write --out ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: its directory does not exist`),
    );
  });

  it('names a directory given as --out, a file used as a directory, and a directory it may not write', async () => {
    expectOneLine(fleet(['build', '--base', low.base, '--target', low.target, '--rank', '2', '--out', dir]), /cannot write --out .*: it is a directory/);
    expectOneLine(
      fleet(['build', '--base', low.base, '--target', low.target, '--rank', '2', '--out', path.join(low.base, 'u.cbor')]),
      /cannot write --out .*base\.safetensors\/u\.cbor: a part of its path is not a directory/,
    );
    if (process.getuid?.() === 0) return; // root writes anywhere
    const ro = path.join(dir, 'ro');
    await fs.mkdir(ro);
    await fs.chmod(ro, 0o555);
    expectOneLine(fleet(['build', '--base', low.base, '--target', low.target, '--rank', '2', '--out', path.join(ro, 'u.cbor')]), /cannot write --out .*ro\/u\.cbor: permission denied/);
    expect(await fs.readdir(ro)).toEqual([]);
  });
});

describe('fleet build asks for --yes before writing an update that is not worth sending as it is', () => {
  it('larger than half the model: refused without --yes, written with a warning with it', async () => {
    const out = path.join(dir, 'big.cbor');
    const r = fleet(['build', '--base', full.base, '--target', full.target, '--energy', '1', '--out', out]);
    expectOneLine(r, /the update is .* of the model's bytes, more than half .*nothing written; pass --yes/);
    await expect(fs.access(out)).rejects.toThrow();
    const y = fleet(['build', '--base', full.base, '--target', full.target, '--energy', '1', '--out', out, '--yes']);
    expect(y.code, y.err).toBe(0);
    expect(y.err).toMatch(/^warning: the update is .* more than half/m);
    await fs.access(out);
  });

  it('a tensor far from its target (relative error above 0.5): refused without --yes, naming it', async () => {
    const out = path.join(dir, 'rough.cbor');
    expectOneLine(fleet(['build', '--base', full.base, '--target', full.target, '--rank', '1', '--out', out]), /tensor [ab]\.weight keeps a relative error of 0\.\d+, above 0\.5 .*pass --yes/);
    await expect(fs.access(out)).rejects.toThrow();
    expect(fleet(['build', '--base', low.base, '--target', low.target, '--rank', '2', '--out', out]).code).toBe(0);
  });
});

describe('fleet inspect --base', () => {
  it('refuses a model the update does not start from, and reports against the right one', () => {
    const out = path.join(dir, 'ok.cbor');
    expect(fleet(['build', '--base', low.base, '--target', low.target, '--rank', '2', '--out', out]).code).toBe(0);
    expectOneLine(fleet(['inspect', out, '--base', full.base]), /full\/base\.safetensors is not this update's base: its digest is [0-9a-f]{64}, the update applies to [0-9a-f]{64}/);
    const good = fleet(['inspect', out, '--base', low.base]);
    expect(good.code, good.err).toBe(0);
    expect(good.out).toMatch(/of the model's \d+ bytes/);
  });
});
