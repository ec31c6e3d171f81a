import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { parseTrustFile } from '../../protocol/release.ts';
import { freePort, MODEL, GROUP, spawnFleet, StatusWatch, tempDir, waitForPort, type Fixture, createFixture, spawnDevice, currentDigest } from '../support/harness.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';
import { ownAfterEach } from '../support/cleanup.ts';

function fleet(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [FLEET_BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let f: Fixture | undefined;
const own = ownAfterEach();

describe('the fleet command', () => {
  it('prints help listing every command', () => {
    const r = fleet(['--help']);
    expect(r.code).toBe(0);
    for (const c of ['broker', 'serve', 'keygen', 'publish', 'device', 'synth', 'demo']) expect(r.out).toContain(c);
  });

  it('keygen writes a 0600 secret key and a trust file devices accept; refuses to overwrite the key', async () => {
    const dir = await tempDir('keygen');
    const r = fleet(['keygen', '--out', dir]);
    expect(r.code).toBe(0);
    const st = await fs.stat(path.join(dir, 'release.key'));
    expect(st.mode & 0o777).toBe(0o600);
    const trust = parseTrustFile(await fs.readFile(path.join(dir, 'trust.json'), 'utf8'));
    expect(trust.threshold).toBe(1);
    expect(r.out).toContain(trust.keys[0].id.slice(0, 16));
    expect(trust.rollout?.keys).toHaveLength(1);
    expect(r.out).toContain(trust.rollout!.keys[0].id.slice(0, 16));
    expect((await fs.stat(path.join(dir, 'rollout.key'))).mode & 0o777).toBe(0o600);
    const again = fleet(['keygen', '--out', dir]);
    expect(again.code).not.toBe(0);
    expect(again.err).toMatch(/refusing to overwrite/);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('a usage error exits non-zero with a message, not a stack trace', () => {
    const r = fleet(['publish', '--update', 'x']);
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/required option/);
    expect(r.err).not.toMatch(/at .*\.ts:\d+/);
  });

  it('broker: stops cleanly on SIGTERM, and after a restart on the same data dir still holds releases and updates', async () => {
    // The fixture's own in-process broker is unused here except for keys and models.
    f = own(await createFixture('cli-broker'));
    const port = await freePort();
    const url = `mqtt://127.0.0.1:${port}`;
    const data = path.join(f.dir, 'broker-data');
    const first = spawnFleet(f, 'broker1', ['broker', '--port', String(port), '--data-dir', data]);
    await waitForPort(port);
    await fs.writeFile(path.join(f.dir, 'update.cbor'), encodeUpdateFile(f.update.payload));
    const pub = fleet([
      'publish',
      '--update',
      path.join(f.dir, 'update.cbor'),
      '--key',
      f.keyFile,
      '--rollout-key',
      f.rolloutKeyFile,
      '--model',
      MODEL,
      '--group',
      GROUP,
      '--broker',
      url,
      '--chunk-size',
      '1024',
      '--yes',
    ]);
    expect(pub.code).toBe(0);
    expect(pub.out).toMatch(/published test-model for group line-1: manifest [0-9a-f]{12}, seq \d+/);
    const exit = new Promise<number | null>((res) => first.once('exit', (code) => res(code)));
    process.kill(first.pid!, 'SIGTERM');
    expect(await exit).toBe(0);

    spawnFleet(f, 'broker2', ['broker', '--port', String(port), '--data-dir', data]);
    await waitForPort(port);
    const watchFixture = { ...f, url } as Fixture;
    const watch = await StatusWatch.start(watchFixture);
    spawnDevice(f, 'after-restart', [], url);
    const s = await watch.until('after-restart', (s) => s.state === 'ok', 30_000);
    expect(s.running).toBe(f.update.targetDigest);
    expect(await currentDigest(f, 'after-restart')).toBe(f.update.targetDigest);
  });
});
