import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodePayload, encodePayload, isLowRank } from '../../protocol/lowrank.ts';
import { encodeUpdateFile, UPDATE_FILE_HEADER_BYTES } from '../../protocol/update-file.ts';
import { readUpdateFile } from '../../util/update-file.ts';
import { connect, createFixture, GROUP, MODEL, retainedRelease, runFleet, type Fixture } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

/** `fleet build` of the fixture's base and target, then one byte flipped inside a factor (`u`) of the written file. */
async function builtAndDamaged(fx: Fixture): Promise<{ good: string; damaged: string; target: string }> {
  const target = path.join(fx.dir, 'target.safetensors');
  await fs.writeFile(target, fx.update.target);
  const good = path.join(fx.dir, 'built.cbor');
  const b = await runFleet(['build', '--base', fx.baseFile, '--target', target, '--rank', '3', '--out', good, '--yes', '--json']);
  expect(b.code, b.err).toBe(0);
  const file = await fs.readFile(good);
  const u = decodePayload(await readUpdateFile(good)).tensors.find(isLowRank)!.u;
  const at = file.indexOf(Buffer.from(u));
  expect(at).toBeGreaterThan(UPDATE_FILE_HEADER_BYTES);
  file[at + 5] ^= 0x40;
  const damaged = path.join(fx.dir, 'damaged.cbor');
  await fs.writeFile(damaged, file);
  return { good, damaged, target };
}

describe('an update file damaged after fleet build is refused before a byte is uploaded', () => {
  it('fleet publish, inspect and apply name the damaged file; nothing reaches the broker; the intact file publishes', async () => {
    f = own(await createFixture('integrity'));
    const { good, damaged } = await builtAndDamaged(f);
    const spy = await connect(f, 'integrity-spy');
    const seen: string[] = [];
    spy.onMessage((topic) => seen.push(topic));
    await spy.subscribe(['fleet/#'], 1);
    const publish = (file: string) =>
      runFleet(['publish', '--update', file, '--key', f!.keyFile, '--rollout-key', f!.rolloutKeyFile, '--model', MODEL, '--group', GROUP, '--broker', f!.url, '--chunk-size', '1024', '--yes']);
    const damage = new RegExp(`^fleet: ${damaged.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is damaged: its payload's SHA-256 is not the one fleet build wrote in its header .*rebuild it\\n$`);

    const refused = await publish(damaged);
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(damage);
    const inspect = await runFleet(['inspect', damaged]);
    expect(inspect.code).toBe(1);
    expect(inspect.err).toMatch(damage);
    const out = path.join(f.dir, 'applied.safetensors');
    const apply = await runFleet(['apply', '--model', f.baseFile, '--update', damaged, '--out', out]);
    expect(apply.code).toBe(1);
    expect(apply.err).toMatch(damage);
    await expect(fs.stat(out)).rejects.toThrow();

    // A bare payload (no check: an old file, or one written by hand) is refused too.
    const bare = path.join(f.dir, 'bare.cbor');
    await fs.writeFile(bare, f.update.payload);
    const old = await publish(bare);
    expect(old.code).toBe(1);
    expect(old.err.trim().split('\n')).toEqual([`fleet: ${bare} is not an update file with an integrity check (written by hand, or by a fleet before the check): rebuild it with fleet build`]);

    await new Promise((r) => setTimeout(r, 300));
    expect(seen).toEqual([]);
    expect(await retainedRelease(f)).toBeUndefined();

    const ok = await publish(good);
    expect(ok.code, ok.err).toBe(0);
    expect(await retainedRelease(f)).toBeDefined();
  }, 120_000);

  it('fleet publish --base MODEL applies the update as a device would: a wrong base and a wrong result are refused, the right ones publish', async () => {
    f = own(await createFixture('integrity-base'));
    const { good, target } = await builtAndDamaged(f);
    const p = decodePayload(await readUpdateFile(good));
    // Intact as a file (its check is right), but it names a target its factors do not reach.
    const lying = path.join(f.dir, 'lying.cbor');
    await fs.writeFile(lying, encodeUpdateFile(encodePayload({ ...p, target: p.base.split('').reverse().join('') })));
    const publish = (file: string, base: string) =>
      runFleet(['publish', '--update', file, '--base', base, '--key', f!.keyFile, '--rollout-key', f!.rolloutKeyFile, '--model', MODEL, '--group', GROUP, '--broker', f!.url, '--chunk-size', '1024', '--yes']);

    const wrongBase = await publish(good, target);
    expect(wrongBase.code).toBe(1);
    expect(wrongBase.err.trim().split('\n')).toEqual([
      `fleet: --base ${target} is not the update's base: its digest is ${f.update.targetDigest}, the update applies to ${p.base} (devices on it would refuse: wrong-base); give the model the devices run, or build the update from it`,
    ]);
    const wrongResult = await publish(lying, f.baseFile);
    expect(wrongResult.code).toBe(1);
    expect(wrongResult.err.trim().split('\n')).toEqual([
      `fleet: applying the update to --base ${f.baseFile} gives ${p.target}, not the target ${p.base.split('').reverse().join('')} it names (devices would refuse it: digest-mismatch); rebuild it with fleet build`,
    ]);
    expect(await retainedRelease(f)).toBeUndefined();

    const ok = await publish(good, f.baseFile);
    expect(ok.code, ok.err).toBe(0);
    expect(await retainedRelease(f)).toBeDefined();
  }, 120_000);
});
