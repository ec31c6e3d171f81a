/**
 * Issue 14, "Also": every client takes its broker password from a file or the
 * environment as well as the URL, so it need not sit in `ps`. `fleet devices`
 * against a real `fleet broker --auth` process, the URL naming only the user.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { BrokerProcess } from '../support/broker-process.ts';
import { freePort, tempDir } from '../support/harness.ts';

const run = promisify(execFile);
let dir: string;
let broker: BrokerProcess;

beforeAll(async () => {
  dir = await tempDir('sec-password');
  await writeUsersFile(path.join(dir, 'users.json'), { users: [{ name: 'op', role: 'operator', ...(await hashPassword('op secret/with:specials')) }] });
  broker = await BrokerProcess.start(await freePort(), ['--data-dir', path.join(dir, 'broker'), '--no-update-server', '--auth', path.join(dir, 'users.json')], dir);
}, 120_000);

afterAll(async () => {
  await broker?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

/** `fleet devices` with the user in the URL and the password from elsewhere; its exit code. */
async function devices(args: string[], env: Record<string, string> = {}): Promise<number> {
  const url = `mqtt://op@127.0.0.1:${broker.port}`;
  try {
    await run(process.execPath, [FLEET_BIN, ...args, 'devices', '--broker', url, '--json', '--wait', '200'], { env: { ...process.env, FLEET_PASSWORD: '', FLEET_PASSWORD_FILE: '', ...env }, timeout: 60_000 });
    return 0;
  } catch (e) {
    return (e as { code?: number }).code ?? -1;
  }
}

describe('the broker password need not be in the command line', () => {
  it('from FLEET_PASSWORD, from --broker-password-file and from FLEET_PASSWORD_FILE; without any the login is refused', async () => {
    const file = path.join(dir, 'op.password');
    await fs.writeFile(file, 'op secret/with:specials\n', { mode: 0o600 });
    expect(await devices([], { FLEET_PASSWORD: 'op secret/with:specials' })).toBe(0);
    expect(await devices(['--broker-password-file', file])).toBe(0);
    expect(await devices([], { FLEET_PASSWORD_FILE: file })).toBe(0);
    expect(await devices([])).not.toBe(0);
    expect(await devices([], { FLEET_PASSWORD: 'wrong' })).not.toBe(0);
  }, 120_000);
});
