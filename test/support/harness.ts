import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { FLEET_BIN, stopChild } from '../../platform/child-process.ts';
import { DeviceAgent, type AgentConfig } from '../../device/agent.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { systemClock } from '../../platform/clock.ts';
import { digestHealthCheck } from '../../device/health.ts';
import { DeviceStorage } from '../../device/storage.ts';
import { parseStatus, type DeviceStatus } from '../../protocol/status.ts';
import { Topics } from '../../protocol/topics.ts';
import { parseTrustFile, type SigningKey } from '../../protocol/release.ts';
import { keygen, loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate, type PublishResult } from '../../publisher/publish.ts';
import { synthesizeModel, synthesizeUpdate, type SynthUpdate } from '../../publisher/synth.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger, type Logger } from '../../util/log.ts';
import { observeFor, until } from './wait.ts';

export const topics = new Topics();
export const MODEL = 'test-model';
export const GROUP = 'line-1';
/** Small chunks so the small test models still travel in several chunks. */
export const CHUNK = 1024;

/** ~64 KiB updates at rank 16: long enough to interrupt on a slow link. */
export const MEDIUM_LAYERS: Array<[number, number]> = [
  [256, 256],
  [256, 256],
];

/** Small layers keep tests fast; still several chunks at 1 KiB. */
export const SMALL_LAYERS: Array<[number, number]> = [
  [64, 96],
  [128, 64],
  [10, 128],
];

/** Whether a file is there (for `until` and `expectNoEventWithin`). */
export const exists = (file: string): Promise<boolean> =>
  fs.access(file).then(
    () => true,
    () => false,
  );

export async function tempDir(tag: string): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), `fleet-${tag}-`));
}

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Everything a test fleet needs: a broker, keys, a base model and an update. */
export interface Fixture {
  dir: string;
  /** The in-process Aedes broker, unless the fixture uses an external one. */
  broker: RunningBroker | undefined;
  url: string;
  trustFile: string;
  /** Release key (signs manifests). */
  keyFile: string;
  /** Rollout key (signs group assignments); the fixture's trust file names both roles. */
  rolloutKeyFile: string;
  baseFile: string;
  base: Uint8Array;
  update: SynthUpdate;
  children: ChildProcess[];
  transports: MqttTransport[];
  agents: DeviceAgent[];
  close(): Promise<void>;
}

export interface FixtureOptions {
  updateServer?: boolean;
  externalUrl?: string;
  layers?: Array<[number, number]>;
  rank?: number;
}

export async function createFixture(tag: string, opts: FixtureOptions = {}): Promise<Fixture> {
  const dir = await tempDir(tag);
  const broker = opts.externalUrl ? undefined : await startBroker({ port: 0, dataDir: path.join(dir, 'broker'), persistence: 'memory', log: silentLogger, updateServer: opts.updateServer });
  const keys = await keygen(path.join(dir, 'keys'));
  const base = synthesizeModel(7, opts.layers ?? SMALL_LAYERS);
  const update = synthesizeUpdate(base, opts.rank ?? 3, 8);
  const baseFile = path.join(dir, 'base.safetensors');
  await fs.writeFile(baseFile, base);
  const f: Fixture = {
    dir,
    broker,
    url: opts.externalUrl ?? broker!.url,
    trustFile: keys.trustFile,
    keyFile: keys.keyFile,
    rolloutKeyFile: keys.rolloutKeyFile,
    baseFile,
    base,
    update,
    children: [],
    transports: [],
    agents: [],
    async close() {
      await Promise.all(f.children.map((c) => stopChild(c)));
      for (const a of f.agents) await a.stop();
      for (const t of f.transports) await t.close();
      await broker?.close();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
  return f;
}

export async function connect(f: Fixture, clientId: string): Promise<MqttTransport> {
  const t = await MqttTransport.connect({ url: f.url, clientId }, 10_000);
  f.transports.push(t);
  return t;
}

/** The fixture's release and rollout keys, as publishUpdate/rollbackGroup take them. */
export async function fixtureKeys(f: Pick<Fixture, 'keyFile' | 'rolloutKeyFile'>): Promise<{ keys: SigningKey[]; rolloutKeys: SigningKey[] }> {
  return { keys: [await loadSigningKey(f.keyFile)], rolloutKeys: [await loadSigningKey(f.rolloutKeyFile)] };
}

/** Publish the fixture's update (or another payload) with a publisher that disconnects afterwards. */
export async function publish(f: Fixture, payload: Uint8Array = f.update.payload, chunkSize = CHUNK): Promise<PublishResult> {
  const t = await MqttTransport.connect({ url: f.url, clientId: `test-publisher-${Math.random().toString(36).slice(2)}` }, 10_000);
  try {
    return await publishUpdate({
      transport: t,
      topics,
      payloads: [payload],
      ...(await fixtureKeys(f)),
      model: MODEL,
      group: GROUP,
      chunkSize,
      ttlSeconds: 3600,
      log: silentLogger,
    });
  } finally {
    await t.close();
  }
}

/** A device agent as a separate OS process, started by PID and stopped by PID in close(). */
export function spawnDevice(f: Fixture, id: string, extra: string[] = [], url = f.url): ChildProcess {
  const log = createWriteStream(path.join(f.dir, `${id}.log`), { flags: 'a' });
  const child = spawn(
    process.execPath,
    [
      FLEET_BIN,
      '--log-level',
      'info',
      'device',
      '--id',
      id,
      '--model',
      MODEL,
      '--group',
      GROUP,
      '--dir',
      path.join(f.dir, id),
      '--trust',
      f.trustFile,
      '--broker',
      url,
      '--initial',
      f.baseFile,
      '--idle-ms',
      '1000',
      ...extra,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  f.children.push(child);
  return child;
}

/** A device agent in this process (for tests that inspect its internals), connected to `url` (default the fixture's broker; a proxy in front of it). */
export async function startAgent(f: Fixture, id: string, log: Logger = silentLogger, config: Partial<AgentConfig> = {}, url = f.url): Promise<{ agent: DeviceAgent; storage: DeviceStorage; transport: MqttTransport }> {
  const storage = new DeviceStorage(path.join(f.dir, id));
  await DeviceAgent.provision(storage, f.baseFile, digestModelFile);
  const transport = MqttTransport.start({ url, clientId: `fleet-device-${id}` });
  f.transports.push(transport);
  const agent = await DeviceAgent.open(
    { deviceId: id, model: MODEL, group: GROUP, trust: parseTrustFile(await fs.readFile(f.trustFile, 'utf8')), idleMs: 1000, ...config },
    { transport, storage, clock: systemClock, health: digestHealthCheck, topics, log },
  );
  f.agents.push(agent);
  await agent.start();
  return { agent, storage, transport };
}

/** Follows retained device statuses. */
export class StatusWatch {
  readonly latest = new Map<string, DeviceStatus>();
  readonly history: DeviceStatus[] = [];
  private waiters: Array<() => void> = [];

  static async start(f: Fixture): Promise<StatusWatch> {
    const w = new StatusWatch();
    const t = await connect(f, `test-watch-${Math.random().toString(36).slice(2)}`);
    t.onMessage((topic, payload) => {
      const p = topics.parse(topic);
      if (p?.kind !== 'status') return;
      const s = parseStatus(payload);
      if (!s) return;
      w.latest.set(s.device, s);
      w.history.push(s);
      for (const fn of w.waiters.splice(0)) fn();
    });
    await t.subscribe(topics.allStatuses(), 1);
    return w;
  }

  /**
   * The first status of `device` after index `from` of the history (and made at or after `t0`)
   * that satisfies `pred`: for a status that may be replaced before `until` would see it.
   */
  after(device: string, from: number, t0: number, pred: (s: DeviceStatus) => boolean, timeoutMs = 15_000): Promise<DeviceStatus> {
    return until(() => this.history.slice(from).find((h) => h.device === device && Date.parse(h.time) >= t0 && pred(h)), {
      what: `a status of ${device}`,
      timeoutMs,
      intervalMs: 20,
      context: () =>
        `statuses since: ${this.history
          .slice(from)
          .filter((h) => h.device === device)
          .map((h) => `${h.state}/${h.reason}`)
          .join(', ')}`,
    });
  }

  /** Wait until `pred` holds for the device's latest status. */
  async until(device: string, pred: (s: DeviceStatus) => boolean, timeoutMs = 30_000): Promise<DeviceStatus> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = this.latest.get(device);
      if (s && pred(s)) return s;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${device}; last status: ${JSON.stringify(s)}`);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          r();
        });
      });
    }
  }
}

/**
 * The retained message on `topic` as a fresh subscriber reads it: as soon as it arrives, or
 * undefined when none has within `absentAfterMs` (the bounded wait of a check that nothing is retained).
 */
export async function readRetained(f: Fixture, topic: string, absentAfterMs = 500): Promise<Uint8Array | undefined> {
  const t = await MqttTransport.connect({ url: f.url, clientId: `test-retained-${Math.random().toString(36).slice(2)}` }, 10_000);
  try {
    let got: Uint8Array | undefined;
    let arrived: () => void = () => {};
    const came = new Promise<void>((r) => (arrived = r));
    t.onMessage((tp, p, retained) => {
      if (tp !== topic || !retained || p.byteLength === 0) return;
      got = p;
      arrived();
    });
    await t.subscribe(topic, 1);
    await Promise.race([came, observeFor(absentAfterMs, `a retained message on ${topic}`)]);
    return got;
  } finally {
    await t.close();
  }
}

/** Resolves once a line of a child's log file (spawnFleet's `{name}.log`) matches `pattern`. */
export async function untilLog(file: string, pattern: RegExp, timeoutMs = 15_000): Promise<void> {
  let text = '';
  await until(async () => pattern.test((text = await fs.readFile(file, 'utf8').catch(() => ''))), { what: `${path.basename(file)} to match ${pattern}`, timeoutMs, context: () => `log: ${text.slice(-2000)}` });
}

export async function currentDigest(f: Fixture, id: string): Promise<string> {
  return digestModelFile(path.join(f.dir, id, 'current.safetensors'));
}

/** Any `fleet` subcommand as a child process of the fixture (stopped by PID in close()). */
export function spawnFleet(f: Fixture, name: string, args: string[]): ChildProcess {
  const log = createWriteStream(path.join(f.dir, `${name}.log`), { flags: 'a' });
  const child = spawn(process.execPath, [FLEET_BIN, '--log-level', 'info', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  f.children.push(child);
  return child;
}

/**
 * Runs `fleet …` to its end without blocking this process (the fixture's broker runs in it:
 * never spawnSync against it): exit code and what it wrote. Killed by its PID after `timeoutMs`.
 */
export function runFleet(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [FLEET_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => process.kill(c.pid!, 'SIGKILL'), timeoutMs);
    c.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

/** Resolves once something accepts TCP connections on the port. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const accepts = (): Promise<boolean> =>
    new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
  await until(accepts, { what: `something listening on 127.0.0.1:${port}`, timeoutMs });
}

/** The retained release of a group for the fixture's model, if any (read for half a second). */
export async function retainedRelease(fx: Fixture, group: string = GROUP): Promise<Uint8Array | undefined> {
  const t = await connect(fx, `release-read-${group}-${Math.random().toString(36).slice(2, 6)}`);
  let got: Uint8Array | undefined;
  t.onMessage((topic, payload) => {
    if (topic === topics.release(group, MODEL) && payload.byteLength > 0) got = payload;
  });
  await t.subscribe(topics.release(group, MODEL), 1);
  await new Promise((r) => setTimeout(r, 500));
  return got;
}
