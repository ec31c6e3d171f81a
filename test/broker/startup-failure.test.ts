import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { startBroker } from '../../nodes/broker-node.ts';
import { silentLogger } from '../../util/log.ts';

describe('a broker that cannot start all its listeners', () => {
  it('fails with the reason and leaves nothing listening', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-startfail-'));
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    const metricsPort = (taken.address() as net.AddressInfo).port;
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', () => r()));
    const mqttPort = (free.address() as net.AddressInfo).port;
    await new Promise<void>((r) => free.close(() => r()));
    try {
      await expect(startBroker({ port: mqttPort, dataDir: path.join(dir, 'b'), persistence: 'memory', log: silentLogger, http: { port: metricsPort } })).rejects.toThrow(/EADDRINUSE/);
      // The MQTT port it had opened is free again: a second broker can take it.
      const again = await startBroker({ port: mqttPort, dataDir: path.join(dir, 'b2'), persistence: 'memory', log: silentLogger });
      expect(again.port).toBe(mqttPort);
      await again.close();
    } finally {
      await new Promise<void>((r) => taken.close(() => r()));
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
