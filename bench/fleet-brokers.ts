/**
 * The broker side of `npm run bench:fleet`, each broker in its own process and
 * with the update server as it runs for that broker:
 *   aedes      `fleet broker` (on-disk persistence, update server in-process);
 *   mosquitto  Mosquitto, and `fleet serve` beside it;
 *   cluster    a private redis-server (or --redis URL), nodes A and B `fleet broker --cluster`,
 *              each with its update server answering its own devices from one shared --store
 *              (A takes the lease: uploads, releases).
 * Samples every broker process's resident memory (VmRSS polled, VmHWM at the end).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fs, readFileSync } from 'node:fs';
import net from 'node:net';
import { createRequire } from 'node:module';
import path from 'node:path';
import { FLEET_BIN, stopChild } from '../platform/child-process.ts';
import { cpuSeconds } from './fleet-cpu.ts';

export type BrokerKind = 'aedes' | 'mosquitto' | 'cluster';

/** Every process the benchmark has started and that still runs (stopped by PID on SIGINT/SIGTERM). */
export const started = new Set<ChildProcess>();
export function track(child: ChildProcess): ChildProcess {
  started.add(child);
  child.once('exit', () => started.delete(child));
  return child;
}

export interface BrokerSetup {
  kind: BrokerKind;
  /** One URL per broker node (devices are spread over them). */
  urls: string[];
  /** The cluster's Redis. */
  redisUrl?: string;
  /** CPU seconds each process of the arrangement has used so far (a killed node: up to its kill). */
  cpu(): { brokers: number[]; server: number | null; redis: number | null };
  /** SIGKILLs broker node `i` (a node dying mid-update). */
  killNode(i: number): Promise<void>;
  /** Ends every process it started (by PID) and reports peak memory. */
  stop(): Promise<BrokerMemory>;
}

export interface BrokerMemory {
  /** The largest peak resident set of the broker processes (for a cluster: of its nodes), MiB. */
  brokerPeakRssMB: number;
  nodesPeakRssMB: number[];
  /** `fleet serve` beside Mosquitto. */
  serverPeakRssMB: number | null;
  redisPeakRssMB: number | null;
  /** CPU seconds each broker node used, from its start to the end of the run (or to its kill). */
  nodesCpuSeconds: number[];
  serverCpuSeconds: number | null;
  redisCpuSeconds: number | null;
}

export function findBinary(candidates: string[], probe: string): string | undefined {
  for (const p of candidates) if (spawnSync(p, [probe]).error === undefined) return p;
  return undefined;
}
export const findMosquitto = (): string | undefined => findBinary(['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto'], '-h');
export const findRedisServer = (): string | undefined => findBinary(['/usr/bin/redis-server', '/usr/local/bin/redis-server'], '--version');

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** kB figure of a /proc/PID/status field, or 0 when the process is gone. */
export function procStatusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Peak resident memory per process: VmRSS polled, and VmHWM (the kernel's own peak) read before it stops. */
class RssSampler {
  private readonly peaks = new Map<number, number>();
  private readonly timer: NodeJS.Timeout;
  constructor(intervalMs = 200) {
    this.timer = setInterval(() => {
      for (const pid of this.peaks.keys()) this.peaks.set(pid, Math.max(this.peaks.get(pid)!, procStatusKb(pid, 'VmRSS')));
    }, intervalMs);
    this.timer.unref();
  }
  watch(pid: number): void {
    this.peaks.set(pid, procStatusKb(pid, 'VmRSS'));
  }
  /** MiB; call while the process still runs. */
  final(pid: number): number {
    const kb = Math.max(this.peaks.get(pid) ?? 0, procStatusKb(pid, 'VmHWM'), procStatusKb(pid, 'VmRSS'));
    return Number((kb / 1024).toFixed(1));
  }
  close(): void {
    clearInterval(this.timer);
  }
}

/** Starts a process logging to a file; resolves when its output matches `ready` (or the port listens). */
export async function startProcess(cmd: string, args: string[], logFile: string, ready: RegExp | number, timeoutMs = 60_000): Promise<ChildProcess> {
  const log = createWriteStream(logFile, { flags: 'a' });
  const child = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`${path.basename(cmd)} not ready after ${timeoutMs} ms; see ${logFile}`)), timeoutMs);
    const done = (): void => {
      clearTimeout(timer);
      child.off('exit', onExit);
      resolve();
    };
    const fail = (e: Error): void => {
      clearTimeout(timer);
      child.off('exit', onExit);
      void stopChild(child).finally(() => reject(e));
    };
    const onExit = (code: number | null): void => fail(new Error(`${path.basename(cmd)} exited (${code}) while starting; see ${logFile}`));
    child.once('exit', onExit);
    if (typeof ready === 'number') {
      const probe = (): void => {
        const s = net.connect({ port: ready, host: '127.0.0.1' }, () => {
          s.destroy();
          done();
        });
        s.on('error', () => setTimeout(probe, 100));
      };
      probe();
    } else {
      const onData = (d: Buffer): void => {
        out = (out + d.toString()).slice(-4096);
        if (ready.test(out)) {
          child.stdout!.off('data', onData);
          done();
        }
      };
      child.stdout!.on('data', onData);
    }
  });
  return child;
}

export interface SetupOptions {
  kind: BrokerKind;
  dir: string;
  /** For the cluster: an existing Redis instead of a private redis-server. */
  redisUrl?: string;
}

/** Mosquitto on a free port with `fleet serve` beside it (the arrangement for any broker). */
async function startMosquittoBeside(dir: string, sampler: RssSampler): Promise<{ mosquitto: ChildProcess; server: ChildProcess; url: string }> {
  const bin = findMosquitto();
  if (!bin) throw new Error('mosquitto is not installed (apt-get install mosquitto)');
  const port = await freePort();
  const conf = path.join(dir, 'mosquitto.conf');
  await fs.writeFile(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n`);
  const mosquitto = await startProcess(bin, ['-c', conf], path.join(dir, 'mosquitto.log'), port);
  sampler.watch(mosquitto.pid!);
  const url = `mqtt://127.0.0.1:${port}`;
  try {
    const server = await startProcess(process.execPath, [...brokerNodeArgs(), FLEET_BIN, 'serve', '--broker', url, '--data-dir', path.join(dir, 'store')], path.join(dir, 'serve.log'), /fleet update server on/);
    sampler.watch(server.pid!);
    return { mosquitto, server, url };
  } catch (e) {
    await stopChild(mosquitto, 2000);
    throw e;
  }
}

/** A private redis-server on a free port, nothing saved to disk. */
async function startRedis(dir: string, sampler: RssSampler): Promise<{ child: ChildProcess; port: number }> {
  const bin = findRedisServer();
  if (!bin) throw new Error('the cluster needs redis-server (apt-get install redis-server) or --redis URL');
  const port = await freePort();
  const rdir = path.join(dir, 'redis');
  await fs.mkdir(rdir, { recursive: true });
  const child = await startProcess(bin, ['--save', '', '--appendonly', 'no', '--port', String(port), '--bind', '127.0.0.1', '--dir', rdir], path.join(dir, 'redis.log'), port);
  sampler.watch(child.pid!);
  return { child, port };
}

/** FLEET_BENCH_BROKER_NODE_ARGS (space-separated): node flags for the `fleet broker` and `fleet serve` processes, e.g. "--cpu-prof --cpu-prof-dir=DIR". */
export const brokerNodeArgs = (): string[] => process.env.FLEET_BENCH_BROKER_NODE_ARGS?.split(' ').filter(Boolean) ?? [];

/** What a started arrangement offers the benchmark: its processes' CPU, a node's kill, and its stop (with peak memory). */
function setupControls(
  kind: BrokerKind,
  urls: string[],
  redisUrl: string | undefined,
  procs: { brokers: ChildProcess[]; server: ChildProcess | undefined; redis: ChildProcess | undefined },
  sampler: RssSampler,
): BrokerSetup {
  const { brokers, server, redis } = procs;
  const peaks = new Map<ChildProcess, number>();
  const cpuAtKill = new Map<ChildProcess, number>();
  const cpu = (): ReturnType<BrokerSetup['cpu']> => ({
    brokers: brokers.map((b) => cpuAtKill.get(b) ?? cpuSeconds(b.pid!)),
    server: server ? cpuSeconds(server.pid!) : null,
    redis: redis ? cpuSeconds(redis.pid!) : null,
  });
  return {
    kind,
    urls,
    redisUrl,
    cpu,
    async killNode(i) {
      const b = brokers[i];
      peaks.set(b, sampler.final(b.pid!));
      cpuAtKill.set(b, cpuSeconds(b.pid!));
      b.kill('SIGKILL');
      await new Promise((r) => (b.exitCode !== null || b.signalCode !== null ? r(null) : b.once('exit', r)));
    },
    async stop() {
      const nodes = brokers.map((b) => peaks.get(b) ?? sampler.final(b.pid!));
      const used = cpu();
      const mem: BrokerMemory = {
        brokerPeakRssMB: Math.max(0, ...nodes),
        nodesPeakRssMB: nodes,
        serverPeakRssMB: server ? sampler.final(server.pid!) : null,
        redisPeakRssMB: redis ? sampler.final(redis.pid!) : null,
        nodesCpuSeconds: used.brokers,
        serverCpuSeconds: used.server,
        redisCpuSeconds: used.redis,
      };
      sampler.close();
      // Update server first, then brokers, then Redis.
      if (server) await stopChild(server, 5000);
      await Promise.all(brokers.map((b) => stopChild(b, 5000)));
      if (redis) await stopChild(redis, 5000);
      return mem;
    },
  };
}

export async function startBrokerSetup(o: SetupOptions): Promise<BrokerSetup> {
  await fs.mkdir(o.dir, { recursive: true });
  const sampler = new RssSampler();
  const brokers: ChildProcess[] = [];
  let server: ChildProcess | undefined;
  let redis: ChildProcess | undefined;
  let redisUrl: string | undefined;
  const all = (): ChildProcess[] => [...brokers, ...(server ? [server] : []), ...(redis ? [redis] : [])];
  const fleetBroker = async (name: string, extra: string[]): Promise<string> => {
    const port = await freePort();
    const child = await startProcess(
      process.execPath,
      [...brokerNodeArgs(), FLEET_BIN, 'broker', '--host', '127.0.0.1', '--port', String(port), '--data-dir', path.join(o.dir, name), ...extra],
      path.join(o.dir, `${name}.log`),
      /fleet broker listening/,
    );
    brokers.push(child);
    sampler.watch(child.pid!);
    return `mqtt://127.0.0.1:${port}`;
  };
  try {
    let urls: string[];
    if (o.kind === 'aedes') {
      urls = [await fleetBroker('aedes', [])];
    } else if (o.kind === 'mosquitto') {
      const started = await startMosquittoBeside(o.dir, sampler);
      brokers.push(started.mosquitto);
      server = started.server;
      urls = [started.url];
    } else {
      redisUrl = o.redisUrl;
      if (!redisUrl) {
        const started = await startRedis(o.dir, sampler);
        redis = started.child;
        redisUrl = `redis://127.0.0.1:${started.port}`;
      }
      // Each node answers its own devices from one shared content store; A (first) takes the lease (docs/cluster.md).
      const shared = ['--cluster', redisUrl, '--store', path.join(o.dir, 'shared-store')];
      urls = [await fleetBroker('node-a', shared), await fleetBroker('node-b', shared)];
    }
    return setupControls(o.kind, urls, redisUrl, { brokers, server, redis }, sampler);
  } catch (e) {
    sampler.close();
    await Promise.all(all().map((c) => stopChild(c, 2000)));
    throw e;
  }
}

const IORedis = createRequire(import.meta.url)('ioredis') as new (url: string) => { info(section: string): Promise<string>; disconnect(): void };

/** Bytes Redis has received from and sent to all its clients so far, and the commands it ran (INFO stats: total_net_input_bytes, total_net_output_bytes, total_commands_processed). */
export async function redisNetBytes(url: string): Promise<{ in: number; out: number; commands: number }> {
  const r = new IORedis(url);
  try {
    const info = await r.info('stats');
    const field = (name: string): number => Number(new RegExp(`^${name}:(\\d+)`, 'm').exec(info)?.[1] ?? NaN);
    return { in: field('total_net_input_bytes'), out: field('total_net_output_bytes'), commands: field('total_commands_processed') };
  } finally {
    r.disconnect();
  }
}

type RedisStats = Awaited<ReturnType<typeof redisNetBytes>>;
/** Redis's counters over the delivery (bytes, commands) and from before the first connect (commands), for a cluster; null otherwise. */
export function redisFigures(atStart: RedisStats | undefined, before: RedisStats | undefined, after: RedisStats | undefined, deliveredBytes: number) {
  if (!before || !after) return { redisBytesIn: null, redisBytesOut: null, redisBytesPerPayloadByte: null, redisCommands: null, redisCommandsFromConnect: null };
  const bytesIn = after.in - before.in;
  const bytesOut = after.out - before.out;
  return {
    redisBytesIn: bytesIn,
    redisBytesOut: bytesOut,
    redisBytesPerPayloadByte: Number(((bytesIn + bytesOut) / Math.max(1, deliveredBytes)).toFixed(4)),
    redisCommands: after.commands - before.commands,
    redisCommandsFromConnect: atStart ? after.commands - atStart.commands : null,
  };
}
