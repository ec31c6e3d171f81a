/**
 * A broker stopped while a SUBSCRIBE's retained messages are still being
 * read from its on-disk persistence: the read ends quietly, the process does
 * not crash (Aedes attaches no error listener to that stream), and the data
 * is still there after a restart.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { Topics } from '../../protocol/topics.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { until } from '../support/wait.ts';

const topics = new Topics();
let dir: string | undefined;
let broker: RunningBroker | undefined;
afterEach(async () => {
  await broker?.close();
  broker = undefined;
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('broker persistence on close', () => {
  it('closing while retained messages stream to a new subscriber crashes nothing, and they survive a restart', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'persistence-close-'));
    const N = 3000;
    broker = await startBroker({ port: 0, dataDir: dir, persistence: 'level', updateServer: false, log: silentLogger });
    const pub = await MqttTransport.connect({ url: broker.url, clientId: 'filler' }, 10_000);
    const payload = new Uint8Array(256).fill(7);
    for (let i = 0; i < N; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, k) => pub.publish(topics.status(`d${i + k}`), payload, { qos: 1, retain: true })));
    }
    await pub.close();
    const errors: unknown[] = [];
    const onError = (e: unknown): void => {
      errors.push(e);
    };
    process.on('uncaughtException', onError);
    try {
      for (let round = 0; round < 5; round++) {
        const sub = await MqttTransport.connect({ url: broker.url, clientId: `reader-${round}` }, 10_000);
        void sub.subscribe(topics.allStatuses(), 1).catch(() => undefined);
        await new Promise((r) => setTimeout(r, 5 + round * 5));
        const port = broker.port;
        await broker.close();
        void sub.close().catch(() => undefined);
        await new Promise((r) => setTimeout(r, 50));
        broker = await startBroker({ port, dataDir: dir, persistence: 'level', updateServer: false, log: silentLogger });
      }
    } finally {
      process.off('uncaughtException', onError);
    }
    expect(errors).toEqual([]);
    // Every retained status is still there.
    const reader = await MqttTransport.connect({ url: broker.url, clientId: 'final-reader' }, 10_000);
    const seen = new Set<string>();
    reader.onMessage((t) => seen.add(t));
    await reader.subscribe(topics.allStatuses(), 1);
    await until(() => seen.size >= N, { what: `all ${N} retained statuses`, timeoutMs: 10_000, context: () => `seen ${seen.size}` });
    await reader.close();
    expect(seen.size).toBe(N);
  });
});
