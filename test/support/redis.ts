import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stopChild } from '../../platform/child-process.ts';
import { freePort, waitForPort } from './harness.ts';
import type { BrokerEnv } from './broker-env.ts';
import type { RunningBroker } from '../../nodes/broker-node.ts';

/** Path of redis-server, or undefined when it is not installed. */
export function findRedis(): string | undefined {
  for (const p of ['/usr/bin/redis-server', '/usr/local/bin/redis-server', '/usr/sbin/redis-server']) {
    if (spawnSync(p, ['--version']).error === undefined) return p;
  }
  return undefined;
}

export interface RedisServer {
  url: string;
  port: number;
  child: ChildProcess;
  /** Stops it by PID and removes its directory. */
  stop(): Promise<void>;
}

/** A private redis-server on a loopback port in a temporary directory, without snapshots or AOF. */
export async function startRedis(bin: string): Promise<RedisServer> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-redis-'));
  const port = await freePort();
  const child = spawn(bin, ['--save', '', '--appendonly', 'no', '--port', String(port), '--bind', '127.0.0.1', '--dir', dir], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
  child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
  const stop = async (): Promise<void> => {
    await stopChild(child);
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    await waitForPort(port, 15_000);
  } catch (e) {
    await stop();
    throw new Error(`redis-server did not start: ${(e as Error).message}\n${out}`, { cause: e });
  }
  return { url: `redis://127.0.0.1:${port}`, port, child, stop };
}

interface SpyConnection {
  psubscribe(pattern: string): Promise<unknown>;
  on(event: 'pmessageBuffer', fn: (pattern: Buffer, channel: Buffer, message: Buffer) => void): unknown;
  disconnect(): void;
}
const IORedis = createRequire(import.meta.url)('ioredis') as new (url: string) => SpyConnection;

/** Every message Redis pub/sub carries (between cluster nodes), by channel: a client subscribed to `*`. */
export class RedisSpy {
  readonly channels: string[] = [];
  bytes = 0;
  private constructor(private readonly conn: SpyConnection) {}
  static async start(url: string): Promise<RedisSpy> {
    const spy = new RedisSpy(new IORedis(url));
    spy.conn.on('pmessageBuffer', (_p, channel, message) => {
      spy.channels.push(channel.toString());
      spy.bytes += message.byteLength;
    });
    await spy.conn.psubscribe('*');
    return spy;
  }
  /** Chunk requests and frames (`…/updates/ID/get/DEVICE`, `…/to/DEVICE`) among them. */
  get chunkTraffic(): string[] {
    return this.channels.filter((c) => /\/updates\/[^/]+\/(get|to)\//.test(c));
  }
  close(): void {
    this.conn.disconnect();
  }
}

/** A MONITOR connection: every command a client sent to Redis (not those a script ran inside Redis), as its arguments. */
interface MonitorConn {
  monitor(): Promise<{ on(e: 'monitor', fn: (time: string, args: string[], source: string) => void): void; disconnect(): void }>;
  disconnect(): void;
}
export async function monitorRedis(url: string): Promise<{ commands: string[][]; close(): void }> {
  const conn = new (IORedis as unknown as new (url: string) => MonitorConn)(url);
  const m = await conn.monitor();
  const commands: string[][] = [];
  m.on('monitor', (_t, args, source) => source !== 'lua' && commands.push(args));
  return {
    commands,
    close: () => {
      m.disconnect();
      conn.disconnect();
    },
  };
}

/** Two in-process cluster nodes (A first: it takes the lease) on a private redis-server, one shared store; all closed after the test. */
export async function twoClusterNodes(env: BrokerEnv, bin: string): Promise<{ a: RunningBroker; b: RunningBroker; url: string }> {
  const redis = await startRedis(bin);
  env.track({ close: () => redis.stop() });
  const dir = await env.dir();
  const node = (name: string): Promise<RunningBroker> => env.broker({ cluster: redis.url, store: path.join(dir, 'shared-store') }, name);
  return { a: await node('node-a'), b: await node('node-b'), url: redis.url };
}
