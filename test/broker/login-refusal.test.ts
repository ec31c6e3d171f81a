import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';

const env = useBrokerEnv('login');

describe('a refused login, as a client sees it', () => {
  it('fails at once with the reason (not after the connect timeout), without echoing the password; a percent-encoded password works', async () => {
    const file = path.join(await env.dir(), 'users.json');
    await writeUsersFile(file, { users: [{ name: 'ops', role: 'operator', ...(await hashPassword('p@ss:w%rd')) }] });
    const broker = await env.broker({ auth: file });
    const started = Date.now();
    const bad = `mqtt://ops:wrong-secret@127.0.0.1:${broker.port}`;
    const err = await MqttTransport.connect({ url: bad, clientId: 'ops-1' }, 20_000).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/refused the login: bad user name or password/);
    expect(err?.message).not.toMatch(/wrong-secret/);
    expect(Date.now() - started).toBeLessThan(5000);
    const good = await MqttTransport.connect({ url: `mqtt://ops:${encodeURIComponent('p@ss:w%rd')}@127.0.0.1:${broker.port}`, clientId: 'ops-2' }, 10_000);
    expect(good.connected).toBe(true);
    await good.close();
  });
});
