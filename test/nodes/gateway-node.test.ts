/**
 * The gateway is built from named steps; one that fails (here its status
 * relay's queue: DIR/relay is a file) undoes those before it, the site broker
 * included: its port is free again and its data directory can be used at once.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { gatewayNode } from '../../nodes/gateway-node.ts';
import { silentLogger } from '../../util/log.ts';

let dir: string | undefined;
const servers: net.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function listenOn(port: number): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve());
  });
  servers.push(s);
  return (s.address() as net.AddressInfo).port;
}

describe('a gateway whose start fails at a step', () => {
  it('undoes the steps before it: the site broker stops listening and releases its data directory', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-gw-undo-'));
    const dataDir = path.join(dir, 'gateway');
    await fs.mkdir(dataDir);
    await fs.writeFile(path.join(dataDir, 'relay'), 'not a directory');
    const port = await listenOn(0);
    await new Promise<void>((r) => servers.pop()!.close(() => r()));
    const gw = gatewayNode({ upstream: 'mqtt://127.0.0.1:1', listen: port, host: '127.0.0.1', dataDir, site: 'site-a', persistence: 'level', reconnectMinMs: 200, reconnectMaxMs: 1000, log: silentLogger });
    await expect(gw.start()).rejects.toThrow();
    // Nothing listens on the site port, and the site broker's directory (LevelDB, lock) is free.
    expect(await listenOn(port)).toBe(port);
    await fs.rm(path.join(dataDir, 'relay'));
    const again = gatewayNode({ upstream: 'mqtt://127.0.0.1:1', listen: 0, host: '127.0.0.1', dataDir, site: 'site-a', persistence: 'level', reconnectMinMs: 200, reconnectMaxMs: 1000, log: silentLogger });
    await again.start();
    await again.close();
  }, 60_000);
});
