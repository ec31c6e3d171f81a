/**
 * A broker node is built from named steps (platform/steps.ts); a step that
 * fails undoes the steps before it, in reverse: nothing is left listening,
 * the persistence is closed and the data directory's lock is released, so
 * the same directory can be used again at once.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker } from '../../nodes/broker-node.ts';
import { silentLogger } from '../../util/log.ts';

const servers: net.Server[] = [];
let dir: string | undefined;
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function listening(port = 0): Promise<net.Server> {
  const s = net.createServer();
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve());
  });
  servers.push(s);
  return s;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe('a broker node whose start fails at a step', () => {
  it('MQTT port taken after the on-disk persistence is opened: the persistence is closed and the directory unlocked', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-undo-'));
    const taken = await listening();
    const port = (taken.address() as net.AddressInfo).port;
    await expect(startBroker({ port, dataDir: dir, persistence: 'level', log: silentLogger })).rejects.toThrow(/EADDRINUSE/);
    // The same directory at once: LevelDB's lock and the broker's directory lock were released.
    const again = await startBroker({ port: 0, dataDir: dir, persistence: 'level', updateServer: false, log: silentLogger });
    await again.close();
  });

  it('WebSocket port taken after the MQTT listener is open: nothing is left listening on the MQTT port', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-undo-'));
    const taken = await listening();
    const wsPort = (taken.address() as net.AddressInfo).port;
    const mqttPort = await freePort();
    await expect(startBroker({ port: mqttPort, dataDir: dir, persistence: 'level', ws: { port: wsPort }, log: silentLogger })).rejects.toThrow(/EADDRINUSE/);
    // The MQTT port is free again and the directory usable.
    await listening(mqttPort);
    const again = await startBroker({ port: 0, dataDir: dir, persistence: 'level', updateServer: false, log: silentLogger });
    await again.close();
  });
});
