/**
 * Issue 14, hole 4: a site device decides what the gateway downloads. The
 * gateway used to learn every group a site client named (in a status or a
 * release subscription), save it and subscribe upstream: one device made it
 * mirror another group, 301 invented groups were saved. Now: without the site's
 * --auth it mirrors only --group/--model unless --learn-groups N asks for
 * learning (capped, shown in its status); with --auth it learns only the device
 * users' own groups, from their logins.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { openSiteWarning } from '../../gateway/options.ts';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import type { GatewayNodeOptions } from '../../nodes/gateway-node.ts';
import { createLogger } from '../../util/log.ts';
import { encodeStatus, type DeviceStatus } from '../../protocol/status.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { createFixture, GROUP, MODEL, topics, type Fixture } from '../support/harness.ts';
import { startGateway, untilGateway } from '../gateway/helpers.ts';
import { until } from '../support/wait.ts';
import { statusFixture } from '../support/status.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
let gw: Gateway | undefined;
const own = ownAfterEach();

const status = (device: string, group: string): DeviceStatus => statusFixture({ device, group, model: MODEL, running: 'ab'.repeat(32), agent: 'x' });

/** What the gateway saved as learned (group/model pairs). */
async function saved(): Promise<string[]> {
  try {
    return JSON.parse(await fs.readFile(path.join(f!.dir, 'gateway', 'groups.json'), 'utf8')) as string[];
  } catch {
    return [];
  }
}

/** A site client (device `id`, logging in as `user` when given) claiming `groups` in statuses and release subscriptions. */
async function claim(id: string, groups: string[], user?: string): Promise<void> {
  const site = new URL(gw!.url);
  const url = user ? `mqtt://${user}:${user}-pw@${site.host}` : gw!.url;
  const t = await MqttTransport.connect({ url, clientId: `fleet-device-${id}`, reconnectMinMs: 60_000 }, 10_000);
  own(t);
  for (const g of groups) {
    await t.subscribe(topics.release(g, MODEL), 1).catch(() => undefined);
    if (t.connected) await t.publish(topics.status(id), encodeStatus(status(id, g)), { qos: 0 });
  }
}

async function start(o: Partial<GatewayNodeOptions>): Promise<void> {
  f = own(await createFixture('sec-gw-learn'));
  gw = own(await startGateway(f, { groups: [GROUP], ...o }));
}

const invented = Array.from({ length: 301 }, (_, i) => `invented-${i}`);

describe('what the gateway mirrors is not up to its devices', () => {
  it('without --auth and --learn-groups: 301 invented groups are neither saved nor mirrored', async () => {
    await start({});
    await claim('d1', ['other-group', ...invented]);
    const s = await untilGateway(gw!, (s) => s.learning.refused >= 301 + 1, 15_000, 'every claimed group refused');
    expect(s.learning).toEqual({ mode: 'off', learned: 0, cap: 0, refused: 301 + 1 });
    expect(await saved()).toEqual([]);
  }, 60_000);

  it('without --auth, --learn-groups 4: four pairs learned, the rest refused and counted in the status', async () => {
    await start({ learnGroups: 4 });
    await claim('d1', ['other-group', ...invented]);
    const s = await untilGateway(gw!, (s) => s.learning.refused >= 302 - 4, 15_000, 'every claimed group learned or refused');
    expect(s.learning).toEqual({ mode: 'devices', learned: 4, cap: 4, refused: 302 - 4 });
    await until(async () => (await saved()).length === 4, { what: 'the four learned groups saved', timeoutMs: 10_000 });
  }, 60_000);

  it("with the site --auth: only the device login's own group is learned, whatever the device names", async () => {
    f = own(await createFixture('sec-gw-learn'));
    const users = path.join(f.dir, 'site-users.json');
    await writeUsersFile(users, { users: [{ name: 'sd1', role: 'device', group: 'own-group', model: MODEL, ...(await hashPassword('sd1-pw')) }] });
    gw = own(await startGateway(f, { auth: users, groups: [GROUP] }));
    const site = new URL(gw.url);
    const t = await MqttTransport.connect({ url: `mqtt://sd1:sd1-pw@${site.host}`, clientId: 'fleet-device-sd1', reconnectMinMs: 60_000 }, 10_000);
    own(t);
    // Other groups' releases: SUBACK 0x80 (the ACL); its own: granted.
    await t
      .subscribe(
        ['other-group', ...invented.slice(0, 5), 'own-group'].map((g) => topics.release(g, MODEL)),
        1,
      )
      .catch(() => undefined);
    // A status naming another group: refused by the site broker, which cuts the device off.
    await t.publish(topics.status('sd1'), encodeStatus(status('sd1', 'other-group')), { qos: 0 });
    await until(() => !t.connected, { what: 'the site broker cutting sd1 off for the status naming another group', timeoutMs: 10_000 });
    await until(() => saved().then((g) => g.length > 0), { what: "the login's own group saved", timeoutMs: 10_000 });
    expect(await saved()).toEqual([`own-group/${MODEL}`]);
    const s = await gw.status();
    expect(s.learning).toMatchObject({ mode: 'logins', learned: 1, cap: null });
  }, 60_000);
});

describe('an open site broker says so', () => {
  it('beyond loopback without --auth: an error naming the cure; on loopback or with --auth: nothing', () => {
    for (const host of ['0.0.0.0', '::', '192.168.1.10']) expect(openSiteWarning(host, undefined)).toMatch(/beyond loopback, without --auth.*--auth FILE/);
    for (const host of ['127.0.0.1', '::1', 'localhost']) expect(openSiteWarning(host, undefined)).toBeUndefined();
    expect(openSiteWarning('0.0.0.0', 'users.json')).toBeUndefined();
  });

  it('a gateway started on loopback without --auth logs no such error', async () => {
    f = own(await createFixture('sec-gw-open'));
    const lines: string[] = [];
    gw = own(await startGateway(f, { groups: [GROUP], log: createLogger('gateway', 'error', (l) => lines.push(l)) }));
    expect(lines.filter((l) => l.includes('beyond loopback'))).toEqual([]);
  }, 60_000);
});
