/**
 * Many device agents in one process, each with its own MQTT connection,
 * directory, bitmap and chunk checks: a site's devices for the fleet
 * simulation. Prints one JSON line per device when it ends (ok, rejected,
 * rolled_back, failed), with its socket counters and transfer counters.
 *
 *   node --import tsx simulations/device-host.ts --broker URL --devices N --dir DIR
 *     --trust FILE --initial MODEL --model M --group G [--id-prefix site-a-]
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DeviceAgent } from '../device/agent.ts';
import { systemClock } from '../platform/clock.ts';
import { digestHealthCheck } from '../device/health.ts';
import { DeviceStorage } from '../device/storage.ts';
import { parseTrustFile } from '../protocol/release.ts';
import { PRESENCE_OFFLINE } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { reportEnd } from './sim-support.ts';
import { digestModelFile } from '../util/model-file.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';

const { values: a } = parseArgs({
  options: {
    broker: { type: 'string' },
    devices: { type: 'string', default: '1' },
    dir: { type: 'string' },
    trust: { type: 'string' },
    initial: { type: 'string' },
    model: { type: 'string' },
    group: { type: 'string' },
    'id-prefix': { type: 'string', default: 'sim-' },
    'idle-ms': { type: 'string', default: '10000' },
  },
});

const topics = new Topics();
const log = createLogger('device-host', parseLogLevel(process.env.FLEET_LOG));
const trust = parseTrustFile(await fs.readFile(a.trust!, 'utf8'));
const n = Number(a.devices);
const agents: Array<{ agent: DeviceAgent; transport: MqttTransport }> = [];
const ended = new Set<string>();

for (let k = 0; k < n; k++) {
  const id = `${a['id-prefix']}${k + 1}`;
  const storage = new DeviceStorage(path.join(a.dir!, id));
  await DeviceAgent.provision(storage, a.initial!, digestModelFile);
  const transport = MqttTransport.start({
    url: a.broker!,
    clientId: `fleet-device-${id}`,
    will: { topic: topics.presence(id), payload: PRESENCE_OFFLINE, retain: true, qos: 1 },
    keepaliveSeconds: 30,
    reconnectMinMs: 500,
    reconnectMaxMs: 8000,
    labelTopic: (t) => topics.parse(t)?.kind ?? 'other',
  });
  // Timelines (FLEET_LOG=debug): each connection's end and start beside the download's requests and chunks.
  transport.onDisconnect((reason) => log.child(id).debug('disconnected', { reason, partialBytesDropped: transport.loss.partialBytesDropped }));
  transport.onConnect(() => log.child(id).debug('connected', { quick: transport.reconnectedQuickly }));
  const agent = await DeviceAgent.open(
    { deviceId: id, model: a.model!, group: a.group!, trust, idleMs: Number(a['idle-ms']), retryMs: 2000, stallMs: 60_000 },
    { transport, storage, clock: systemClock, health: digestHealthCheck, topics, log: log.child(id) },
  );
  reportEnd(id, agent, transport, ended);
  agents.push({ agent, transport });
  await agent.start();
}
process.stdout.write(JSON.stringify({ ready: n }) + '\n');

const stop = async (): Promise<void> => {
  for (const { agent, transport } of agents) {
    await agent.stop();
    await transport.close();
  }
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
