/**
 * Two narrowings of the persistence's retained-message lookup, each tested on a real database
 * (test/broker/retained-lookups.test.ts, test/integration/cluster-redis-traffic.test.ts): a
 * filter without wildcards is read by its key on the on-disk store, and a device's frames
 * filter (never retained) is not looked up at all, on one node or in a cluster.
 */
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import type { Persistence } from './persistence-streams.ts';
import type { Topics } from '../protocol/topics.ts';

const require = createRequire(import.meta.url);
// The encoding aedes-persistence-level stores its records in (a dependency of ours for that reason).
const msgpack = require('msgpack-lite') as { decode(bytes: Uint8Array): unknown };

/**
 * Replace the persistence's retained lookup (Aedes asks `createRetainedStreamCombi` for the
 * retained messages of a SUBSCRIBE's filters, MQTT 3.1.1 §3.3.1.3) by `lookup`, which is given
 * the lookup it replaces. Every rule below is one such replacement; they compose.
 */
function replaceRetainedLookup(persistence: Persistence, lookup: (patterns: string[], previous: (patterns: string[]) => Readable) => Readable): void {
  const p = persistence as unknown as { createRetainedStreamCombi(patterns: string[]): Readable };
  const previous = p.createRetainedStreamCombi.bind(p);
  p.createRetainedStreamCombi = (patterns) => lookup(patterns, previous);
}

/** What the lookup needs of the on-disk database: one record by key, as bytes. */
export interface RetainedDb {
  get(key: string, options: { valueEncoding: 'buffer' }): Promise<Uint8Array | undefined>;
}

/** MQTT 3.1.1 §4.7.1: a filter without '+' or '#' matches exactly one topic, itself. */
export function isExactFilter(filter: string): boolean {
  return !filter.includes('+') && !filter.includes('#');
}

/**
 * aedes-persistence-level answers every subscription's retained lookup by reading and decoding
 * every retained message on disk (a status and a presence per device) and testing each against
 * the filter: for each filter of each device that connects, so O(devices²) decodes in all, four
 * fifths of one node's CPU with 1,000 devices (docs/cluster.md). A filter without wildcards names
 * one topic: its retained message is the one record under `retained:<topic>` (the key the
 * persistence stores it at), read directly. Filters with wildcards are looked up as before.
 */
export function exactRetainedLookups(persistence: Persistence, db: RetainedDb): void {
  replaceRetainedLookup(persistence, (patterns, scan) => {
    const exact = patterns.filter(isExactFilter);
    const rest = patterns.filter((f) => !isExactFilter(f));
    if (exact.length === 0) return scan(rest);
    return Readable.from(retained(db, exact, rest.length > 0 ? scan(rest) : undefined));
  });
}

async function* retained(db: RetainedDb, topics: string[], rest: AsyncIterable<unknown> | undefined): AsyncGenerator<unknown> {
  for (const topic of new Set(topics)) {
    const bytes = await db.get(`retained:${topic}`, { valueEncoding: 'buffer' });
    if (bytes !== undefined) yield msgpack.decode(bytes);
  }
  if (rest) yield* rest;
}

/** The device of a subscription to one device's frames (`{prefix}/models/M/updates/+/to/DEVICE`), if it is one. */
export function framesFilterDevice(topics: Topics, filter: string): string | undefined {
  const prefix = `${topics.prefix}/models/`;
  if (!filter.startsWith(prefix)) return undefined;
  const r = filter.slice(prefix.length).split('/');
  if (r.length !== 5 || r[1] !== 'updates' || r[3] !== 'to') return undefined;
  const device = r[4];
  return device === '+' || device === '#' ? undefined : device;
}

/**
 * A device's subscription to its own frames (`…/updates/+/to/DEVICE`) asks
 * the persistence for the retained messages it matches, and for a filter with
 * a wildcard aedes-persistence-redis answers by `HSCAN`ning the whole
 * retained hash (a status and a presence per device) ten entries at a time:
 * about N/5 round trips for every device that connects, at N devices. Frames
 * are never published retained (the update server answers requests), so
 * those filters are left out of the lookup; every other filter is looked up
 * as before. A single node's on-disk persistence (aedes-persistence-level)
 * reads every retained message for such a filter too: it skips them as well.
 */
export function skipFrameLookups(persistence: Persistence, isFramesFilter: (filter: string) => boolean): void {
  replaceRetainedLookup(persistence, (patterns, previous) => {
    const rest = patterns.filter((f) => !isFramesFilter(f));
    return rest.length > 0 ? previous(rest) : Readable.from([]);
  });
}
