import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { createFixture, GROUP, MODEL, publish, spawnDevice, StatusWatch, type Fixture } from '../support/harness.ts';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

describe('two agents started with one --id', () => {
  it('the younger sees its session taken over, says so and exits 78 (EX_CONFIG); the older keeps the id and installs the update', async () => {
    f = own(await createFixture('shared-id'));
    const watch = await StatusWatch.start(f);
    // Two directories (the lock keeps agents off one directory), one id: a duplicated service on another box.
    const older = spawnDevice(f, 'shared', []);
    await watch.until('shared', (s) => s.state === 'idle');
    const olderInstance = watch.latest.get('shared')!.instance;
    expect(olderInstance).toMatch(/^[0-9a-f]{16}$/);
    // spawnDevice names the directory after the id: the copy is spawned by hand with the same --id.
    const copy = spawn(
      process.execPath,
      [FLEET_BIN, 'device', '--id', 'shared', '--model', MODEL, '--group', GROUP, '--dir', path.join(f.dir, 'shared-copy'), '--trust', f.trustFile, '--broker', f.url, '--initial', f.baseFile, '--idle-ms', '1000'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    f.children.push(copy);
    let err = '';
    copy.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const t0 = Date.now();
    const code = await new Promise<number | null>((resolve) => copy.once('exit', (c) => resolve(c)));
    const seconds = (Date.now() - t0) / 1000;
    expect(code).toBe(78); // EX_CONFIG: a service manager must not restart into it
    expect(err.trim().split('\n').at(-1)).toMatch(
      /^fleet: another agent uses device id shared \(instance [0-9a-f]{8}, started .*\): the broker gives the session to each in turn; this agent, the younger, stops after 3 takeovers\. Stop the other agent, or give each its own --id and --dir$/,
    );
    console.log(`the younger of two agents with one id gave up after ${seconds.toFixed(1)} s`);
    expect(older.exitCode).toBe(null);
    // The older one is undisturbed from now on: it installs the update and acks.
    await publish(f);
    const s = await watch.until('shared', (s) => s.state === 'ok', 60_000);
    expect(s.instance).toBe(olderInstance);
    expect(s.running).toBe(f.update.targetDigest);
    expect(readFileSync(path.join(f.dir, 'shared.log'), 'utf8')).toContain('session taken over');
  }, 120_000);
});
