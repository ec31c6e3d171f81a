import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { encodeStatus, type DeviceStatus } from '../../protocol/status.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { GROUP, MODEL, runFleet, topics } from '../support/harness.ts';
import { nextEvent, observeFor, until } from '../support/wait.ts';
import { statusFixture } from '../support/status.ts';

const env = useBrokerEnv('forget');

const status = (device: string, time: string): DeviceStatus => statusFixture({ device, group: GROUP, model: MODEL, state: 'ok', progress: 1, agent: 'x', time });

/** What the broker retains for these devices now (a fresh subscriber's view). */
async function retained(url: string, ids: string[]): Promise<string[]> {
  const t = await MqttTransport.connect({ url, clientId: `forget-check-${Math.random().toString(36).slice(2, 8)}`, username: 'op', password: 'op-secret' }, 10_000);
  env.track(t);
  const got = new Set<string>();
  t.onMessage((topic, payload) => {
    const p = topics.parse(topic);
    if (payload.byteLength > 0 && (p?.kind === 'status' || p?.kind === 'presence')) got.add(`${p.deviceId} ${p.kind}`);
  });
  await t.subscribe(
    ids.flatMap((id) => [topics.status(id), topics.presence(id)]),
    1,
  );
  await observeFor(500, 'the retained statuses and presences of the devices named');
  return [...got].sort();
}

describe('fleet devices --forget / --stale', () => {
  it('an operator clears the retained status and presence of devices that are gone, and cannot write one', async () => {
    const dir = await env.dir();
    const users = path.join(dir, 'users.json');
    const dev = (name: string) => ({ name, role: 'device' as const, group: GROUP, model: MODEL });
    await writeUsersFile(users, {
      users: [{ name: 'op', role: 'operator', ...(await hashPassword('op-secret')) }, ...(await Promise.all(['old-1', 'old-2', 'live'].map(async (n) => ({ ...dev(n), ...(await hashPassword(`${n}-pw`)) }))))],
    });
    const broker = await env.broker({ updateServer: false, auth: users, authPollMs: 100 });
    const url = broker.url;
    // Three devices report; two of them long ago and now offline, one online now.
    for (const [id, time, presence] of [
      ['old-1', '2026-01-01T00:00:00.000Z', 'offline'],
      ['old-2', '2026-02-01T00:00:00.000Z', 'offline'],
      ['live', new Date().toISOString(), 'online'],
    ] as const) {
      const t = await MqttTransport.connect({ url, clientId: `fleet-device-${id}`, username: id, password: `${id}-pw` }, 10_000);
      env.track(t);
      await t.publish(topics.status(id), encodeStatus(status(id, time)), { qos: 1, retain: true });
      await t.publish(topics.presence(id), presence, { qos: 1, retain: true });
    }
    const opUrl = url.replace('mqtt://', 'mqtt://op:op-secret@');
    const unknown = await runFleet(['devices', '--broker', opUrl, '--forget', 'nobody']);
    expect(unknown.code).toBe(1);
    expect(unknown.err).toBe('fleet: the broker holds no status or presence of nobody; check the device id (fleet devices lists them)\n');

    const one = await runFleet(['devices', '--broker', opUrl, '--forget', 'old-1']);
    expect(one.err).toBe('');
    expect(one.out).toBe('forgot 1 device(s): old-1\n');
    expect(await retained(url, ['old-1', 'old-2', 'live'])).toEqual(['live presence', 'live status', 'old-2 presence', 'old-2 status']);

    const stale = await runFleet(['devices', '--broker', opUrl, '--stale', '30d']);
    expect(stale.out).toBe('forgot 1 device(s): old-2\n');
    expect(await retained(url, ['old-1', 'old-2', 'live'])).toEqual(['live presence', 'live status']);

    // The operator may clear, never write: a forged status costs it its connection, and the broker keeps the real one.
    const op = await MqttTransport.connect({ url, clientId: 'forger', username: 'op', password: 'op-secret' }, 10_000);
    env.track(op);
    const cutOff = nextEvent<[{ id: string }]>(broker.aedes, 'clientDisconnect', { what: 'the broker cutting off the forging operator', filter: (c) => c.id === 'forger' });
    // Not awaited: the broker answers the forged publish by closing the connection, not with a PUBACK.
    void op.publish(topics.status('live'), encodeStatus({ ...status('live', new Date().toISOString()), state: 'failed' }), { qos: 1, retain: true }).catch(() => undefined);
    await cutOff;
    const check = await MqttTransport.connect({ url, clientId: 'forget-check-live', username: 'op', password: 'op-secret' }, 10_000);
    env.track(check);
    const states: string[] = [];
    check.onMessage((_t, p) => states.push((JSON.parse(Buffer.from(p).toString()) as DeviceStatus).state));
    await check.subscribe(topics.status('live'), 1);
    await until(() => states.length > 0, { what: "live's retained status", timeoutMs: 10_000 });
    expect(states).toEqual(['ok']);
  }, 60_000);
});
