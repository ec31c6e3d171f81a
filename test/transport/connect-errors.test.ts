import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FLEET_BIN, stopChild } from '../../platform/child-process.ts';
import { connectCause } from '../../transport/connect-errors.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { BrokerProcess } from '../support/broker-process.ts';
import { createFixture, freePort, GROUP, MODEL, tempDir, type Fixture } from '../support/harness.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';

const err = (code: string | number, message = 'x'): Error & { code: string | number } => Object.assign(new Error(message), { code });

describe('why a connection failed, in words (transport/connect-errors.ts)', () => {
  it('names each cause and says whether retrying can help', () => {
    expect(connectCause(err('ECONNREFUSED'), 'h')).toEqual({ message: 'connection refused by h: nothing listens on that port (is the broker running, and is the port right?)', definitive: false });
    expect(connectCause(err('ENOTFOUND'), 'brokr.local')).toEqual({ message: 'unknown host brokr.local: check the broker URL', definitive: true });
    expect(connectCause(err('EHOSTUNREACH'), 'h')?.definitive).toBe(false);
    expect(connectCause(err('ETIMEDOUT'), 'h')?.message).toMatch(/did not answer/);
    expect(connectCause(err('DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed certificate'), 'h')).toEqual({
      message: "TLS with h failed: self-signed certificate (DEPTH_ZERO_SELF_SIGNED_CERT); give the CA that signed the broker's certificate with --ca FILE",
      definitive: true,
    });
    expect(connectCause(err('ERR_TLS_CERT_ALTNAME_INVALID'), 'h')?.definitive).toBe(true);
    expect(connectCause(err(4), 'h')).toEqual({ message: 'the broker refused the login: bad user name or password', definitive: true });
    expect(connectCause(err(5), 'h')?.message).toBe('the broker refused the login: not authorised');
    expect(connectCause(new Error('no code'), 'h')).toBeUndefined();
  });
});

let f: Fixture | undefined;
let broker: BrokerProcess | undefined;
afterEach(async () => {
  await broker?.stop();
  await f?.close();
  broker = undefined;
  f = undefined;
});

describe('an unreachable broker is named within seconds, with its cause', () => {
  it('a one-shot connect to a port nothing listens on is refused in seconds, naming the cause (not after its 30 s timeout)', async () => {
    const port = await freePort();
    const t0 = Date.now();
    await expect(MqttTransport.connect({ url: `mqtt://127.0.0.1:${port}`, clientId: 'nobody' }, 30_000)).rejects.toThrow(
      `cannot connect to mqtt://127.0.0.1:${port}: connection refused by 127.0.0.1: nothing listens on that port (is the broker running, and is the port right?)`,
    );
    const took = Date.now() - t0;
    console.log(`refused connection reported after ${took} ms`);
    expect(took).toBeLessThan(15_000);
  });

  it('fleet devices exits 1 with one line naming the cause; a password never reaches the message', async () => {
    const port = await freePort();
    const c = spawn(process.execPath, [FLEET_BIN, 'devices', '--broker', `mqtt://ops:s3cret@127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((r) => c.once('exit', r));
    expect(code).toBe(1);
    expect(stderr.trim().split('\n')).toEqual([`fleet: cannot connect to mqtt://127.0.0.1:${port}: connection refused by 127.0.0.1: nothing listens on that port (is the broker running, and is the port right?)`]);
  }, 60_000);

  it('fleet device says where it connects, why it cannot, and when it is connected, at the default log level', async () => {
    f = await createFixture('connect-says', { externalUrl: 'mqtt://127.0.0.1:1' });
    const port = await freePort();
    const dir = await tempDir('connect-says-dev');
    const c = spawn(
      process.execPath,
      [FLEET_BIN, 'device', '--id', 'd1', '--model', MODEL, '--group', GROUP, '--dir', path.join(dir, 'd1'), '--trust', f.trustFile, '--broker', `mqtt://127.0.0.1:${port}`, '--initial', f.baseFile],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    f.children.push(c);
    let out = '';
    let errs = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (errs += d.toString()));
    const context = (): string => `stdout: ${out}; stderr: ${errs}`;
    await until(() => errs.includes('cannot reach the broker: connection refused by 127.0.0.1'), { what: 'the device saying it cannot reach the broker', timeoutMs: 30_000, context });
    expect(out).toContain(`fleet device d1: model ${MODEL}, group ${GROUP}, directory ${path.join(dir, 'd1')}; connecting to mqtt://127.0.0.1:${port}\n`);
    // Said once, not at every retry.
    await expectNoEventWithin(3000, () => errs.split('cannot reach the broker').length - 1 > 1, 'a second "cannot reach the broker" at a retry');
    expect(errs.split('cannot reach the broker').length - 1).toBe(1);
    broker = await BrokerProcess.start(port, ['--data-dir', path.join(dir, 'broker')], dir);
    await until(() => out.includes(`fleet device d1: connected to 127.0.0.1:${port}\n`), { what: 'the device saying it connected', timeoutMs: 60_000, context });
    await stopChild(c);
  }, 120_000);
});
