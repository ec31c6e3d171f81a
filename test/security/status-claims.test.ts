/**
 * Issue 14, hole 3: a device speaks for another group. A canary device's login
 * (group g1) publishes a status claiming group g2 and `rejected` for g2's
 * target. With `--auth` the broker refuses it, so g2's rollout completes as an
 * unpoisoned one does (before: the controller counted it in g2, halted and
 * rolled g2 back). Real `fleet broker --auth` process, real agent and controller.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword, writeUsersFile, type UserRecord } from '../../broker/users-file.ts';
import { encodeStatus, parseStatus, type DeviceStatus } from '../../protocol/status.ts';
import { TERMINAL_STATES } from '../../rollout/machine.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { BrokerProcess } from '../support/broker-process.ts';
import { createFixture, freePort, MODEL, startAgent, topics, type Fixture } from '../support/harness.ts';
import { controller, plan, untilStatus, wave } from '../rollout/aedes-helpers.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';
import { observeFor } from '../support/wait.ts';
import { statusFixture } from '../support/status.ts';

const USERS: Array<[string, UserRecord['role'], string?]> = [
  ['d2', 'device', 'g2'],
  ['evil', 'device', 'g1'],
  ['ctl', 'rollout'],
  ['op', 'operator'],
];
const pw = (name: string): string => `${name}-pw`;

let fx: Fixture;
let broker: BrokerProcess;
const url = (user: string): string => `mqtt://${user}:${pw(user)}@127.0.0.1:${broker.port}`;
/** The fixture as `user` sees it (its connections log in as that user). */
const as = (user: string): Fixture => ({ ...fx, url: url(user) });

beforeAll(async () => {
  const port = await freePort();
  fx = await createFixture('sec-status', { externalUrl: `mqtt://127.0.0.1:${port}` });
  const users = await Promise.all(USERS.map(async ([name, role, group]): Promise<UserRecord> => ({ name, role, ...(group ? { group, model: MODEL } : {}), ...(await hashPassword(pw(name))) })));
  await writeUsersFile(path.join(fx.dir, 'users.json'), { users });
  broker = await BrokerProcess.start(port, ['--data-dir', path.join(fx.dir, 'broker'), '--auth', path.join(fx.dir, 'users.json')], fx.dir);
  await fs.writeFile(path.join(fx.dir, 'update.cbor'), encodeUpdateFile(fx.update.payload));
}, 120_000);

afterAll(async () => {
  await fx?.close();
  await broker?.stop();
});

/** A status by `evil` claiming group g2: `rejected` for g2's target at a seq above any release's. */
const forged = (group: string): DeviceStatus =>
  statusFixture({ device: 'evil', group, model: MODEL, state: 'rejected', running: fx.update.baseDigest, target: fx.update.targetDigest, seq: 2 ** 40, reason: 'bad-signature', message: 'forged', agent: 'evil' });

/** Statuses an operator receives on `fleet/devices/+/status` within `ms`. */
async function statusesSeen(ms: number, during: () => Promise<void>): Promise<DeviceStatus[]> {
  const op = await MqttTransport.connect({ url: url('op'), clientId: `op-${Math.random().toString(36).slice(2)}` }, 20_000);
  const seen: DeviceStatus[] = [];
  op.onMessage((_t, p) => {
    const s = parseStatus(p);
    if (s) seen.push(s);
  });
  await op.subscribe(topics.allStatuses());
  await during();
  await observeFor(ms, 'statuses reaching an operator');
  await op.close();
  return seen;
}

/** Publishes as `evil` once (QoS 0: a refused publish closes the connection, nothing to retry). */
async function publishAsEvil(s: DeviceStatus): Promise<void> {
  const t = await MqttTransport.connect({ url: url('evil'), clientId: 'fleet-device-evil', reconnectMinMs: 60_000 }, 20_000);
  await t.publish(topics.status('evil'), encodeStatus(s), { qos: 0, retain: true });
  await new Promise((r) => setTimeout(r, 500));
  await t.close();
}

describe('a device speaks only for its own group and model', () => {
  it('a status claiming another group is refused by the broker; one naming its own goes through', async () => {
    const seen = await statusesSeen(1000, async () => {
      await publishAsEvil(forged('g2'));
      await publishAsEvil({ ...forged('g1'), state: 'idle', target: null, seq: null });
    });
    const mine = seen.filter((s) => s.device === 'evil');
    expect(mine.map((s) => s.group)).toEqual(['g1']);
    // Clear the honest retained status again for the rollout below.
    const t = await MqttTransport.connect({ url: url('evil'), clientId: 'fleet-device-evil' }, 20_000);
    await t.publish(topics.status('evil'), new Uint8Array(0), { qos: 1, retain: true });
    await t.close();
  }, 60_000);

  it("a canary claiming g2 and `rejected` does not halt g2's rollout: it completes as an unpoisoned one does", async () => {
    await startAgent(as('d2'), 'd2', undefined, { group: 'g2' });
    await publishAsEvil(forged('g2'));
    const run = await controller(as('ctl'), plan([wave('g2', { failureThreshold: { count: 1 }, successThreshold: 1 })], { id: 'poisoned' }));
    try {
      const end = await untilStatus(run.ctl, (s) => TERMINAL_STATES.includes(s.state), 90_000);
      expect(end.state).toBe('completed');
      expect(run.events.map((e) => e.type)).not.toContain('halted');
    } finally {
      await run.ctl.stop();
    }
  }, 150_000);
});
