/**
 * The emitter a cluster node gives Aedes: two emitters behind one face.
 *
 * - `local`, a plain mqemitter (what a single Aedes uses): delivers to this
 *   node's own subscribers only;
 * - `redis`, mqemitter-redis: delivers to the subscribers of every node.
 *
 * Every subscription is registered on both, so a message reaches its
 * subscribers whichever way it was emitted, and each message is emitted one
 * way only (never both: no duplicates). Everything goes through Redis as it
 * always did, except the point-to-point chunk traffic:
 *
 * - a chunk request (`…/get/{device}`) published on a node that runs its own
 *   update server stays on the node: that server answers it, and no other;
 * - a frame (`…/to/{device}`) whose device is subscribed on this node stays
 *   on the node; for a device elsewhere (its node runs no update server) it
 *   goes through Redis. A serving node subscribes its devices' frames on the
 *   node only (no Redis pattern per device): a frame for a device that has
 *   just moved to another serving node is dropped, and the device asks that
 *   node again for what it lacks when it reconnects.
 *
 * A request that arrives through Redis (from a node without an update server)
 * is handed to this node's subscribers only when `answersRemote()` says so
 * (the node holding the cluster's lease), so exactly one server answers it.
 * Aedes's own notices of subscriptions and disconnections
 * (`$SYS/{broker}/new/subscribes`, `…/new/unsubscribes`, `…/disconnect/clients`)
 * stay on the node too: nothing in the cluster listens to them (no client may
 * subscribe to `$SYS`, broker/acl.ts, and Aedes itself listens only to
 * `…/heartbeat`, `…/birth` and `…/new/clients`), yet each connection sent about
 * 1.2 KB of them through Redis. `…/new/clients` keeps going through Redis: it is
 * how the node of a client id that reconnects elsewhere closes the old session;
 * heartbeats and births tell the nodes which brokers are alive (their wills).
 *
 * The ACL is untouched: it decides who may subscribe to and publish on which
 * topic before anything is emitted.
 */
import { createRequire } from 'node:module';
import type { Topics } from '../protocol/topics.ts';
import type { RetainedOnce, ScriptConn } from './cluster-retained.ts';
import { framesFilterDevice } from './retained-lookups.ts';

const require = createRequire(import.meta.url);

interface Packet {
  topic: string;
  payload?: unknown;
}
type Done = () => void;
type Handler = (packet: Packet, cb: Done) => void;
/** The mqemitter interface Aedes uses (mqemitter and mqemitter-redis both have it). */
export interface Mq {
  on(topic: string, fn: Handler, done?: Done): unknown;
  removeListener(topic: string, fn: Handler, done?: Done): unknown;
  emit(packet: Packet, done?: (err?: Error) => void): unknown;
  close(cb: () => void): unknown;
}
const MQEmitter = require('mqemitter') as (opts: Record<string, unknown>) => Mq;

/** What a node tells its emitter about itself. */
export interface ChunkRouting {
  /** True when this node runs an update server: its devices' requests stay on the node. */
  readonly servesLocally: boolean;
  /** Whether requests arriving through Redis (devices on nodes without an update server) are answered here. */
  answersRemote(): boolean;
}

/** What went which way, by messages and payload bytes (`bench:fleet`, tests, metrics). */
export interface EmitterCounters {
  localMessages: number;
  localBytes: number;
  redisMessages: number;
  redisBytes: number;
  /** Chunk requests and frames sent through Redis (zero when every device is on a serving node). */
  redisChunkMessages: number;
  /** Aedes `$SYS` notices nobody in the cluster listens to, kept on the node (see NODE_LOCAL_SYS). */
  localSysMessages: number;
  /** Retained publishes stored and published by one script: their payload crossed once, not twice. */
  redisRetainedOnce: number;
}

/**
 * The `$SYS/{broker}/…` notices no node listens to: Aedes publishes them for
 * every subscribe, unsubscribe and disconnection, but subscribes only to
 * `$SYS/+/heartbeat`, `$SYS/+/birth` and `$SYS/+/new/clients` (aedes.js), and
 * the ACL refuses `$SYS` filters to every client.
 */
const NODE_LOCAL_SYS = new Set(['new/subscribes', 'new/unsubscribes', 'disconnect/clients']);
export function isNodeLocalSys(topic: string): boolean {
  if (!topic.startsWith('$SYS/')) return false;
  const r = topic.split('/');
  return r.length === 4 && NODE_LOCAL_SYS.has(`${r[2]}/${r[3]}`);
}

const payloadBytes = (p: Packet): number => {
  const b = p.payload;
  return typeof b === 'string' ? Buffer.byteLength(b) : b instanceof Uint8Array ? b.byteLength : 0;
};

export class ClusterEmitter implements Mq {
  readonly counters: EmitterCounters = { localMessages: 0, localBytes: 0, redisMessages: 0, redisBytes: 0, redisChunkMessages: 0, localSysMessages: 0, redisRetainedOnce: 0 };
  private readonly local: Mq;
  /** Local subscriptions to one device's frames, by device id (how many). */
  private readonly frameSubscribers = new Map<string, number>();
  /** The handler registered on Redis for each (handler, topic): a filtering wrapper. */
  private readonly wrapped = new Map<Handler, Map<string, Handler>>();

  constructor(
    private readonly redis: Mq,
    private readonly topics: Topics,
    private readonly routing: ChunkRouting | undefined,
    opts: Record<string, unknown>,
    /** Sends a retained publish once (store and publish in one script, broker/cluster-retained.ts) on the Redis emitter's connection. */
    private readonly retained?: { once: RetainedOnce; conn: ScriptConn },
  ) {
    this.local = MQEmitter(opts);
  }

  /**
   * Whether `packet` always goes through Redis when emitted (the persistence defers its retained
   * store to that emit): not a node-local `$SYS` notice, and not chunk traffic, whose way can
   * change between the store and the emit (a device subscribing here meanwhile).
   */
  throughRedis(packet: Packet): boolean {
    return !isNodeLocalSys(packet.topic) && this.chunkKind(packet.topic) === undefined;
  }

  on(topic: string, fn: Handler, done?: Done): this {
    this.local.on(topic, fn);
    const device = this.frameSubscription(topic);
    if (device !== undefined) this.frameSubscribers.set(device, (this.frameSubscribers.get(device) ?? 0) + 1);
    // A serving node's devices get their frames on the node: no Redis subscription (a pattern per
    // device, which every PUBLISH in Redis is matched against) for them.
    if (device !== undefined && this.routing?.servesLocally) {
      if (done) setImmediate(done);
      return this;
    }
    let byTopic = this.wrapped.get(fn);
    if (!byTopic) this.wrapped.set(fn, (byTopic = new Map()));
    const remote: Handler = (packet, cb) => (this.dropRemote(packet) ? cb() : fn(packet, cb));
    byTopic.set(topic, remote);
    this.redis.on(topic, remote, done);
    return this;
  }

  removeListener(topic: string, fn: Handler, done?: Done): this {
    this.local.removeListener(topic, fn);
    const device = this.frameSubscription(topic);
    if (device !== undefined) {
      // One subscriber fewer (an unknown device has none left).
      const n = this.frameSubscribers.get(device);
      if (n !== undefined && n > 1) this.frameSubscribers.set(device, n - 1);
      else this.frameSubscribers.delete(device);
    }
    const byTopic = this.wrapped.get(fn);
    const remote = byTopic?.get(topic);
    byTopic?.delete(topic);
    if (byTopic?.size === 0) this.wrapped.delete(fn);
    if (remote) this.redis.removeListener(topic, remote, done);
    else if (done) setImmediate(done);
    return this;
  }

  emit(packet: Packet, done?: (err?: Error) => void): this {
    const bytes = payloadBytes(packet);
    const kind = this.chunkKind(packet.topic);
    const sys = isNodeLocalSys(packet.topic);
    if (sys || (kind && this.staysLocal(kind))) {
      if (sys) this.counters.localSysMessages++;
      this.counters.localMessages++;
      this.counters.localBytes += bytes;
      this.local.emit(packet, done);
    } else {
      this.counters.redisMessages++;
      this.counters.redisBytes += bytes;
      if (kind) this.counters.redisChunkMessages++;
      if (this.retained?.once.emit(this.retained.conn, packet, done ?? (() => undefined))) this.counters.redisRetainedOnce++;
      else this.redis.emit(packet, done);
    }
    return this;
  }

  close(cb: () => void): void {
    this.local.close(() => this.redis.close(cb));
  }

  private staysLocal(kind: { kind: 'request' } | { kind: 'frames'; deviceId: string }): boolean {
    if (kind.kind === 'request') return this.routing?.servesLocally === true;
    return this.frameSubscribers.has(kind.deviceId);
  }

  /** On a serving node that does not hold the lease, a request from elsewhere is another server's to answer. */
  private dropRemote(packet: Packet): boolean {
    if (!this.routing?.servesLocally || this.routing.answersRemote()) return false;
    return this.chunkKind(packet.topic)?.kind === 'request';
  }

  private chunkKind(topic: string): { kind: 'request' } | { kind: 'frames'; deviceId: string } | undefined {
    const p = this.topics.parse(topic);
    if (p?.kind === 'request') return { kind: 'request' };
    if (p?.kind === 'frames') return { kind: 'frames', deviceId: p.deviceId };
    return undefined;
  }

  /** Whether `filter` is a subscription to one device's frames (never retained: broker/cluster-retained.ts). */
  isFramesFilter(filter: string): boolean {
    return this.frameSubscription(filter) !== undefined;
  }

  /** The device of a subscription to one device's frames (`…/models/M/updates/+/to/DEVICE`), if it is one. */
  private frameSubscription(filter: string): string | undefined {
    return framesFilterDevice(this.topics, filter);
  }
}
