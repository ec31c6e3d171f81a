/**
 * One process of `npm run bench:fleet`: many real device agents, each with its
 * own MQTT connection (TCP_NODELAY), directory, persistent bitmap, chunk checks
 * against the signed chunk list, bit-exact apply, atomic switch and ack.
 * Connections start staggered over --ramp-ms (uniformly at random, like a fleet
 * coming online). Prints `{"ready":N}` once every agent is connected, then one
 * JSON line per device when it ends (ok, rejected, rolled_back, failed for good).
 *
 *   node --import tsx bench/fleet-worker.ts --urls U1[,U2…] --devices N --first K
 *     --dir DIR --trust FILE --initial MODEL --model M --group G [--ramp-ms 2000] [--seed 1]
 *
 * Device number g (from K) connects to URL g mod |urls| first and fails over to the others.
 */
import path from 'node:path';
import { promises as fs } from 'node:fs';
import { parseArgs } from 'node:util';
import { DeviceAgent } from '../device/agent.ts';
import { systemClock } from '../platform/clock.ts';
import { digestHealthCheck } from '../device/health.ts';
import { DeviceStorage } from '../device/storage.ts';
import { parseTrustFile } from '../protocol/release.ts';
import { PRESENCE_OFFLINE } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { reportEnd } from '../simulations/sim-support.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';
import { digestModelFile } from '../util/model-file.ts';
import { mulberry32 } from '../util/random.ts';

const { values: a } = parseArgs({
  options: {
    urls: { type: 'string' },
    devices: { type: 'string', default: '1' },
    first: { type: 'string', default: '0' },
    dir: { type: 'string' },
    trust: { type: 'string' },
    initial: { type: 'string' },
    model: { type: 'string' },
    group: { type: 'string' },
    'ramp-ms': { type: 'string', default: '2000' },
    seed: { type: 'string', default: '1' },
  },
});

const urls = a.urls!.split(',');
const n = Number(a.devices);
const first = Number(a.first);
const ramp = Number(a['ramp-ms']);
const rand = mulberry32(Number(a.seed) + first);
const topics = new Topics();
const log = createLogger('bench-worker', parseLogLevel(process.env.FLEET_LOG));
const trust = parseTrustFile(await fs.readFile(a.trust!, 'utf8'));
const agents: Array<{ agent: DeviceAgent; transport: MqttTransport }> = [];
const ended = new Set<string>();
let connected = 0;

async function startDevice(g: number): Promise<void> {
  const id = `bench-${g}`;
  const storage = new DeviceStorage(path.join(a.dir!, id));
  await DeviceAgent.provision(storage, a.initial!, digestModelFile);
  const home = g % urls.length;
  const order = [...urls.slice(home), ...urls.slice(0, home)];
  const transport = MqttTransport.start({
    url: order[0],
    fallbackUrls: order.slice(1),
    clientId: `fleet-device-${id}`,
    will: { topic: topics.presence(id), payload: PRESENCE_OFFLINE, retain: true, qos: 1 },
    keepaliveSeconds: 60,
    reconnectMinMs: 500,
    reconnectMaxMs: 8000,
  });
  let counted = false;
  transport.onConnect(() => {
    if (!counted) connected++;
    counted = true;
  });
  const agent = await DeviceAgent.open({ deviceId: id, model: a.model!, group: a.group!, trust, retryMs: 2000 }, { transport, storage, clock: systemClock, health: digestHealthCheck, topics, log: log.child(id) });
  reportEnd(id, agent, transport, ended);
  agents.push({ agent, transport });
  await agent.start();
}

// Staggered start: each device comes online at a random moment of the ramp.
const starts = Array.from({ length: n }, (_, k) => ({ g: first + k, at: rand() * ramp })).sort((x, y) => x.at - y.at);
const t0 = Date.now();
const started: Array<Promise<void>> = [];
for (const s of starts) {
  const wait = t0 + s.at - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  started.push(startDevice(s.g));
}
await Promise.all(started);
while (connected < n) await new Promise((r) => setTimeout(r, 50));
process.stdout.write(JSON.stringify({ ready: n }) + '\n');

const stop = async (): Promise<void> => {
  await Promise.all(
    agents.map(async ({ agent, transport }) => {
      await agent.stop();
      await transport.close();
    }),
  );
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
