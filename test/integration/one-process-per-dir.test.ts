import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BrokerProcess } from '../support/broker-process.ts';
import { createFixture, freePort, GROUP, MODEL, publish, runFleet, spawnDevice, StatusWatch, tempDir, type Fixture } from '../support/harness.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

describe('one process per directory', () => {
  it('a second agent on a device directory exits 78 (EX_CONFIG) naming the first; after the first is SIGKILLed, a new one takes over and finishes', async () => {
    f = own(await createFixture('dir-lock'));
    const watch = await StatusWatch.start(f);
    const first = spawnDevice(f, 'd1');
    await watch.until('d1', (s) => s.state === 'idle');
    const dir = path.join(f.dir, 'd1');
    const second = await runFleet(['device', '--id', 'd1', '--model', MODEL, '--group', GROUP, '--dir', dir, '--trust', f.trustFile, '--broker', f.url, '--initial', f.baseFile]);
    expect(second.code).toBe(78); // EX_CONFIG: a service manager must not restart into it
    expect(second.err.trim().split('\n').at(-1)).toMatch(
      new RegExp(`^fleet: ${dir} is in use by fleet device d1 \\(PID ${first.pid} on ${os.hostname()}, since [0-9T:.-]+Z\\); stop it first, or give this one a directory of its own$`),
    );
    // The first agent was not disturbed.
    expect(await digestModelFile(path.join(dir, 'current.safetensors'))).toBe(f.update.baseDigest);
    process.kill(first.pid!, 'SIGKILL');
    await new Promise((r) => first.once('exit', r));
    spawnDevice(f, 'd1');
    await watch.until('d1', (s) => s.state === 'idle' || s.state === 'ok');
    await publish(f);
    const s = await watch.until('d1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest, 60_000);
    expect(s.running).toBe(f.update.targetDigest);
  }, 120_000);

  it('a second broker on one --data-dir exits 78 (EX_CONFIG) naming the first, not "Database failed to open"', async () => {
    const dir = await tempDir('broker-lock');
    const port = await freePort();
    const b = await BrokerProcess.start(port, ['--data-dir', path.join(dir, 'data')], dir);
    try {
      const second = await runFleet(['broker', '--port', String(await freePort()), '--data-dir', path.join(dir, 'data')]);
      expect(second.code).toBe(78); // EX_CONFIG: a service manager must not restart into it
      expect(second.err).not.toContain('Database failed to open');
      expect(second.err.trim().split('\n').at(-1)).toMatch(new RegExp(`^fleet: ${path.join(dir, 'data')} is in use by fleet broker \\(PID ${b.child!.pid} `));
      // Killed, it leaves a stale lock that the next broker takes over.
      await b.kill('SIGKILL');
      await b.restart();
    } finally {
      await b.stop();
    }
  }, 120_000);
});
