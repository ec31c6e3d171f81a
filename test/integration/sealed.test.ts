import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { openPayload } from '../../protocol/seal.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate } from '../../publisher/publish.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { CHUNK, createFixture, currentDigest, GROUP, MODEL, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

describe('sealed payloads end to end', () => {
  it('devices with the group key install; without it, or with another, they refuse (undecryptable) and keep their model; the server holds only sealed bytes', async () => {
    f = own(await createFixture('sealed'));
    const groupKey = new Uint8Array(32).fill(42);
    const watch = await StatusWatch.start(f);
    await startAgent(f, 'with-key', silentLogger, { groupKey });
    await startAgent(f, 'no-key');
    await startAgent(f, 'wrong-key', silentLogger, { groupKey: new Uint8Array(32).fill(43) });
    for (const id of ['with-key', 'no-key', 'wrong-key']) await watch.until(id, (s) => s.state === 'idle');
    const t = await MqttTransport.connect({ url: f.url, clientId: 'sealing-publisher' }, 10_000);
    const r = await publishUpdate({
      transport: t,
      topics,
      payloads: [f.update.payload],
      groupKey,
      keys: [await loadSigningKey(f.keyFile)],
      rolloutKeys: [await loadSigningKey(f.rolloutKeyFile)],
      model: MODEL,
      group: GROUP,
      chunkSize: CHUNK,
      ttlSeconds: 3600,
      log: silentLogger,
    });
    await t.close();
    expect(r.release.steps.every((s) => s.sealed)).toBe(true);
    const ok = await watch.until('with-key', (s) => s.state === 'ok');
    expect(ok.running).toBe(f.update.targetDigest);
    for (const id of ['no-key', 'wrong-key']) {
      const s = await watch.until(id, (x) => x.state === 'rejected');
      expect(s.reason).toBe('undecryptable');
      expect(await currentDigest(f, id)).toBe(f.update.baseDigest);
    }
    const stored = new Uint8Array(await fs.readFile(path.join(f.dir, 'broker', 'store', 'updates', r.updateId, 'payload')));
    expect(Buffer.from(stored).includes(Buffer.from(f.update.payload.subarray(200, 264)))).toBe(false);
    expect(Buffer.from(openPayload(stored, groupKey)).equals(Buffer.from(f.update.payload))).toBe(true);
  });
});
