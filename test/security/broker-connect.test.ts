/**
 * Issue 14, holes 2 and 5 and MQTT-3.1.3-8, against a real `fleet broker` process:
 * a packet over the limit is cut off as its header arrives (before login: a few
 * KiB; after: by role), client ids of a role are that role's alone, a live client
 * id cannot be taken over by another user, and an empty client id without a clean
 * session gets CONNACK 0x02.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACKET_LIMITS } from '../../broker/connection-limits.ts';
import { hashPassword, writeUsersFile, type UserRecord } from '../../broker/users-file.ts';
import { BrokerProcess } from '../support/broker-process.ts';
import { freePort, GROUP, MODEL, tempDir } from '../support/harness.ts';
import { connectPacket, fixedHeader, RawClient } from '../support/raw-mqtt.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';

const PEOPLE: Array<[string, UserRecord['role']]> = [
  ['viewer1', 'viewer'],
  ['op1', 'operator'],
  ['gw-a', 'gateway'],
  ['gw-b', 'gateway'],
  ['ctl', 'rollout'],
  ['srv', 'server'],
  ['dev1', 'device'],
  ['gw-north', 'gateway'],
];
const pw = (name: string): string => `${name}-secret`;

let dir: string;
let open: BrokerProcess;
let authed: BrokerProcess;

beforeAll(async () => {
  dir = await tempDir('sec-connect');
  const users = await Promise.all(
    PEOPLE.map(async ([name, role]): Promise<UserRecord> => ({
      name,
      role,
      ...(role === 'device' ? { group: GROUP, model: MODEL } : {}),
      ...(name === 'gw-north' ? { site: 'north' } : {}),
      ...(await hashPassword(pw(name))),
    })),
  );
  const file = path.join(dir, 'users.json');
  await writeUsersFile(file, { users });
  open = await BrokerProcess.start(await freePort(), ['--data-dir', path.join(dir, 'open'), '--no-update-server'], dir, 'open');
  authed = await BrokerProcess.start(await freePort(), ['--data-dir', path.join(dir, 'auth'), '--no-update-server', '--auth', file], dir, 'auth');
}, 120_000);

afterAll(async () => {
  await open?.stop();
  await authed?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

/** Resolves when `c` closes, or with 'open' after `ms`. */
const closedWithin = (c: RawClient, ms: number): Promise<'closed' | 'open'> => Promise.race([c.closed.then(() => 'closed' as const), new Promise<'open'>((r) => setTimeout(() => r('open'), ms))]);

describe('a packet over the limit is cut off before it is buffered', () => {
  for (const which of ['open', 'auth'] as const) {
    it(`a CONNECT declaring 268 MB is refused at its header (${which} broker)`, async () => {
      const b = which === 'open' ? open : authed;
      const c = await RawClient.open(b.port);
      c.socket.write(fixedHeader(1, 268_435_455));
      const streaming = c.stream(32 * 1024 * 1024);
      expect(await closedWithin(c, 20_000)).toBe('closed');
      await streaming;
      // The broker closed it long before the declared body (on the old broker: never).
      expect(c.written).toBeLessThan(32 * 1024 * 1024);
    }, 60_000);
  }

  it('a CONNECT just under the login limit is parsed (refused for its client id, not cut off)', async () => {
    const c = await RawClient.open(authed.port);
    // A well-formed CONNECT of ~7 KiB: a long password, refused by the login (CONNACK 4), not by the size limit.
    c.socket.write(connectPacket({ clientId: 'x', username: 'nobody', password: 'p'.repeat(PACKET_LIMITS.login - 200) }));
    await c.closed;
    expect(c.connackCode()).toBe(4);
  }, 30_000);

  it('after login, a device sending a packet over its role limit is cut off; an operator is not', async () => {
    const dev = await loggedIn('dev1', `fleet-device-dev1`);
    const declared = 16 * 1024 * 1024;
    dev.socket.write(fixedHeader(3, declared));
    const streaming = dev.stream(declared);
    expect(await closedWithin(dev, 20_000)).toBe('closed');
    await streaming;
    // Cut at the header, not after the body was buffered (and then refused as a malformed publish).
    expect(dev.written).toBeLessThan(declared);
    const op = await loggedIn('op1', 'op-client');
    // Within the operator's limit: the header passes (the body, never sent, is awaited).
    op.socket.write(fixedHeader(3, PACKET_LIMITS.device + 1024));
    expect(await closedWithin(op, 2_000)).toBe('open');
    op.destroy();
  }, 60_000);
});

/** A raw client logged in to the auth broker. */
async function loggedIn(user: string, clientId: string): Promise<RawClient> {
  const c = await RawClient.open(authed.port);
  c.socket.write(connectPacket({ clientId, username: user, password: pw(user) }));
  await until(() => c.connackCode() !== undefined || c.isClosed, { what: `a CONNACK for ${user}`, timeoutMs: 20_000, intervalMs: 20 });
  expect(c.connackCode()).toBe(0);
  return c;
}

describe('an empty client id asks for a clean session (MQTT-3.1.3-8)', () => {
  for (const which of ['open', 'auth'] as const) {
    it(`CleanSession 0 with a zero-byte client id gets CONNACK 0x02 (${which} broker)`, async () => {
      const b = which === 'open' ? open : authed;
      const c = await RawClient.open(b.port);
      c.socket.write(connectPacket({ clientId: '', clean: false, ...(which === 'auth' ? { username: 'op1', password: pw('op1') } : {}) }));
      await Promise.race([c.closed, new Promise((r) => setTimeout(r, 10_000))]);
      expect(c.connackCode()).toBe(2);
      c.destroy();
    }, 30_000);
  }
});

/** An mqtt.js client that never reconnects; resolves with the CONNACK code (0 when accepted). */
async function login(user: string, clientId: string, keep: MqttClient[]): Promise<number> {
  const opts: IClientOptions = { clientId, username: user, password: pw(user), reconnectPeriod: 0, connectTimeout: 20_000, protocolVersion: 4 };
  const c = connect(`mqtt://127.0.0.1:${authed.port}`, opts);
  keep.push(c);
  return new Promise((resolve) => {
    c.once('connect', () => resolve(0));
    c.once('error', (e: Error & { code?: number }) => resolve(e.code ?? -1));
  });
}

describe("a role's client ids are that role's alone", () => {
  const reserved: Array<[string, string]> = [
    ['fleet-gateway-site-a', 'a gateway'],
    ['fleet-update-server-4242', "fleet serve's update server"],
    ['fleet-rollout-plan1-4242', 'a rollout controller'],
  ];
  for (const [id, whose] of reserved) {
    it(`a viewer and an operator cannot log in as ${whose} (${id})`, async () => {
      const keep: MqttClient[] = [];
      try {
        expect(await login('viewer1', id, keep)).toBe(5);
        expect(await login('op1', id, keep)).toBe(5);
      } finally {
        for (const c of keep) c.end(true);
      }
    }, 60_000);
  }

  it("the gateway keeps its connection: another user's login with its client id is refused; its own reconnect is not", async () => {
    const keep: MqttClient[] = [];
    try {
      expect(await login('gw-a', 'fleet-gateway-site-a', keep)).toBe(0);
      const gw = keep[0]!;
      let kicked = 0;
      gw.on('close', () => kicked++);
      expect(await login('gw-b', 'fleet-gateway-site-a', keep)).toBe(2);
      expect(await login('op1', 'fleet-gateway-site-a', keep)).toBe(5);
      // An ordinary id held by one user is not another user's to take either.
      expect(await login('op1', 'dashboard-1', keep)).toBe(0);
      expect(await login('viewer1', 'dashboard-1', keep)).toBe(2);
      await expectNoEventWithin(500, () => kicked > 0 || !gw.connected, 'gw-a being kicked off by a refused takeover');
      expect(kicked).toBe(0);
      expect(gw.connected).toBe(true);
      // The same user may take its own id over (a restarted gateway whose old socket is half-open).
      expect(await login('gw-a', 'fleet-gateway-site-a', keep)).toBe(0);
    } finally {
      for (const c of keep) c.end(true);
    }
  }, 90_000);

  it("a gateway user bound to a site (fleet user add --site) may use only that site's client id and status", async () => {
    const keep: MqttClient[] = [];
    try {
      expect(await login('gw-north', 'fleet-gateway-south', keep)).toBe(5);
      expect(await login('gw-north', 'anything-else', keep)).toBe(5);
      expect(await login('gw-north', 'fleet-gateway-north', keep)).toBe(0);
      const gw = keep[keep.length - 1]!;
      const closed = new Promise<void>((r) => gw.once('close', () => r()));
      gw.publish('fleet/gateways/north/status', '{"site":"north"}', { qos: 1 });
      await expectNoEventWithin(300, () => !gw.connected, 'gw-north cut off for its own status');
      expect(gw.connected).toBe(true);
      gw.publish('fleet/gateways/south/status', '{"site":"south"}', { qos: 1 });
      await closed;
    } finally {
      for (const c of keep) c.end(true);
    }
  }, 60_000);

  it('the rollout role may use a rollout id and the server role the update server id', async () => {
    const keep: MqttClient[] = [];
    try {
      expect(await login('ctl', 'fleet-rollout-plan1-4242', keep)).toBe(0);
      expect(await login('srv', 'fleet-update-server-4242', keep)).toBe(0);
    } finally {
      for (const c of keep) c.end(true);
    }
  }, 60_000);
});
