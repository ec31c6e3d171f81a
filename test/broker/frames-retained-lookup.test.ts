/**
 * A single broker node (on-disk persistence) does not look up retained messages for a device's
 * frames subscription (`…/updates/+/to/DEVICE`): frames are never published retained, and the
 * lookup read every retained message on disk (a status and a presence per device) for each
 * device that (re)connects. Other filters still get their retained messages. Real broker, real TCP.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { Topics } from '../../protocol/topics.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { until } from '../support/wait.ts';

const topics = new Topics();
let dir: string | undefined;
let broker: RunningBroker | undefined;
const clients: MqttTransport[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await broker?.close();
  broker = undefined;
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function connect(id: string): Promise<MqttTransport> {
  const c = await MqttTransport.connect({ url: broker!.url, clientId: id }, 10_000);
  clients.push(c);
  return c;
}

describe('single broker: frames subscriptions skip the retained lookup', () => {
  it('a retained message on a frames topic is not replayed to the frames filter; a status filter still gets its retained status', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'frames-lookup-'));
    broker = await startBroker({ port: 0, dataDir: dir, persistence: 'level', updateServer: false, log: silentLogger });
    const pub = await connect('publisher');
    const frameTopic = topics.frames('m', 'u1', 'dev1');
    await pub.publish(frameTopic, new Uint8Array([1, 2, 3]), { qos: 1, retain: true });
    await pub.publish(topics.status('dev1'), new Uint8Array([4]), { qos: 1, retain: true });

    const device = await connect('dev1');
    const got: string[] = [];
    device.onMessage((t) => void got.push(t));
    await device.subscribe(topics.framesFor('m', 'dev1'), 1);
    await device.subscribe(topics.allStatuses(), 1);
    await until(() => got.includes(topics.status('dev1')), { timeoutMs: 10_000, what: 'the retained status' });
    // The status came after the frames SUBACK; give a replayed frame as long again.
    await new Promise((r) => setTimeout(r, 300));
    expect(got).toEqual([topics.status('dev1')]);

    // A live (not retained) frame still reaches the subscriber.
    await pub.publish(frameTopic, new Uint8Array([5]), { qos: 1 });
    await until(() => got.includes(frameTopic), { timeoutMs: 10_000, what: 'the live frame' });
  });
});
