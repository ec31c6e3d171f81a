/**
 * Aedes nodes on Redis: `mqemitter-redis` carries every publish to every node
 * (fan-out), `aedes-persistence-redis` keeps sessions, subscriptions and
 * retained messages where every node sees them. Several `fleet broker
 * --cluster redis://…` processes on different ports form one logical broker.
 *
 * The update server runs once per cluster (docs/cluster.md says why): a node
 * that starts one takes a lease in Redis first, so a second node started the
 * same way refuses instead of answering every request a second time.
 */
import { FleetError } from '../platform/errors.ts';
import os from 'node:os';
import { createRequire } from 'node:module';
import type { AedesOptions } from 'aedes';
import type { Logger } from '../util/log.ts';
import { guardStreams, type Persistence } from './persistence-streams.ts';

const require = createRequire(import.meta.url);

/** The few ioredis calls we make (ioredis comes with both Redis packages). */
interface RedisClient {
  set(key: string, value: string, ...args: Array<string | number>): Promise<string | null>;
  get(key: string): Promise<string | null>;
  eval(script: string, keys: number, ...args: Array<string | number>): Promise<unknown>;
  on(event: 'error', fn: (e: Error) => void): unknown;
  quit(): Promise<unknown>;
  disconnect(): void;
  status: string;
}
type RedisCtor = new (url: string, opts?: Record<string, unknown>) => RedisClient;
const Redis = require('ioredis') as RedisCtor;
const AsyncRedisPersistence = require('aedes-persistence-redis/asyncPersistence.js') as new (opts: { conn: RedisClient }) => Persistence;
const MQEmitterRedis = require('mqemitter-redis') as (opts: Record<string, unknown>) => NonNullable<AedesOptions['mq']> & {
  close(cb: () => void): void;
  state: { on(event: 'error', fn: (e: Error) => void): void };
};

/** A typed refusal: bad Redis URL, Redis unreachable, or the update-server lease held by another node. */
export class ClusterError extends FleetError<'bad-url' | 'redis-unreachable' | 'update-server-taken'> {
  override readonly name = 'ClusterError';
  constructor(code: 'bad-url' | 'redis-unreachable' | 'update-server-taken', message: string) {
    super(code === 'redis-unreachable' ? 'io' : 'usage', code, message);
  }
}

export function parseRedisUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ClusterError('bad-url', `--cluster expects redis://HOST:PORT, got ${url}`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new ClusterError('bad-url', `--cluster expects redis://HOST:PORT, got ${url}`);
  return u;
}

export interface ClusterParts {
  persistence: Persistence;
  mq: NonNullable<AedesOptions['mq']>;
  /** A broker id unique in the cluster (Aedes tells nodes apart by it; wills of dead nodes are published by the living). */
  brokerId: string;
  /** Closes what Aedes does not: the persistence's connections and the lease client. Call after `aedes.close()`. */
  close(): Promise<void>;
}

const redact = (url: string): string => url.replace(/\/\/[^@/]*@/, '//');

/** Connects to Redis (fails fast when it does not answer) and builds Aedes's persistence and emitter on it. */
export async function openCluster(url: string, log: Logger): Promise<ClusterParts> {
  parseRedisUrl(url);
  const conn = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 20 });
  conn.on('error', (e) => log.warn('redis (persistence)', { error: e.message }));
  try {
    await (conn as unknown as { connect(): Promise<void> }).connect();
  } catch (e) {
    conn.disconnect();
    throw new ClusterError('redis-unreachable', `cannot reach Redis at ${redact(url)}: ${(e as Error).message}`);
  }
  // Its stream methods return async iterables; guardStreams hands Aedes the Readables it pipes.
  const persistence = guardStreams(new AsyncRedisPersistence({ conn }), log.child('persistence'));
  // Aedes's own emitter matches empty levels ([MQTT-4.7.1-3]); keep that.
  const mq = MQEmitterRedis({ connectionString: url, matchEmptyLevels: true, concurrency: 100 });
  mq.state.on('error', (e: Error) => log.warn('redis (fan-out)', { error: e.message }));
  let closed = false;
  return {
    persistence,
    mq,
    brokerId: `fleet-broker-${os.hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`,
    async close() {
      if (closed) return;
      closed = true;
      // Aedes closes the emitter itself; this is for the case it never started.
      await new Promise<void>((r) => mq.close(() => r()));
      try {
        await persistence.destroy();
      } catch (e) {
        log.debug('persistence destroy', { error: (e as Error).message });
        conn.disconnect();
      }
    },
  };
}

/**
 * The cluster's one update server: a key in Redis naming the node that runs
 * it, with a time to live that the holder renews. A node restarted with the
 * same identity (host and port) takes its own lease back at once; another
 * node is refused until the holder has been gone for `ttlMs`.
 */
export class UpdateServerLease {
  private timer: NodeJS.Timeout | undefined;
  private constructor(
    private readonly redis: RedisClient,
    private readonly key: string,
    readonly holder: string,
    private readonly ttlMs: number,
    private readonly log: Logger,
  ) {}

  static async acquire(o: { url: string; prefix: string; holder: string; ttlMs: number; log: Logger }): Promise<UpdateServerLease> {
    const redis = new Redis(o.url, { lazyConnect: true, maxRetriesPerRequest: 20 });
    redis.on('error', (e) => o.log.warn('redis (lease)', { error: e.message }));
    const ttl = o.ttlMs;
    const key = `fleet:${o.prefix}:update-server`;
    try {
      await (redis as unknown as { connect(): Promise<void> }).connect();
      const got = await redis.set(key, o.holder, 'PX', ttl, 'NX');
      if (got !== 'OK') {
        const now = await redis.get(key);
        if (now !== o.holder) {
          throw new ClusterError('update-server-taken', `node ${now} already runs the cluster's update server; start this node with --no-update-server (or stop that one and wait ${Math.round(ttl / 1000)} s)`);
        }
        await redis.set(key, o.holder, 'PX', ttl);
      }
    } catch (e) {
      redis.disconnect();
      if (e instanceof ClusterError) throw e;
      throw new ClusterError('redis-unreachable', `cannot reach Redis at ${redact(o.url)}: ${(e as Error).message}`);
    }
    const lease = new UpdateServerLease(redis, key, o.holder, ttl, o.log);
    lease.timer = setInterval(() => void lease.renew(), Math.max(500, Math.floor(ttl / 3)));
    lease.timer.unref();
    return lease;
  }

  private async renew(): Promise<void> {
    try {
      const r = await this.redis.eval(RENEW, 1, this.key, this.holder, this.ttlMs);
      if (r !== 1) this.log.error('the update-server lease was taken by another node', { key: this.key });
    } catch (e) {
      this.log.warn('could not renew the update-server lease', { error: (e as Error).message });
    }
  }

  /** Gives the lease up (on a clean stop) so another node may take over at once. */
  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    try {
      await this.redis.eval(RELEASE, 1, this.key, this.holder);
      await this.redis.quit();
    } catch {
      this.redis.disconnect();
    }
  }
}

// Renew or delete only while we hold it (compare and act in one step).
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') and 1 or 0 end`;
const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;
