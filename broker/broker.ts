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
import { BrokerAuth } from './auth.ts';

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
  /**
   * Users file (see broker/users-file.ts). With it every client must log in,
   * devices as client id `fleet-device-{name}`, and broker/acl.ts decides
   * every publish and subscription. Without it the broker is open (and says so).
   */
  auth?: string;
  /** How often the users file is checked for changes (default 1000 ms). */
  authPollMs?: number;
  log: Logger;
}

export interface RunningBroker {
  port: number;
  host: string;
  url: string;
  aedes: Aedes;
  updateServer: UpdateServer | undefined;
  /** Present with `auth`: `reload()` re-reads the users file at once. */
  auth: BrokerAuth | undefined;
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
  const log = o.log;
  const topics = new Topics(o.prefix);
  const internalClientId = `fleet-update-server-${process.pid}`;
  let auth: BrokerAuth | undefined;
  try {
    auth = o.auth ? await BrokerAuth.open({ file: o.auth, topics, log: log.child('auth'), internalClientId, pollMs: o.authPollMs }) : undefined;
  } catch (e) {
    if (persistence) await persistence.destroy();
    throw e;
  }
  const aedes = await Aedes.createBroker({ persistence, id: `fleet-broker-${process.pid}`, ...auth?.hooks() });
  if (auth) auth.attach(aedes);
  else log.warn('broker is unauthenticated: any client may publish and subscribe to anything (start it with --auth FILE)');
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
  log.info('broker listening', { url, persistence: o.persistence ?? 'level', auth: o.auth ?? null });

  let updateServer: UpdateServer | undefined;
  let transport: MqttTransport | undefined;
  if (o.updateServer !== false) {
    // With auth, the in-process server logs in with a random credential that exists only in this process.
    const cred = auth?.internalCredential;
    transport = await MqttTransport.connect({ url, clientId: internalClientId, username: cred?.username, password: cred?.password }, 10_000);
    updateServer = new UpdateServer({
      transport,
      store: new ContentStore(path.join(o.dataDir, 'store')),
      topics,
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
    auth,
    async close() {
      if (closed) return;
      closed = true;
      auth?.close();
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
