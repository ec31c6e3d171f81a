import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DeviceAgent } from '../device/agent.ts';
import { packetLimitOf } from '../device/agent-config.ts';
import { modelFormatOf } from '../util/model-format.ts';
import { onnxValidatorFor } from './onnx-options.ts';
import type { StagedValidator } from '../device/onnx-validate.ts';
import { systemClock } from '../platform/clock.ts';
import { digestHealthCheck } from '../device/health.ts';
import { DeviceStorage } from '../device/storage.ts';
import { parseTrustFile } from '../protocol/release.ts';
import { parseGroupKeyFile } from '../protocol/seal.ts';
import { encodePresence, PRESENCE_OFFLINE } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { DEFAULT_STOP_TIMEOUT_MS, GracefulStop } from '../util/graceful-stop.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';
import { DirLock } from '../util/dir-lock.ts';
import { EXIT_CONFLICT } from '../util/exit-codes.ts';
import type { Logger } from '../util/log.ts';
import { urlWithoutLogin } from '../util/url-login.ts';
import { startStepsOnto, type Step } from '../platform/steps.ts';
import { IoError, UsageError } from '../platform/errors.ts';
import type { TrustFile } from '../protocol/release.ts';

/** A device node's options, as `fleet device` parses them (cli/device-cli.ts). */
export interface DeviceNodeOptions {
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
  maxAttempts: number;
  onSwitch?: string;
  groupKey?: string;
  maxPayload?: number;
  maxChunks?: number;
  maxChunk?: number;
  keepalive: number;
  connectTimeout: number;
  reconnectMax: number;
  /** ONNX Runtime validation of the staged model (docs/onnx.md). */
  validateOnnx?: string;
  minAccuracy?: number;
  maxDrop?: number;
}

/** `fleet device`'s options as typed (cli/device-cli.ts), and what the program adds. */
export interface DeviceCommandOptions extends DeviceNodeOptions {
  prefix: string;
  logLevel?: string;
  /** Bound of the graceful stop, ms (`--stop-timeout`). */
  stopTimeoutMs?: number;
}

/** The offline presence gets at most this long on stop (the broker's last will covers the rest). */
const PRESENCE_ON_STOP_MS = 1000;

/** The device node's parts, set as its steps start. */
interface DeviceParts {
  readonly o: DeviceCommandOptions;
  readonly log: Logger;
  readonly topics: Topics;
  trust?: TrustFile;
  storage?: DeviceStorage;
  /** --validate-onnx's check of a staged model (checked before anything connects). */
  validator?: StagedValidator;
  transport?: MqttTransport;
  /** `offline` was acknowledged: the disconnect may be clean (no last will). */
  offlineSent: boolean;
  agent?: DeviceAgent;
}

const trustFile: Step<DeviceParts> = {
  name: 'trust file',
  start: async (p) => void (p.trust = parseTrustFile(await fs.readFile(p.o.trust, 'utf8'))),
};

/** One agent per device directory (released when the process exits, taken over from a dead one). */
const directoryLock: Step<DeviceParts> = {
  name: 'directory lock',
  start: async (p) => void (await DirLock.acquire(p.o.dir, `fleet device ${p.o.id}`)),
};

const modelDirectory: Step<DeviceParts> = {
  name: 'model directory',
  async start(p) {
    const storage = new DeviceStorage(p.o.dir, undefined, p.o.initial ? modelFormatOf(p.o.initial) : undefined);
    p.storage = storage;
    if (p.o.initial) {
      const digest = await DeviceAgent.provision(storage, p.o.initial, (f, fsys) => storage.format.digestFile(f, fsys));
      p.log.info('model directory ready', { digest });
    }
    await storage.init();
    p.validator = await onnxValidatorFor(p.o, storage);
  },
};

/** Runs last on stop: a clean DISCONNECT only once `offline` is acked, else the socket is dropped so the broker sends the last will. */
const brokerConnection: Step<DeviceParts> = {
  name: 'MQTT disconnect',
  optional: true,
  start(p) {
    const o = p.o;
    // Several comma-separated URLs: nodes of one cluster, tried in turn when a connection fails.
    const [url, ...fallbackUrls] = o.broker
      .split(',')
      .map((x) => x.trim())
      .filter((x) => x.length > 0);
    if (!url) throw new UsageError('bad-options', '--broker needs a URL');
    p.transport = MqttTransport.start({
      url,
      fallbackUrls,
      clientId: `fleet-device-${o.id}`,
      will: { topic: p.topics.presence(o.id), payload: PRESENCE_OFFLINE, retain: true, qos: 1 },
      keepaliveSeconds: o.keepalive,
      connectTimeoutMs: o.connectTimeout * 1000,
      reconnectMaxMs: o.reconnectMax * 1000,
      // Nothing larger than the biggest frame its caps allow is buffered.
      maxIncomingPacket: packetLimitOf({ maxPayloadBytes: o.maxPayload, maxChunks: o.maxChunks, maxChunkBytes: o.maxChunk }),
    });
    const where = [url, ...fallbackUrls].map((u) => urlWithoutLogin(u)).join(', ');
    process.stdout.write(`fleet device ${o.id}: model ${o.model}, group ${o.group}, directory ${path.resolve(o.dir)}; connecting to ${where}\n`);
    sayConnection(p.transport, o.id, p.log);
  },
  stop: (p) => p.transport?.close(p.offlineSent ? undefined : 0),
};

/**
 * What a person at the device sees at the default log level: where it connects, when it is
 * connected, and why it cannot (each cause once until it changes or a connection succeeds).
 */
function sayConnection(transport: MqttTransport, id: string, log: Logger): void {
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
    process.stdout.write(`fleet device ${id}: connected to ${transport.server}\n`);
  });
  transport.onDisconnect(() => {
    if (transport.oversized) log.warn(`connection closed: the broker sent a ${transport.oversized}`);
    transport.oversized = undefined;
  });
}

/** On stop, `offline` (retained) before the disconnect; bounded: the broker's last will covers the rest. */
const offlinePresence: Step<DeviceParts> = {
  name: 'offline presence',
  optional: true,
  stopTimeoutMs: PRESENCE_ON_STOP_MS,
  start: () => undefined,
  async stop(p) {
    const transport = p.transport!;
    if (!transport.connected) throw new IoError('not-connected', 'not connected (the last will says offline)');
    await transport.publish(p.topics.presence(p.o.id), encodePresence('offline', Date.now()), { qos: 1, retain: true });
    p.offlineSent = true;
  },
};

/** The agent; its stop (work in progress) is on the stack before it starts. */
const deviceAgent: Step<DeviceParts> = {
  name: 'device agent (work in progress)',
  async start(p) {
    const o = p.o;
    const transport = p.transport!;
    p.agent = await DeviceAgent.open(
      {
        deviceId: o.id,
        model: o.model,
        group: o.group,
        trust: p.trust!,
        window: o.window,
        idleMs: o.idleMs,
        stallMs: o.stallTimeout * 1000,
        retryMs: o.retry * 1000,
        watchdogMs: o.watchdog * 1000,
        validateCmd: o.validateCmd,
        validateTimeoutMs: o.validateTimeout * 1000,
        healthCmd: o.healthCmd,
        healthTimeoutMs: o.healthTimeout * 1000,
        healthWindowMs: o.healthWindow * 1000,
        maxAttempts: o.maxAttempts,
        onSwitchCmd: o.onSwitch,
        maxPayloadBytes: o.maxPayload,
        maxChunks: o.maxChunks,
        maxChunkBytes: o.maxChunk,
        groupKey: o.groupKey ? parseGroupKeyFile(await fs.readFile(o.groupKey, 'utf8')) : undefined,
        validator: p.validator,
      },
      {
        transport,
        storage: p.storage!,
        clock: systemClock,
        health: digestHealthCheck,
        topics: p.topics,
        log: p.log,
        // Another agent uses this id and this one is the younger: say so and end (the last will says offline).
        onFatal: (message) => {
          process.stderr.write(`fleet: ${message}\n`);
          setTimeout(() => process.exit(EXIT_CONFLICT), 2000).unref();
          void transport.close().finally(() => process.exit(EXIT_CONFLICT));
        },
      },
    );
  },
  stop: (p) => p.agent?.stop(),
};

const agentRunning: Step<DeviceParts> = { name: 'device agent start', start: (p) => p.agent!.start() };

/** The device node, in the order it starts; the stops, in reverse, are the process's graceful stop. */
export const DEVICE_NODE: readonly Step<DeviceParts>[] = [trustFile, directoryLock, modelDirectory, brokerConnection, offlinePresence, deviceAgent, agentRunning];

/** `fleet device`: runs the agent until SIGINT/SIGTERM. */
export async function runDevice(o: DeviceCommandOptions): Promise<void> {
  const log = createLogger(`device.${o.id}`, parseLogLevel(o.logLevel ?? process.env.FLEET_LOG));
  // Nothing a restart needs depends on these steps: the journal, pointer and memory are written
  // atomically at every step; an abandoned build or apply is a crash at that instant (docs/safety.md, "Stopping").
  const stop = new GracefulStop({ timeoutMs: o.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS, log });
  await startStepsOnto(DEVICE_NODE, { o, log, topics: new Topics(o.prefix), offlineSent: false }, stop);
}
