/**
 * A subscription without wildcards gets its retained message by one read of its key
 * (broker/retained-lookups.ts), not by aedes-persistence-level's scan that decodes every
 * retained message on disk. On a real LevelDB with the real persistence: the same packets
 * come out, and the scan is asked only for the filters with wildcards.
 */
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { Level } from 'level';
import { afterEach, describe, expect, it } from 'vitest';
import { exactRetainedLookups, isExactFilter } from '../../broker/retained-lookups.ts';
import type { Persistence } from '../../broker/persistence-streams.ts';

const require = createRequire(import.meta.url);
const AsyncLevelPersistence = require('aedes-persistence-level/asyncPersistence.js') as new (db: unknown) => Persistence;

type Lookup = { createRetainedStreamCombi(patterns: string[]): Readable; storeRetained(packet: unknown): Promise<void> };
let dir: string | undefined;
let db: Level | undefined;
afterEach(async () => {
  await db?.close();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  db = dir = undefined;
});

async function topicsOf(s: Readable): Promise<string[]> {
  const out: string[] = [];
  for await (const p of s) out.push((p as { topic: string }).topic);
  return out.sort();
}

async function rig(): Promise<{ p: Lookup; scanned: string[][] }> {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'retained-exact-'));
  db = new Level(dir);
  await db.open();
  const p = new AsyncLevelPersistence(db) as unknown as Lookup;
  for (let i = 0; i < 50; i++) {
    await p.storeRetained({ cmd: 'publish', topic: `fleet/devices/d${i}/status`, payload: Buffer.from(`s${i}`), qos: 1, retain: true, brokerId: 'b', brokerCounter: i });
  }
  await p.storeRetained({ cmd: 'publish', topic: 'fleet/models/m/groups/g/release', payload: Buffer.from('r'), qos: 1, retain: true, brokerId: 'b', brokerCounter: 99 });
  const scanned: string[][] = [];
  const scan = p.createRetainedStreamCombi.bind(p);
  p.createRetainedStreamCombi = (patterns) => {
    scanned.push(patterns);
    return scan(patterns);
  };
  exactRetainedLookups(p as unknown as Persistence, db);
  return { p, scanned };
}

describe('retained lookups for exact filters', () => {
  it('an exact filter reads its one record: the same packet, payload and all, and no scan', async () => {
    const { p, scanned } = await rig();
    const got: Array<{ topic: string; payload: Buffer }> = [];
    for await (const x of p.createRetainedStreamCombi(['fleet/models/m/groups/g/release', 'fleet/devices/d7/status', 'nothing/here'])) got.push(x as { topic: string; payload: Buffer });
    expect(got.map((x) => [x.topic, Buffer.from(x.payload).toString()])).toEqual([
      ['fleet/models/m/groups/g/release', 'r'],
      ['fleet/devices/d7/status', 's7'],
    ]);
    expect(scanned).toEqual([]);
  });

  it('filters with wildcards are scanned as before, beside the exact ones', async () => {
    const { p, scanned } = await rig();
    const got = await topicsOf(p.createRetainedStreamCombi(['fleet/devices/+/status', 'fleet/models/m/groups/g/release']));
    expect(got.length).toBe(51);
    expect(scanned).toEqual([['fleet/devices/+/status']]);
    expect(await topicsOf(p.createRetainedStreamCombi(['fleet/#']))).toHaveLength(51);
  });

  it('knows an exact filter', () => {
    expect(isExactFilter('a/b/c')).toBe(true);
    expect(isExactFilter('a/+/c')).toBe(false);
    expect(isExactFilter('a/#')).toBe(false);
    expect(isExactFilter('$SYS/broker/x')).toBe(true);
  });
});
