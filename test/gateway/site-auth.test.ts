/**
 * A gateway whose site broker has a users file: the site's devices log in
 * (the ACL applies as on the central broker), anonymous clients and wrong
 * passwords are refused, and the gateway's own work (mirrored releases, the
 * site update server, statuses relayed up) goes on under it.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { stopChild } from '../../platform/child-process.ts';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { createFixture, GROUP, MODEL, publish, spawnDevice, StatusWatch, type Fixture } from '../support/harness.ts';
import { startGateway } from './helpers.ts';

let f: Fixture | undefined;
let gw: Gateway | undefined;
afterEach(async () => {
  await Promise.all((f?.children ?? []).map((c) => stopChild(c)));
  await gw?.close();
  await f?.close();
  f = undefined;
  gw = undefined;
});

async function refusal(url: string, clientId: string): Promise<string> {
  try {
    const t = await MqttTransport.connect({ url, clientId }, 5000);
    await t.close();
    return 'connected';
  } catch (e) {
    return (e as Error).message;
  }
}

describe('site gateway with --auth', () => {
  it('devices log in to the site broker; anonymous clients and wrong passwords are refused; the update still arrives once', async () => {
    f = await createFixture('gw-auth');
    const users = path.join(f.dir, 'site-users.json');
    await writeUsersFile(users, { users: [{ name: 'sd1', role: 'device', group: GROUP, model: MODEL, ...(await hashPassword('sd1-secret')) }] });
    gw = await startGateway(f, { auth: users, groups: [GROUP] });
    const site = new URL(gw.url);
    const withLogin = (user: string, pw: string) => `mqtt://${user}:${pw}@${site.host}`;

    expect(await refusal(gw.url, 'fleet-device-sd1')).not.toBe('connected');
    expect(await refusal(withLogin('sd1', 'wrong'), 'fleet-device-sd1')).not.toBe('connected');

    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'sd1', [], withLogin('sd1', 'sd1-secret'));
    await watch.until('sd1', (s) => s.state === 'idle', 60_000);
    const r = await publish(f);
    const s = await watch.until('sd1', (s) => s.state === 'ok', 60_000);
    expect(s.running).toBe(f.update.targetDigest);
    expect(f.broker!.updateServer!.stats.chunksSent).toBeLessThanOrEqual(r.release.steps[0].chunks + 2);
    await fs.access(users);
  });
});
