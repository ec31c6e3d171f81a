/**
 * After a trust rotation the agent subscribes to its release topic anew (so the
 * retained release comes again). When that subscribe fails, the device must not
 * end up following no release at all: the failure is logged and the subscribe
 * tried again. Real agent, real MQTT client, real Aedes broker; the transport is
 * wrapped only to fail one subscribe, as a refused or lost SUBSCRIBE would.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceAgent } from '../../device/agent.ts';
import { systemClock } from '../../platform/clock.ts';
import { DeviceStorage } from '../../device/storage.ts';
import { parseTrustFile, signingKeyFromSeed, signTrust, trustOf } from '../../protocol/release.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate } from '../../publisher/publish.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import type { Transport } from '../../transport/types.ts';
import { createLogger } from '../../util/log.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { digestHealthCheck } from '../../device/health.ts';
import { CHUNK, connect, createFixture, GROUP, MODEL, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { transportWith } from '../support/transport-with.ts';

let f: Fixture | undefined;
afterEach(async () => {
  await f?.close();
  f = undefined;
});

/** The real transport, except that the next `failures` subscribes to `topic` are rejected. */
function failingSubscribes(inner: MqttTransport, topic: string): { transport: Transport; arm(failures: number): void; failed(): number } {
  let left = 0;
  let failed = 0;
  const transport = transportWith(inner, {
    subscribe: (filters, qos) => {
      const list = Array.isArray(filters) ? filters : [filters];
      if (left > 0 && list.includes(topic)) {
        left--;
        failed++;
        return Promise.reject(new Error(`broker refused subscription to ${topic}`));
      }
      return inner.subscribe(filters, qos);
    },
  });
  return { transport, arm: (n) => (left = n), failed: () => failed };
}

describe('trust rotation', () => {
  it('a failed re-subscribe to the release after a rotation is logged and tried again: the next release still arrives', async () => {
    f = await createFixture('trust-resub');
    const release = await loadSigningKey(f.keyFile);
    const rollout = await loadSigningKey(f.rolloutKeyFile);
    const trust = parseTrustFile(await fs.readFile(f.trustFile, 'utf8'));
    const watch = await StatusWatch.start(f);

    const lines: string[] = [];
    const log = createLogger('agent', 'debug', (l) => lines.push(l));
    const storage = new DeviceStorage(path.join(f.dir, 'rs1'));
    await DeviceAgent.provision(storage, f.baseFile, digestModelFile);
    const inner = MqttTransport.start({ url: f.url, clientId: 'fleet-device-rs1' });
    f.transports.push(inner);
    const releaseTopic = topics.release(GROUP, MODEL);
    const wrapped = failingSubscribes(inner, releaseTopic);
    const agent = await DeviceAgent.open(
      { deviceId: 'rs1', model: MODEL, group: GROUP, trust, idleMs: 1000, retryMs: 200 },
      { transport: wrapped.transport, storage, clock: systemClock, health: digestHealthCheck, topics, log },
    );
    f.agents.push(agent);
    await agent.start();
    await watch.until('rs1', (s) => s.state === 'idle');

    // Rotate the release key; the re-subscribe that follows fails once.
    wrapped.arm(1);
    const pub = await connect(f, 'resub-pub');
    const newRelease = signingKeyFromSeed(new Uint8Array(32).fill(91));
    const next = trustOf([newRelease], [rollout], 1, 1);
    await pub.publish(topics.trust(), signTrust(next, [release]), { qos: 1, retain: true });

    // A release under the new key reaches the device and is installed.
    const common = { topics, model: MODEL, chunkSize: CHUNK, log: createLogger('pub', 'silent'), settleMs: 300 };
    const r = await publishUpdate({ ...common, transport: pub, payloads: [f.update.payload], keys: [newRelease], rolloutKeys: [rollout], trust: next, group: GROUP, ttlSeconds: 3600 });
    await watch.until('rs1', (s) => s.state === 'ok' && s.seq === r.release.seq && s.running === f!.update.targetDigest, 30_000);
    expect(wrapped.failed()).toBe(1);
    const warned = lines.map((l) => JSON.parse(l) as { level: string; msg: string; error?: string }).filter((l) => l.level === 'warn' && /re-subscribing to the release/.test(l.msg));
    expect(warned).toHaveLength(1);
    expect(warned[0].error).toContain('refused subscription');
  }, 60_000);
});
