import path from 'node:path';
import mqtt from 'mqtt';
import { describe, expect, it } from 'vitest';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { Topics } from '../../protocol/topics.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';

const topics = new Topics();
const env = useBrokerEnv('ws');

function wsClient(url: string, username: string, password: string): Promise<mqtt.MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { protocolVersion: 4, username, password, clientId: `ws-${Math.random().toString(36).slice(2)}`, reconnectPeriod: 0 });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

describe('MQTT over WebSocket (for browsers)', () => {
  it('a viewer login over ws:// reads statuses and cannot publish; the ACL applies as on TCP', async () => {
    const file = path.join(await env.dir(), 'users.json');
    await writeUsersFile(file, {
      users: [
        { name: 'screen', role: 'viewer', ...(await hashPassword('look-only')) },
        { name: 'ops', role: 'operator', ...(await hashPassword('ops-pw')) },
        { name: 'dev-1', role: 'device', group: 'g', model: 'm', ...(await hashPassword('dev-pw')) },
      ],
    });
    const broker = await env.broker({ auth: file, ws: { port: 0 } });
    expect(broker.wsUrl).toMatch(/^ws:\/\/127\.0\.0\.1:\d+$/);
    await expect(wsClient(broker.wsUrl!, 'screen', 'wrong')).rejects.toThrow();
    const viewer = await wsClient(broker.wsUrl!, 'screen', 'look-only');
    const got: string[] = [];
    viewer.on('message', (t) => got.push(t));
    await viewer.subscribeAsync(topics.allStatuses(), { qos: 1 });
    await expect(viewer.subscribeAsync(topics.allRequests(), { qos: 1 })).rejects.toThrow(/Subscribe error/);
    const dev = await MqttTransport.connect({ url: `mqtt://dev-1:dev-pw@127.0.0.1:${broker.port}`, clientId: 'fleet-device-dev-1' }, 10_000);
    await dev.publish(topics.status('dev-1'), '{"device":"dev-1","group":"g","model":"m","state":"idle"}', { qos: 1, retain: true });
    await until(() => got.includes(topics.status('dev-1')), { what: "the viewer receiving dev-1's status over ws://", timeoutMs: 10_000 });
    // A viewer that publishes is cut off and nothing reaches anyone.
    const watcher = await MqttTransport.connect({ url: `mqtt://ops:ops-pw@127.0.0.1:${broker.port}`, clientId: 'ops-watch' }, 10_000);
    const seen: string[] = [];
    watcher.onMessage((t, p) => seen.push(`${t} ${Buffer.from(p).toString()}`));
    await watcher.subscribe(topics.allStatuses(), 1);
    const closed = new Promise<void>((r) => viewer.once('close', () => r()));
    viewer.publish(topics.status('dev-1'), '{"state":"ok","forged":true}', { qos: 1 });
    await closed;
    await expectNoEventWithin(500, () => seen.find((x) => x.includes('forged')), "the viewer's forged status reaching a subscriber");
    viewer.end(true);
    await dev.close();
    await watcher.close();
  });
});
