import net from 'node:net';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import { Aedes, type AedesOptions } from 'aedes';
import { Level } from 'level';
import { Topics } from '../protocol/topics.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { ContentStore } from '../server/content-store.ts';
import { UpdateServer } from '../server/update-server.ts';
import type { Logger } from '../util/log.ts';

const require = createRequire(import.meta.url);
// The async persistence class itself: Aedes 1.x requires an async setup().
const AsyncLevelPersistence = require('aedes-persistence-level/asyncPersistence.js') as new (db: unknown) => AedesOptions['persistence'] & {
  destroy(): Promise<void>;
};

export interface BrokerOptions {
  port?: number;
  host?: string;
  /** Broker persistence and the update server's content store live here. */
  dataDir: string;
  persistence?: 'level' | 'memory';
  /** Run the update server in-process (default true). */
  updateServer?: boolean;
  prefix?: string;
  log: Logger;
}

export interface RunningBroker {
  port: number;
  host: string;
  url: string;
  aedes: Aedes;
  updateServer: UpdateServer | undefined;
  close(): Promise<void>;
}

/**
 * Aedes (MQTT 3.1.1) on TCP with TCP_NODELAY on every socket, on-disk
 * persistence by default, and the update server connected to it over loopback.
 */
export async function startBroker(o: BrokerOptions): Promise<RunningBroker> {
  const host = o.host ?? '127.0.0.1';
  await fs.mkdir(o.dataDir, { recursive: true });
  let persistence: (AedesOptions['persistence'] & { destroy(): Promise<void> }) | undefined;
  if ((o.persistence ?? 'level') === 'level') {
    const db = new Level(path.join(o.dataDir, 'broker-db'));
    await db.open();
    persistence = new AsyncLevelPersistence(db);
  }
  const aedes = await Aedes.createBroker({ persistence, id: `fleet-broker-${process.pid}` });
  const log = o.log;
  aedes.on('clientError', (client, err) => log.debug('client error', { client: client?.id, error: err.message }));

  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    aedes.handle(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 1883, host, () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  const url = `mqtt://${host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host}:${port}`;
  log.info('broker listening', { url, persistence: o.persistence ?? 'level' });

  let updateServer: UpdateServer | undefined;
  let transport: MqttTransport | undefined;
  if (o.updateServer !== false) {
    transport = await MqttTransport.connect({ url, clientId: `fleet-update-server-${process.pid}` }, 10_000);
    updateServer = new UpdateServer({
      transport,
      store: new ContentStore(path.join(o.dataDir, 'store')),
      topics: new Topics(o.prefix),
      log: log.child('server'),
    });
    await updateServer.start();
  }

  let closed = false;
  return {
    port,
    host,
    url,
    aedes,
    updateServer,
    async close() {
      if (closed) return;
      closed = true;
      if (updateServer) await updateServer.stop();
      if (transport) await transport.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      if (persistence) await persistence.destroy();
      log.info('broker stopped');
    },
  };
}
