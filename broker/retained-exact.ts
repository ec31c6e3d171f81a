import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import type { Persistence } from './persistence-streams.ts';

const require = createRequire(import.meta.url);
// The encoding aedes-persistence-level stores its records in (a dependency of ours for that reason).
const msgpack = require('msgpack-lite') as { decode(bytes: Uint8Array): unknown };

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
  const p = persistence as unknown as { createRetainedStreamCombi(patterns: string[]): Readable };
  const scan = p.createRetainedStreamCombi.bind(p);
  p.createRetainedStreamCombi = (patterns) => {
    const exact = patterns.filter(isExactFilter);
    const rest = patterns.filter((f) => !isExactFilter(f));
    if (exact.length === 0) return scan(rest);
    return Readable.from(retained(db, exact, rest.length > 0 ? scan(rest) : undefined));
  };
}

async function* retained(db: RetainedDb, topics: string[], rest: AsyncIterable<unknown> | undefined): AsyncGenerator<unknown> {
  for (const topic of new Set(topics)) {
    const bytes = await db.get(`retained:${topic}`, { valueEncoding: 'buffer' });
    if (bytes !== undefined) yield msgpack.decode(bytes);
  }
  if (rest) yield* rest;
}
