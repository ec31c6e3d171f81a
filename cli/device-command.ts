import { promises as fs } from 'node:fs';
import { DeviceAgent } from '../device/agent.ts';
import { packetLimitOf } from '../device/agent-config.ts';
import { digestModelFile } from '../util/model-file.ts';
import { systemClock } from '../device/clock.ts';
import { digestHealthCheck } from '../device/health.ts';
import { DeviceStorage } from '../device/storage.ts';
import { parseTrustFile } from '../protocol/release.ts';
import { parseGroupKeyFile } from '../protocol/seal.ts';
import { PRESENCE_OFFLINE } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';

export interface DeviceCommandOptions {
  id: string;
  model: string;
  group: string;
  dir: string;
  trust: string;
  /** One broker URL, or several comma-separated (nodes of one cluster) to fail over between. */
  broker: string;
  initial?: string;
  window: number;
  idleMs: number;
  stallTimeout: number;
  retry: number;
  watchdog: number;
  validateCmd?: string;
  validateTimeout: number;
  healthCmd?: string;
  healthTimeout: number;
  healthWindow: number;
  onSwitch?: string;
  groupKey?: string;
  maxPayload?: number;
  maxChunks?: number;
  maxChunk?: number;
  keepalive: number;
  connectTimeout: number;
  reconnectMax: number;
  prefix: string;
  logLevel?: string;
}

/** `fleet device`: runs the agent until SIGINT/SIGTERM. */
export async function runDevice(o: DeviceCommandOptions): Promise<void> {
  const log = createLogger(`device.${o.id}`, parseLogLevel(o.logLevel ?? process.env.FLEET_LOG));
  const topics = new Topics(o.prefix);
  const trust = parseTrustFile(await fs.readFile(o.trust, 'utf8'));
  const storage = new DeviceStorage(o.dir);
  if (o.initial) {
    const digest = await DeviceAgent.provision(storage, o.initial, digestModelFile);
    log.info('model directory ready', { digest });
  }
  // Several comma-separated URLs: nodes of one cluster, tried in turn when a connection fails.
  const [url, ...fallbackUrls] = o.broker.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
  if (!url) throw new Error('--broker needs a URL');
  const transport = MqttTransport.start({
    url,
    fallbackUrls,
    clientId: `fleet-device-${o.id}`,
    will: { topic: topics.presence(o.id), payload: PRESENCE_OFFLINE, retain: true, qos: 1 },
    keepaliveSeconds: o.keepalive,
    connectTimeoutMs: o.connectTimeout * 1000,
    reconnectMaxMs: o.reconnectMax * 1000,
    // Nothing larger than the biggest frame its caps allow is buffered.
    maxIncomingPacket: packetLimitOf({ maxPayloadBytes: o.maxPayload, maxChunks: o.maxChunks, maxChunkBytes: o.maxChunk }),
  });
  let refused: string | undefined;
  transport.onDisconnect((reason) => {
    if (reason.startsWith('the broker refused') && reason !== refused) log.error(`${reason}; retrying with backoff`);
    refused = reason.startsWith('the broker refused') ? reason : undefined;
  });
  transport.onConnect(() => (refused = undefined));
  transport.onDisconnect(() => {
    if (transport.oversized) log.warn(`connection closed: the broker sent a ${transport.oversized}`);
    transport.oversized = undefined;
  });
  const agent = new DeviceAgent(
    { deviceId: o.id, model: o.model, group: o.group, trust, window: o.window, idleMs: o.idleMs, stallMs: o.stallTimeout * 1000, retryMs: o.retry * 1000, watchdogMs: o.watchdog * 1000,
      validateCmd: o.validateCmd, validateTimeoutMs: o.validateTimeout * 1000, healthCmd: o.healthCmd, healthTimeoutMs: o.healthTimeout * 1000,
      healthWindowMs: o.healthWindow * 1000, onSwitchCmd: o.onSwitch, maxPayloadBytes: o.maxPayload, maxChunks: o.maxChunks, maxChunkBytes: o.maxChunk,
      groupKey: o.groupKey ? parseGroupKeyFile(await fs.readFile(o.groupKey, 'utf8')) : undefined },
    { transport, storage, clock: systemClock, health: digestHealthCheck, topics, log },
  );
  await agent.start();
  let stopping = false;
  const shutdown = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await agent.stop();
    if (transport.connected) await transport.publish(topics.presence(o.id), PRESENCE_OFFLINE, { qos: 1, retain: true }).catch(() => undefined);
    await transport.close();
    process.exit(0);
  };
  process.on('SIGINT', () => void shutdown());
  process.on('SIGTERM', () => void shutdown());
}
