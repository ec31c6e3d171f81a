/**
 * A retained publish crosses Redis once, not twice.
 *
 * Aedes stores a retained message (aedes-persistence-redis: `HSET retained
 * TOPIC msgpack(packet)`) and then emits it (mqemitter-redis: `PUBLISH TOPIC
 * msgpack({id, msg: packet})`): the same payload sent to Redis twice. Device
 * statuses are retained and about half of what a device sends through Redis
 * during an update; sent twice, they were most of the cluster's Redis bytes.
 *
 * Here the persistence's `storeRetained` only notes the bytes it would have
 * written, and the emitter sends the envelope once to a script that writes the
 * same bytes into the hash (cut out of the envelope, whose `msg` holds the
 * stored packet's fields) and publishes the envelope: both in one atomic step,
 * on the emitter's connection, before Aedes goes on (as it waited for the
 * store before). What is stored and what every node receives are byte for
 * byte what they were. A retained packet whose stored form is not inside its
 * envelope (never seen; a guard), an empty one (which deletes) and one that
 * is never emitted through Redis are stored by the persistence as before.
 */
import { createRequire } from 'node:module';
import type { Persistence } from './persistence-streams.ts';

const require = createRequire(import.meta.url);
// The encoder both Redis packages use (their own dependency), so the bytes are theirs.
const msgpack = createRequire(require.resolve('mqemitter-redis'))('msgpack-lite') as { encode(v: unknown): Buffer };

export interface RetainedPacket {
  topic: string;
  payload?: unknown;
  retain?: boolean;
}

/** The few ioredis calls of the emitter's publishing connection. */
export interface ScriptConn {
  evalsha(sha: string, keys: number, ...args: Array<string | Buffer | number>): Promise<unknown>;
  eval(script: string, keys: number, ...args: Array<string | Buffer | number>): Promise<unknown>;
}

// KEYS[1] = the retained hash; ARGV = topic, envelope, stored form's header, offset and length of its body in the envelope.
const SCRIPT = `redis.call('hset', KEYS[1], ARGV[1], ARGV[3] .. string.sub(ARGV[2], tonumber(ARGV[4]) + 1, tonumber(ARGV[4]) + tonumber(ARGV[5])))
return redis.call('publish', ARGV[1], ARGV[2])`;

const hasPayload = (p: RetainedPacket): boolean => {
  const b = p.payload;
  return typeof b === 'string' ? b.length > 0 : b instanceof Uint8Array ? b.byteLength > 0 : false;
};

export class RetainedOnce {
  /** Stored forms noted by `storeRetained`, waiting for their emit. */
  private readonly pending = new WeakMap<object, Buffer>();
  private sha: string | undefined;
  private counter = 0;
  private readonly idPrefix = `r${Math.random().toString(36).slice(2, 10)}/`;
  /** Retained publishes sent once (stored and published by one script). */
  combined = 0;

  constructor(
    private readonly persistence: Persistence,
    private readonly key = 'retained',
  ) {}

  /** The persistence's `storeRetained`, deferring what the emitter will send (`willEmitThroughRedis`). */
  wrap(willEmitThroughRedis: (p: RetainedPacket) => boolean): void {
    const p = this.persistence as unknown as { storeRetained(packet: RetainedPacket): Promise<void> };
    const store = p.storeRetained.bind(p);
    p.storeRetained = (packet) => {
      if (packet.retain && hasPayload(packet) && willEmitThroughRedis(packet)) {
        this.pending.set(packet, msgpack.encode(packet));
        return Promise.resolve();
      }
      return store(packet);
    };
  }

  /** Stores and publishes `packet` in one step when its store was deferred; false when it was not (emit it as usual). */
  emit(conn: ScriptConn, packet: RetainedPacket, done: (err?: Error) => void): boolean {
    const stored = this.pending.get(packet);
    if (!stored) return false;
    this.pending.delete(packet);
    const envelope = msgpack.encode({ id: `${this.idPrefix}${++this.counter}`, msg: packet });
    // A fixmap header (fewer than 16 fields) and the fields in the same order inside the envelope's `msg`.
    const at = stored[0]! >= 0x80 && stored[0]! <= 0x8f ? envelope.indexOf(stored.subarray(1)) : -1;
    const args = at < 0 ? undefined : ([packet.topic, envelope, stored.subarray(0, 1), at, stored.byteLength - 1] as const);
    const run = async (): Promise<void> => {
      if (!args) {
        // Never seen; kept correct: the two writes as before, in order.
        await conn.eval(`redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) return redis.call('publish', ARGV[1], ARGV[3])`, 1, this.key, packet.topic, stored, envelope);
        return;
      }
      this.sha ??= await this.load(conn);
      try {
        await conn.evalsha(this.sha, 1, this.key, ...args);
      } catch (e) {
        if (!/NOSCRIPT/.test((e as Error).message)) throw e;
        this.sha = await this.load(conn);
        await conn.evalsha(this.sha, 1, this.key, ...args);
      }
      this.combined++;
    };
    run().then(() => done(), done);
    return true;
  }

  private async load(conn: ScriptConn): Promise<string> {
    return (await (conn as unknown as { script(op: 'LOAD', s: string): Promise<string> }).script('LOAD', SCRIPT)) as string;
  }
}
