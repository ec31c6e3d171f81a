/**
 * Hole 7 of issue 14: `.` and `..` passed the identifier rule and became
 * directory names. A release retained for group `.` landed in the update
 * server's `releases/` itself (then `fleet gc` and the re-assertion of every
 * release after a broker restart failed with ENOTDIR); one for `..` was
 * written outside `releases/`. The identifier rule (protocol/topics.ts) now
 * refuses names made of dots only, and every path built from a network
 * identifier goes through it.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeRelease, signingKeyFromSeed, signRelease } from '../../protocol/release.ts';
import { assertSegment, isTopicSegment, Topics } from '../../protocol/topics.ts';
import { ContentStore } from '../../server/content-store.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { useBrokerEnv } from '../support/broker-env.ts';
import { until } from '../support/wait.ts';

const topics = new Topics();
const key = signingKeyFromSeed(new Uint8Array(32).fill(7));
const release = (group: string, model: string): Uint8Array =>
  signRelease({ model, group, seq: 5, issued: 1_700_000_000, expires: 2_000_000_000, target: 'ab'.repeat(32), steps: [], rollback: false, previous: null }, [key]);

const env = useBrokerEnv('sec-path');

describe('the identifier rule refuses path components', () => {
  it('refuses names of dots alone, everywhere the rule is used', () => {
    for (const bad of ['.', '..', '...']) {
      expect(isTopicSegment(bad)).toBe(false);
      expect(() => assertSegment('group', bad)).toThrow(/not dots alone/);
      expect(() => topics.release(bad, 'm')).toThrow(TypeError);
      expect(() => topics.status(bad)).toThrow(TypeError);
      expect(topics.parse(`fleet/groups/${bad}/models/m/release`)).toBeNull();
      expect(topics.parse(`fleet/devices/${bad}/status`)).toBeNull();
      expect(topics.parse(`fleet/models/${bad}/updates/${'0'.repeat(32)}/put`)).toBeNull();
      // A signed release naming such a group is malformed, as a device sees it.
      expect(() => decodeRelease(release(bad, 'm'))).toThrow(/group/);
    }
    for (const good of ['a.b', '.hidden', 'line-1', 'v1.2.3', 'x..y']) expect(isTopicSegment(good)).toBe(true);
  });

  it('the content store refuses to build a path from them', async () => {
    const dir = await env.dir();
    const store = new ContentStore(path.join(dir, 'store'));
    await store.init();
    await expect(store.putRelease('..', 'm', release('g', 'm'))).rejects.toThrow(/bad group or model/);
    await expect(store.putRelease('g', '..', release('g', 'm'))).rejects.toThrow(/bad group or model/);
    await expect(store.putRelease('.', 'm', release('g', 'm'))).rejects.toThrow(/bad group or model/);
    expect(await fs.readdir(path.join(dir, 'store'))).toEqual(['releases', 'updates', 'uploads']);
  });
});

describe('a release retained for group "." or ".." on a real broker', () => {
  it('is not stored; gc and the re-assertion list keep working; nothing is written outside releases/', async () => {
    const dir = await env.dir();
    const broker = await env.broker();
    const client = env.track(await MqttTransport.connect({ url: broker.url, clientId: 'attacker' }, 10_000));
    // Raw topics: the builders would refuse these names, an attacker does not use them.
    await client.publish('fleet/groups/./models/m/release', release('g', 'm'), { qos: 1, retain: true });
    await client.publish('fleet/groups/../models/m/release', release('g', 'm'), { qos: 1, retain: true });
    await client.publish(topics.release('g', 'm'), release('g', 'm'), { qos: 1, retain: true });
    const storeDir = path.join(dir, 'broker', 'store');
    const store = new ContentStore(storeDir);
    // The honest release is stored: the attack messages have been handled before it (one connection, in order).
    await until(() => store.getRelease('g', 'm'), { what: 'the honest release stored', timeoutMs: 10_000 });
    await broker.updateServer!.idle();
    expect(await store.getRelease('g', 'm')).toBeDefined();

    expect((await fs.readdir(storeDir)).sort()).toEqual(['releases', 'updates', 'uploads']);
    const entries = await fs.readdir(path.join(storeDir, 'releases'), { withFileTypes: true });
    expect(entries.map((e) => [e.name, e.isDirectory()])).toEqual([['g', true]]);
    expect((await store.releases()).map((r) => `${r.group}/${r.model}`)).toEqual(['g/m']);
    const gc = await store.gc({ dryRun: true });
    expect(gc.removed).toEqual([]);
  });

  it('a store left with a stray file in releases/ (written by an older version) still lists and collects', async () => {
    const dir = await env.dir();
    const store = new ContentStore(path.join(dir, 'store'));
    await store.init();
    await store.putRelease('g', 'm', release('g', 'm'));
    await fs.writeFile(path.join(dir, 'store', 'releases', 'm.cbor'), release('g', 'm'));
    expect((await store.releases()).map((r) => `${r.group}/${r.model}`)).toEqual(['g/m']);
    await expect(store.gc()).resolves.toMatchObject({ removed: [] });
  });
});
