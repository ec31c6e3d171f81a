/**
 * A bug is reported as a bug: a TypeError thrown while the agent prepares a
 * download ends in the status as `internal-error` (not `storage-error`, as any
 * unexpected error once was), and the log has its stack. Real agent, real
 * broker; the file-system port is the real one with a defect planted in
 * freeBytes (a property read of undefined), as a bug in our code would be.
 */
import path from 'node:path';
import { promises as fs } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceAgent } from '../../device/agent.ts';
import { systemClock } from '../../platform/clock.ts';
import { nodeFs, type FsPort } from '../../platform/fs-port.ts';
import { digestHealthCheck } from '../../device/health.ts';
import { DEVICE_REASONS } from '../../device/reasons.ts';
import { DeviceStorage } from '../../device/storage.ts';
import { parseTrustFile } from '../../protocol/release.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate } from '../../publisher/publish.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { createLogger } from '../../util/log.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { CHUNK, connect, createFixture, GROUP, MODEL, StatusWatch, topics, type Fixture } from '../support/harness.ts';

let f: Fixture | undefined;
afterEach(async () => {
  await f?.close();
  f = undefined;
});

describe('a bug in the agent', () => {
  it('a TypeError is reported as internal-error with its stack in the log, never as storage-error', async () => {
    f = await createFixture('internal-error');
    const trust = parseTrustFile(await fs.readFile(f.trustFile, 'utf8'));
    const watch = await StatusWatch.start(f);
    const lines: string[] = [];
    const log = createLogger('agent', 'warn', (l) => lines.push(l));
    const broken: FsPort = {
      ...nodeFs,
      freeBytes: async () => (undefined as unknown as { bavail: number }).bavail,
    };
    const storage = new DeviceStorage(path.join(f.dir, 'ie1'), broken);
    await DeviceAgent.provision(storage, f.baseFile, digestModelFile);
    const transport = MqttTransport.start({ url: f.url, clientId: 'fleet-device-ie1' });
    f.transports.push(transport);
    const agent = await DeviceAgent.open({ deviceId: 'ie1', model: MODEL, group: GROUP, trust, idleMs: 1000 }, { transport, storage, clock: systemClock, health: digestHealthCheck, topics, log });
    f.agents.push(agent);
    await agent.start();
    await watch.until('ie1', (s) => s.state === 'idle');

    const pub = await connect(f, 'ie-pub');
    await publishUpdate({
      topics,
      model: MODEL,
      chunkSize: CHUNK,
      log: createLogger('pub', 'silent'),
      settleMs: 300,
      transport: pub,
      payloads: [f.update.payload],
      keys: [await loadSigningKey(f.keyFile)],
      rolloutKeys: [await loadSigningKey(f.rolloutKeyFile)],
      trust,
      group: GROUP,
      ttlSeconds: 3600,
    });
    const failed = await watch.until('ie1', (s) => s.state === 'failed');
    expect(failed.reason).toBe('internal-error');
    expect(failed.message).toContain(DEVICE_REASONS['internal-error']);
    expect(failed.message).toContain('bavail');
    const logged = lines.map((l) => JSON.parse(l) as { level: string; msg: string; stack?: string }).filter((l) => l.msg === 'internal error (a bug)');
    expect(logged.length).toBeGreaterThanOrEqual(1);
    expect(logged[0].level).toBe('error');
    expect(logged[0].stack).toMatch(/^TypeError: .*bavail/);
    expect(logged[0].stack).toContain('internal-error.test.ts');
  }, 60_000);
});
