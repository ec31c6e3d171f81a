/**
 * Aedes nodes on Redis: `mqemitter-redis` carries every publish to every node
 * (fan-out), `aedes-persistence-redis` keeps sessions, subscriptions and
 * retained messages where every node sees them. Several `fleet broker
 * --cluster redis://…` processes on different ports form one logical broker.
 *
 * Every node may run an update server that answers its own devices' chunk
 * requests on the node (broker/cluster-emitter.ts); the content store is
 * shared (docs/cluster.md), and a lease in Redis names the one node that
 * accepts uploads and re-asserts releases.
 */
import { FleetError } from '../platform/errors.ts';
import os from 'node:os';
import { createRequire } from 'node:module';
import type { Logger } from '../util/log.ts';
import { urlWithoutLogin } from '../util/url-login.ts';
import { guardStreams, type Persistence } from './persistence-streams.ts';
import { ClusterEmitter, type ChunkRouting, type EmitterCounters, type Mq } from './cluster-emitter.ts';
import { RetainedOnce, type ScriptConn } from './cluster-retained.ts';
import { skipFrameLookups } from './retained-lookups.ts';
import { scriptWills, type WillConn, type WillCounters } from './cluster-wills.ts';
import type { Topics } from '../protocol/topics.ts';

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
const MQEmitterRedis = require('mqemitter-redis') as (opts: Record<string, unknown>) => Mq & {
  state: { on(event: 'error', fn: (e: Error) => void): void };
  pubConn: ScriptConn;
};

/** A typed refusal: bad Redis URL or Redis unreachable. */
export class ClusterError extends FleetError<'bad-url' | 'redis-unreachable'> {
  override readonly name = 'ClusterError';
  constructor(code: 'bad-url' | 'redis-unreachable', message: string) {
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
  mq: Mq;
  /** What this node's emitter sent locally and through Redis. */
  counters: EmitterCounters;
  /** Will round trips answered without Redis or sent as one script (broker/cluster-wills.ts). */
  wills: WillCounters;
  /** A broker id unique in the cluster (Aedes tells nodes apart by it; wills of dead nodes are published by the living). */
  brokerId: string;
  /** Closes what Aedes does not: the persistence's connections and the lease client. Call after `aedes.close()`. */
  close(): Promise<void>;
}

/**
 * Connects to Redis (fails fast when it does not answer) and builds Aedes's
 * persistence and emitter on it. With `routing` (the node runs an update
 * server), chunk requests and frames of this node's devices stay on the node
 * (broker/cluster-emitter.ts).
 */
export async function openCluster(url: string, log: Logger, topics: Topics, routing?: ChunkRouting): Promise<ClusterParts> {
  parseRedisUrl(url);
  const conn = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 20 });
  conn.on('error', (e) => log.warn('redis (persistence)', { error: e.message }));
  try {
    await (conn as unknown as { connect(): Promise<void> }).connect();
  } catch (e) {
    conn.disconnect();
    throw new ClusterError('redis-unreachable', `cannot reach Redis at ${urlWithoutLogin(url)}: ${(e as Error).message}`);
  }
  // Its stream methods return async iterables; guardStreams hands Aedes the Readables it pipes.
  const persistence = guardStreams(new AsyncRedisPersistence({ conn }), log.child('persistence'));
  // Aedes's own emitter matches empty levels ([MQTT-4.7.1-3]); keep that.
  const emitterOpts = { matchEmptyLevels: true, concurrency: 100 };
  const redisMq = MQEmitterRedis({ connectionString: url, ...emitterOpts });
  redisMq.state.on('error', (e: Error) => log.warn('redis (fan-out)', { error: e.message }));
  // A retained publish (statuses, presence, releases) is stored and published by one script: its payload crosses Redis once.
  const once = new RetainedOnce(persistence);
  const mq = new ClusterEmitter(redisMq, topics, routing, emitterOpts, { once, conn: redisMq.pubConn });
  once.wrap((p) => mq.throughRedis(p));
  skipFrameLookups(persistence, (f) => mq.isFramesFilter(f));
  const brokerId = `fleet-broker-${os.hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  // A device's will: one script when stored, one when removed, none for the CONNECT-time removal that cannot find one.
  const wills = scriptWills(persistence, conn as unknown as WillConn, brokerId);
  let closed = false;
  return {
    persistence,
    mq,
    counters: mq.counters,
    wills,
    brokerId,
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
 * The cluster's lease: a key in Redis naming the one node that accepts
 * uploads, re-asserts releases and answers the requests of devices on nodes
 * without an update server. Every node with an update server joins; one holds
 * it and renews it, the others try again at every renewal and take it once it
 * is free (at once after a clean stop, `ttlMs` after the holder died). A node
 * restarted with the same identity (host and port) takes its own lease back
 * at once. Chunk requests are answered by every node for its own devices,
 * holder or not (broker/cluster-emitter.ts).
 */
export class UpdateServerLease {
  private timer: NodeJS.Timeout | undefined;
  private heldNow = false;
  /** Called when this node takes the lease (at start or later, from a node that died or stopped). */
  onTaken: (() => void) | undefined;
  private constructor(
    private readonly redis: RedisClient,
    private readonly key: string,
    readonly holder: string,
    private readonly ttlMs: number,
    private readonly log: Logger,
  ) {}

  /** Whether this node holds the lease now. */
  get held(): boolean {
    return this.heldNow;
  }

  /** The node holding the lease, as Redis names it (undefined when nobody does). */
  async currentHolder(): Promise<string | undefined> {
    return (await this.redis.get(this.key)) ?? undefined;
  }

  static async join(o: { url: string; prefix: string; holder: string; ttlMs: number; log: Logger }): Promise<UpdateServerLease> {
    const redis = new Redis(o.url, { lazyConnect: true, maxRetriesPerRequest: 20 });
    redis.on('error', (e) => o.log.warn('redis (lease)', { error: e.message }));
    const ttl = o.ttlMs;
    const key = `fleet:${o.prefix}:update-server`;
    const lease = new UpdateServerLease(redis, key, o.holder, ttl, o.log);
    try {
      await (redis as unknown as { connect(): Promise<void> }).connect();
      const got = await redis.set(key, o.holder, 'PX', ttl, 'NX');
      if (got === 'OK' || (await redis.get(key)) === o.holder) {
        await redis.set(key, o.holder, 'PX', ttl);
        lease.heldNow = true;
      }
    } catch (e) {
      redis.disconnect();
      throw new ClusterError('redis-unreachable', `cannot reach Redis at ${urlWithoutLogin(o.url)}: ${(e as Error).message}`);
    }
    o.log.info(lease.heldNow ? 'this node holds the cluster lease (uploads, releases)' : 'another node holds the cluster lease; this one serves its own devices', { key });
    lease.timer = setInterval(() => void lease.renew(), Math.max(200, Math.floor(ttl / 3)));
    lease.timer.unref();
    return lease;
  }

  private async renew(): Promise<void> {
    try {
      const r = await this.redis.eval(RENEW, 1, this.key, this.holder, this.ttlMs);
      const was = this.heldNow;
      this.heldNow = r === 1;
      if (was && !this.heldNow) this.log.error('the cluster lease was taken by another node', { key: this.key });
      if (!was && this.heldNow) {
        this.log.info('this node took the cluster lease', { key: this.key });
        this.onTaken?.();
      }
    } catch (e) {
      this.log.warn('could not renew the cluster lease', { error: (e as Error).message });
    }
  }

  /** Gives the lease up (on a clean stop) so another node may take over at once. */
  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.heldNow = false;
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
