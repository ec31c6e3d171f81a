import { IoError, UsageError } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
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
import { DEFAULT_STOP_TIMEOUT_MS, GracefulStop } from '../util/graceful-stop.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';
import { DirLock } from '../util/dir-lock.ts';
import { EXIT_CONFLICT } from '../util/exit-codes.ts';
import type { DeviceCliOptions } from './device-cli.ts';

/** `fleet device`'s options as typed (cli/device-cli.ts), and what the program adds. */
export interface DeviceCommandOptions extends DeviceCliOptions {
  prefix: string;
  logLevel?: string;
  /** Bound of the graceful stop, ms (`--stop-timeout`). */
  stopTimeoutMs?: number;
}

/** The offline presence gets at most this long on stop (the broker's last will covers the rest). */
const PRESENCE_ON_STOP_MS = 1000;

/** `fleet device`: runs the agent until SIGINT/SIGTERM. */
export async function runDevice(o: DeviceCommandOptions): Promise<void> {
  const log = createLogger(`device.${o.id}`, parseLogLevel(o.logLevel ?? process.env.FLEET_LOG));
  // Nothing a restart needs depends on these steps: the journal, pointer and memory are written
  // atomically at every step; an abandoned build or apply is a crash at that instant (docs/safety.md, "Stopping").
  const stop = new GracefulStop({ timeoutMs: o.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS, log });
  const topics = new Topics(o.prefix);
  const trust = parseTrustFile(await fs.readFile(o.trust, 'utf8'));
  // One agent per device directory (released when the process exits, taken over from a dead one).
  await DirLock.acquire(o.dir, `fleet device ${o.id}`);
  const storage = new DeviceStorage(o.dir);
  if (o.initial) {
    const digest = await DeviceAgent.provision(storage, o.initial, digestModelFile);
    log.info('model directory ready', { digest });
  }
  // Several comma-separated URLs: nodes of one cluster, tried in turn when a connection fails.
  const [url, ...fallbackUrls] = o.broker.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
  if (!url) throw new UsageError('bad-options', '--broker needs a URL');
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
  // What a person at the device sees at the default log level: where it connects, when it is
  // connected, and why it cannot (each cause once until it changes or a connection succeeds).
  const where = [url, ...fallbackUrls].map((u) => u.replace(/\/\/[^@/]*@/, '//')).join(', ');
  process.stdout.write(`fleet device ${o.id}: model ${o.model}, group ${o.group}, directory ${path.resolve(o.dir)}; connecting to ${where}\n`);
  let said: string | undefined;
  let wasConnected = false;
  transport.onDisconnect((reason) => {
    if (reason === 'connection closed') {
      if (wasConnected) log.warn('lost the connection to the broker; reconnecting with backoff');
      wasConnected = false;
      return;
    }
    if (reason === said) return;
    said = reason;
    if (reason.startsWith('the broker refused')) log.error(`${reason}; retrying with backoff`);
    else log.warn(`cannot reach the broker: ${reason}; retrying with backoff`);
  });
  transport.onConnect(() => {
    said = undefined;
    wasConnected = true;
    process.stdout.write(`fleet device ${o.id}: connected to ${transport.server}\n`);
  });
  transport.onDisconnect(() => {
    if (transport.oversized) log.warn(`connection closed: the broker sent a ${transport.oversized}`);
    transport.oversized = undefined;
  });
  const agent = new DeviceAgent(
    { deviceId: o.id, model: o.model, group: o.group, trust, window: o.window, idleMs: o.idleMs, stallMs: o.stallTimeout * 1000, retryMs: o.retry * 1000, watchdogMs: o.watchdog * 1000,
      validateCmd: o.validateCmd, validateTimeoutMs: o.validateTimeout * 1000, healthCmd: o.healthCmd, healthTimeoutMs: o.healthTimeout * 1000,
      healthWindowMs: o.healthWindow * 1000, maxAttempts: o.maxAttempts, onSwitchCmd: o.onSwitch, maxPayloadBytes: o.maxPayload, maxChunks: o.maxChunks, maxChunkBytes: o.maxChunk,
      groupKey: o.groupKey ? parseGroupKeyFile(await fs.readFile(o.groupKey, 'utf8')) : undefined },
    {
      transport, storage, clock: systemClock, health: digestHealthCheck, topics, log,
      // Another agent uses this id and this one is the younger: say so and end (the last will says offline).
      onFatal: (message) => {
        process.stderr.write(`fleet: ${message}\n`);
        setTimeout(() => process.exit(EXIT_CONFLICT), 2000).unref();
        void transport.close().finally(() => process.exit(EXIT_CONFLICT));
      },
    },
  );
  let offlineSent = false;
  // Runs last: a clean DISCONNECT only once `offline` is acked, else the socket is dropped so the broker sends the last will.
  stop.add({ name: 'MQTT disconnect', optional: true, run: () => transport.close(offlineSent ? undefined : 0) });
  stop.add({
    name: 'offline presence', optional: true, timeoutMs: PRESENCE_ON_STOP_MS,
    run: async () => {
      if (!transport.connected) throw new IoError('not-connected', 'not connected (the last will says offline)');
      await transport.publish(topics.presence(o.id), PRESENCE_OFFLINE, { qos: 1, retain: true });
      offlineSent = true;
    },
  });
  stop.add({ name: 'device agent (work in progress)', run: () => agent.stop() });
  await agent.start();
}
