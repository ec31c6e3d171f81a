import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { DeviceAgent } from '../../device/agent.ts';
import { DeviceStorage } from '../../device/storage.ts';
import { cborDecode, cborEncode } from '../../protocol/cbor.ts';
import { keygen } from '../../publisher/keys.ts';
import { synthesizeModel, synthesizeUpdate } from '../../publisher/synth.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';

function fleet(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [FLEET_BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let dir: string;
let keys: Awaited<ReturnType<typeof keygen>>;
let other: Awaited<ReturnType<typeof keygen>>;
const base = synthesizeModel(21, [
  [48, 32],
  [10, 48],
]);
const u1 = synthesizeUpdate(base, 2, 22);
const u2 = synthesizeUpdate(u1.target, 2, 23);

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-bundle-'));
  keys = await keygen(path.join(dir, 'keys'));
  other = await keygen(path.join(dir, 'other'));
  await fs.writeFile(path.join(dir, 'base.safetensors'), base);
  await fs.writeFile(path.join(dir, 'u1.cbor'), encodeUpdateFile(u1.payload));
  await fs.writeFile(path.join(dir, 'u2.cbor'), encodeUpdateFile(u2.payload));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('offline installs: fleet bundle and fleet apply --bundle', () => {
  it('a chain bundle applies to a model file and installs into a device directory, as a device would; a replay is refused', async () => {
    const bundle = path.join(dir, 'chain.fleet');
    const b = fleet([
      'bundle',
      '--update',
      path.join(dir, 'u2.cbor'),
      '--update',
      path.join(dir, 'u1.cbor'),
      '--key',
      keys.keyFile,
      '--rollout-key',
      keys.rolloutKeyFile,
      '--model',
      'm',
      '--group',
      'site-7',
      '--out',
      bundle,
    ]);
    expect(b.code, b.err).toBe(0);
    const out = path.join(dir, 'c.safetensors');
    const a = fleet(['apply', '--bundle', bundle, '--trust', keys.trustFile, '--model', path.join(dir, 'base.safetensors'), '--out', out]);
    expect(a.code, a.err).toBe(0);
    expect(await digestModelFile(out)).toBe(u2.targetDigest);

    const storage = new DeviceStorage(path.join(dir, 'dev'));
    await DeviceAgent.provision(storage, path.join(dir, 'base.safetensors'), digestModelFile);
    const d = fleet(['apply', '--bundle', bundle, '--trust', keys.trustFile, '--dir', storage.dir]);
    expect(d.code, d.err).toBe(0);
    expect(await digestModelFile(storage.currentPath)).toBe(u2.targetDigest);
    expect((await storage.pointer())!.previous).toBe(u1.baseDigest);
    const again = fleet(['apply', '--bundle', bundle, '--trust', keys.trustFile, '--dir', storage.dir]);
    expect(again.code).not.toBe(0);
    expect(again.err).toMatch(/not above the highest this device accepted/);
  });

  it('refuses a tampered payload, a bundle signed by an untrusted key, and a bundle for another base — the device directory unchanged', async () => {
    const bundle = path.join(dir, 'one.fleet');
    expect(fleet(['bundle', '--update', path.join(dir, 'u1.cbor'), '--key', keys.keyFile, '--rollout-key', keys.rolloutKeyFile, '--model', 'm', '--group', 'g', '--out', bundle]).code).toBe(0);
    const m = cborDecode(await fs.readFile(bundle)) as { v: number; release: Uint8Array; payloads: Record<string, Uint8Array> };
    const id = Object.keys(m.payloads)[0];
    m.payloads[id][100] ^= 1;
    const tampered = path.join(dir, 'tampered.fleet');
    await fs.writeFile(tampered, cborEncode(m));
    const storage = new DeviceStorage(path.join(dir, 'dev2'));
    await DeviceAgent.provision(storage, path.join(dir, 'base.safetensors'), digestModelFile);
    const t = fleet(['apply', '--bundle', tampered, '--trust', keys.trustFile, '--dir', storage.dir]);
    expect(t.code).not.toBe(0);
    expect(t.err).toMatch(/assembled payload does not hash/);
    const foreign = path.join(dir, 'foreign.fleet');
    expect(fleet(['bundle', '--update', path.join(dir, 'u1.cbor'), '--key', other.keyFile, '--rollout-key', other.rolloutKeyFile, '--model', 'm', '--group', 'g', '--out', foreign]).code).toBe(0);
    const f = fleet(['apply', '--bundle', foreign, '--trust', keys.trustFile, '--dir', storage.dir]);
    expect(f.err).toMatch(/not in this device's trust file/);
    const later = path.join(dir, 'later.fleet');
    expect(fleet(['bundle', '--update', path.join(dir, 'u2.cbor'), '--key', keys.keyFile, '--rollout-key', keys.rolloutKeyFile, '--model', 'm', '--group', 'g', '--out', later]).code).toBe(0);
    const w = fleet(['apply', '--bundle', later, '--trust', keys.trustFile, '--dir', storage.dir]);
    expect(w.err).toMatch(/No step of the release starts from the model this device runs|no step from/);
    expect(await digestModelFile(storage.currentPath)).toBe(u1.baseDigest);
  });
});
