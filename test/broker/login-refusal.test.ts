import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';

let broker: RunningBroker | undefined;
let dir: string | undefined;
afterEach(async () => {
  await broker?.close();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  broker = undefined;
  dir = undefined;
});

describe('a refused login, as a client sees it', () => {
  it('fails at once with the reason (not after the connect timeout), without echoing the password; a percent-encoded password works', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-login-'));
    const file = path.join(dir, 'users.json');
    await writeUsersFile(file, { users: [{ name: 'ops', role: 'operator', ...(await hashPassword('p@ss:w%rd')) }] });
    broker = await startBroker({ port: 0, dataDir: path.join(dir, 'b'), persistence: 'memory', log: silentLogger, auth: file });
    const started = Date.now();
    const bad = `mqtt://ops:wrong-secret@127.0.0.1:${broker.port}`;
    const err = await MqttTransport.connect({ url: bad, clientId: 'ops-1' }, 20_000).then(() => undefined, (e: unknown) => e as Error);
    expect(err?.message).toMatch(/refused the login: bad user name or password/);
    expect(err?.message).not.toMatch(/wrong-secret/);
    expect(Date.now() - started).toBeLessThan(5000);
    const good = await MqttTransport.connect({ url: `mqtt://ops:${encodeURIComponent('p@ss:w%rd')}@127.0.0.1:${broker.port}`, clientId: 'ops-2' }, 10_000);
    expect(good.connected).toBe(true);
    await good.close();
  });
});
