/**
 * A connection's will costs one Redis round trip when it is stored and one
 * when it is removed, not six.
 *
 * aedes-persistence-redis keeps each will under `will:{broker}:{client}` and
 * lists the keys in `will` (a surviving node reads that list to publish the
 * wills of a dead node's clients: the presence `offline` of its devices).
 * For every connection with a will (every device), Aedes:
 *
 * - at CONNECT calls `delWill(client)` on a client object without a broker
 *   id, so the persistence sends `LREM will 0 will:undefined:{client}`, `GET`
 *   and `DEL` of a key that no node ever writes (a will is stored under its
 *   node's broker id): three round trips, one an O(wills) list scan, that
 *   can only find nothing. Here they are answered at once: nothing.
 * - then `putWill`: `LREM` (the same key stored before), `RPUSH`, `SET`: three
 *   commands, now one script doing the same three writes atomically;
 * - at a clean DISCONNECT (and after publishing a dead client's will)
 *   `delWill`: `LREM`, `GET`, `DEL`: now one script, same writes, same answer.
 *
 * What is stored (keys, list, msgpack bytes) is byte for byte what the
 * persistence stores, so `streamWill` and `getWill` (unchanged) read it, on
 * any node.
 */
import { createRequire } from 'node:module';
import type { Persistence } from './persistence-streams.ts';

const require = createRequire(import.meta.url);
// The encoder aedes-persistence-redis uses (its own dependency), so the stored bytes are its own.
const msgpack = createRequire(require.resolve('aedes-persistence-redis'))('msgpack-lite') as { encode(v: unknown): Buffer; decode(b: Buffer): unknown };

const WILLS = 'will';
const willKey = (brokerId: string, clientId: string): string => `will:${brokerId}:${encodeURIComponent(clientId)}`;

// KEYS[1] = the list of will keys, KEYS[2] = this will's key; ARGV[1] = the encoded will.
const PUT = `redis.call('lrem', KEYS[1], 0, KEYS[2])
redis.call('rpush', KEYS[1], KEYS[2])
return redis.call('set', KEYS[2], ARGV[1])`;
const DEL = `redis.call('lrem', KEYS[1], 0, KEYS[2])
local v = redis.call('get', KEYS[2])
redis.call('del', KEYS[2])
return v`;

/** The ioredis calls used: two scripts defined once (EVALSHA, loaded again on NOSCRIPT by ioredis). */
export interface WillConn {
  defineCommand(name: string, def: { numberOfKeys: number; lua: string }): void;
}
interface WillCommands {
  fleetPutWill(list: string, key: string, value: Buffer): Promise<unknown>;
  fleetDelWillBuffer(list: string, key: string): Promise<Buffer | null>;
}

interface WillClient {
  id: string;
  brokerId?: string;
}
interface WillPacket {
  clientId?: string;
  brokerId?: string;
}

/** Redis round trips the wills did not send (counted for tests and benchmarks). */
export interface WillCounters {
  /** CONNECT-time removals of a will no node stores, answered without Redis. */
  skippedDeletes: number;
  /** Stores and removals sent as one script. */
  scripted: number;
}

/** Replaces the persistence's `putWill` and `delWill` (conn: the persistence's own connection; brokerId: this node's). */
export function scriptWills(persistence: Persistence, conn: WillConn, brokerId: string): WillCounters {
  conn.defineCommand('fleetPutWill', { numberOfKeys: 2, lua: PUT });
  conn.defineCommand('fleetDelWill', { numberOfKeys: 2, lua: DEL });
  const redis = conn as unknown as WillCommands;
  const counters: WillCounters = { skippedDeletes: 0, scripted: 0 };
  const p = persistence as unknown as {
    putWill(client: WillClient, packet: WillPacket): Promise<void>;
    delWill(client: WillClient): Promise<unknown>;
  };
  p.putWill = async (client, packet) => {
    packet.clientId = client.id;
    packet.brokerId = brokerId;
    counters.scripted++;
    await redis.fleetPutWill(WILLS, willKey(brokerId, client.id), msgpack.encode(packet));
  };
  p.delWill = async (client) => {
    // No will is ever stored without its node's broker id (putWill above, and the persistence's own).
    if (typeof client.brokerId !== 'string') {
      counters.skippedDeletes++;
      return null;
    }
    counters.scripted++;
    const stored = await redis.fleetDelWillBuffer(WILLS, willKey(client.brokerId, client.id));
    return stored ? msgpack.decode(stored) : null;
  };
  return counters;
}
