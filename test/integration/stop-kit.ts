import type { ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DeviceStorage } from '../../device/storage.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { BrokerProcess } from '../support/broker-process.ts';
import { MuteBroker } from '../support/mute-broker.ts';
import { createFixture, currentDigest, freePort, GROUP, MODEL, spawnFleet, type Fixture } from '../support/harness.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';
import { until } from '../support/wait.ts';

/**
 * Shared by stop.test.ts and stop.slow.test.ts: every long-running command as
 * a real process, stopped by PID at bad moments (issue 24, docs/safety.md "Stopping").
 */

/** `--stop-timeout` the commands run with in these tests, seconds. */
export const STOP_S = 2;
/** What a loaded 2-core machine may add to the bound: node start-up is not in it, process teardown is. */
export const SLACK_MS = 4000;
/** A process not gone by then is killed and the test fails (the old code never exited at all). */
const CAP_MS = 20_000;

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** From the signal to the exit. */
  ms: number;
  /** False when it had exited before the signal could be sent. */
  signalled: boolean;
}

export interface StopFixture extends Fixture {
  planFile: string;
  runs: number;
}

export async function stopFixture(): Promise<StopFixture> {
  const f = await createFixture('stop', { externalUrl: 'mqtt://127.0.0.1:1' });
  const planFile = path.join(f.dir, 'plan.json');
  await fs.writeFile(path.join(f.dir, 'update.cbor'), encodeUpdateFile(f.update.payload));
  await fs.writeFile(
    planFile,
    JSON.stringify({
      id: 'stop-test',
      model: MODEL,
      updates: ['update.cbor'],
      chunkSize: 1024,
      waves: [{ group: GROUP, successThreshold: 1, failureThreshold: { count: 1 }, soakSeconds: 3600, timeoutSeconds: 7200, offline: 'block' }],
    }),
  );
  return Object.assign(f, { planFile, runs: 0 });
}

/** One long-running command: how to start it against a broker URL, and the client id it connects with. */
export interface CommandSpec {
  name: string;
  /** The start of its MQTT client id, from its run name and PID (a broker process's own update server is `fleet-update-server-` too). */
  clientId(run: string, pid: number): string;
  /** What it does on a broker that never acknowledges: publishes (QoS 1) or only subscribes. */
  onMute: 'publish' | 'subscribe';
  args(f: StopFixture, url: string, run: string): Promise<string[]>;
}

export const COMMANDS: CommandSpec[] = [
  {
    name: 'device',
    clientId: (run) => `fleet-device-${run}`,
    onMute: 'publish',
    args: async (f, url, run) => ['device', '--id', run, '--model', MODEL, '--group', GROUP, '--dir', path.join(f.dir, run), '--trust', f.trustFile, '--broker', url, '--initial', f.baseFile],
  },
  { name: 'serve', clientId: (_run, pid) => `fleet-update-server-${pid}`, onMute: 'subscribe', args: async (f, url, run) => ['serve', '--broker', url, '--data-dir', path.join(f.dir, run)] },
  {
    name: 'gateway',
    clientId: (run) => `fleet-gateway-${run}`,
    onMute: 'publish',
    args: async (f, url, run) => ['gateway', '--upstream', url, '--listen', String(await freePort()), '--host', '127.0.0.1', '--data-dir', path.join(f.dir, run), '--site', run, '--group', GROUP, '--tick-ms', '100'],
  },
  {
    name: 'rollout start',
    clientId: (_run, pid) => `fleet-rollout-stop-test-${pid}`,
    onMute: 'publish',
    args: async (f, url) => ['rollout', 'start', f.planFile, '--key', f.keyFile, '--rollout-key', f.rolloutKeyFile, '--broker', url, '--settle', '200'],
  },
  { name: 'watch', clientId: (_run, pid) => `fleet-watch-${pid}-`, onMute: 'subscribe', args: async (_f, url) => ['watch', '--broker', url, '--json'] },
  { name: 'dashboard', clientId: (_run, pid) => `fleet-dashboard-${pid}-`, onMute: 'subscribe', args: async (_f, url) => ['dashboard', '--broker', url, '--port', '0'] },
  { name: 'alerts', clientId: (_run, pid) => `fleet-alerts-${pid}-`, onMute: 'subscribe', args: async (_f, url) => ['alerts', '--broker', url] },
];

export function command(name: string): CommandSpec {
  const c = COMMANDS.find((x) => x.name === name);
  if (!c) throw new Error(`no command ${name}`);
  return c;
}

/** Starts the command as a child of the fixture (stopped by PID in close()); `stopS`: its --stop-timeout. */
export async function startCommand(f: StopFixture, c: CommandSpec, url: string, stopS = STOP_S): Promise<{ child: ChildProcess; run: string; log: string; client: string }> {
  const run = `${c.name.replace(/\W+/g, '-')}-${++f.runs}`;
  const child = spawnFleet(f, run, ['--stop-timeout', String(stopS), ...(await c.args(f, url, run))]);
  return { child, run, log: path.join(f.dir, `${run}.log`), client: c.clientId(run, child.pid!) };
}

export function exitOf(child: ChildProcess, since: () => number): Promise<Exit> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode, ms: 0, signalled: false });
  return new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      const at = since();
      resolve({ code, signal, ms: Number.isNaN(at) ? 0 : Date.now() - at, signalled: !Number.isNaN(at) });
    }),
  );
}

/**
 * Sends `signal` by PID now (or after `delayMs`) and resolves with how the child
 * exited and how long after the signal; a child still there after CAP_MS is
 * killed and reported with ms = Infinity. Throws when it has already exited.
 */
export async function signalAndWait(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', delayMs = 0): Promise<Exit> {
  let sentAt = Number.NaN;
  const exited = exitOf(child, () => sentAt);
  if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
  if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the process had exited (${child.exitCode ?? child.signalCode}) before ${signal} could be sent`);
  sentAt = Date.now();
  process.kill(child.pid!, signal);
  const cap = setTimeout(() => child.exitCode === null && child.signalCode === null && process.kill(child.pid!, 'SIGKILL'), CAP_MS);
  const e = await exited;
  clearTimeout(cap);
  return e.signal === 'SIGKILL' ? { ...e, ms: Number.POSITIVE_INFINITY } : e;
}

/** SIGTERM to `child` `offsetMs` after `kill()` is called (negative: before it): its exit, timed from the SIGTERM. */
export async function signalAround(child: ChildProcess, kill: () => Promise<void>, offsetMs: number): Promise<Exit> {
  if (offsetMs < 0) {
    const signalled = signalAndWait(child, 'SIGTERM');
    await new Promise((r) => setTimeout(r, -offsetMs));
    await kill();
    return signalled;
  }
  const killed = kill();
  const e = await signalAndWait(child, 'SIGTERM', offsetMs);
  await killed;
  return e;
}

/** Follows `$SYS/+/new/clients` on an Aedes broker: which clients have connected. */
export class ClientWatch {
  readonly seen: string[] = [];
  private constructor(private readonly t: MqttTransport) {}

  static async start(url: string): Promise<ClientWatch> {
    const t = await MqttTransport.connect({ url, clientId: `test-clients-${Math.random().toString(36).slice(2)}`, reconnectMaxMs: 1000 }, 20_000);
    const w = new ClientWatch(t);
    t.onMessage((topic, payload) => {
      if (topic.endsWith('/new/clients')) w.seen.push(Buffer.from(payload).toString('utf8'));
    });
    await t.subscribe('$SYS/+/new/clients', 0);
    return w;
  }

  async until(prefix: string, timeoutMs = 30_000): Promise<void> {
    await until(() => this.seen.some((c) => c.startsWith(prefix)), { what: `a client ${prefix}… to connect`, timeoutMs, intervalMs: 25, context: () => `seen ${this.seen.join(', ')}` });
  }

  close(): Promise<void> {
    return this.t.close(0);
  }
}

/** A broker process of its own (memory persistence, update server in-process) for one case. */
export async function brokerProcess(f: StopFixture): Promise<BrokerProcess> {
  const port = await freePort();
  return BrokerProcess.start(port, ['--persistence', 'memory', '--data-dir', path.join(f.dir, `broker-${port}`)], f.dir);
}

/** Ready on a mute broker: connected, and a publish (or a subscription) left without its acknowledgement. */
export function muteReady(c: CommandSpec, client: string): (b: MuteBroker) => boolean {
  return (b) => b.clients.some((id) => id.startsWith(client)) && (c.onMute === 'publish' ? b.published.length > 0 : b.subscribed.length > 0);
}

/** The JSON log lines of a run. */
export async function logLines(file: string): Promise<Array<Record<string, unknown>>> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return {};
      }
    });
}

/** What a device needs to restart: a readable pointer, journal and memory, and a current model whose digest is the one the pointer names. */
export async function deviceDirConsistent(f: Fixture, run: string): Promise<void> {
  const storage = new DeviceStorage(path.join(f.dir, run));
  const pointer = await storage.pointer();
  if (!pointer) throw new Error(`${run}: no current-model pointer`);
  await storage.journal();
  await storage.memory();
  const digest = await currentDigest(f, run);
  if (digest !== f.update.baseDigest && digest !== f.update.targetDigest) throw new Error(`${run}: current model ${digest} is neither base nor target`);
  if (JSON.stringify(pointer).indexOf(digest) < 0) throw new Error(`${run}: pointer ${JSON.stringify(pointer)} does not name the current model ${digest}`);
}
