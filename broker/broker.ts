import { BROKER_DEFAULTS } from './defaults.ts';
import net from 'node:net';
import tls from 'node:tls';
import http from 'node:http';
import { WebSocketServer, createWebSocketStream } from 'ws';
import os from 'node:os';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import { Aedes, type Client } from 'aedes';
import { Level } from 'level';
import { Topics } from '../protocol/topics.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { ContentStore } from '../server/content-store.ts';
import { UpdateServer } from '../server/update-server.ts';
import { BrokerMetrics, serveMetrics } from '../operator/broker-metrics.ts';
import { liveDashboard } from '../operator/dashboard-live.ts';
import type { Logger } from '../util/log.ts';
import { DirLock } from '../util/dir-lock.ts';
import { BrokerAuth } from './auth.ts';
import type { Role } from './acl.ts';
import { openCluster, UpdateServerLease, type ClusterParts } from './cluster.ts';
import { guardStreams, type Persistence } from './persistence-streams.ts';
import { connectRules, limitPackets, PACKET_LIMITS } from './connection-limits.ts';

const require = createRequire(import.meta.url);
// The async persistence class itself: Aedes 1.x requires an async setup().
const AsyncLevelPersistence = require('aedes-persistence-level/asyncPersistence.js') as new (db: unknown) => Persistence;

export interface BrokerOptions {
  port?: number;
  host?: string;
  /** Broker persistence and the update server's content store live here. */
  dataDir: string;
  persistence?: 'level' | 'memory';
  /**
   * `redis://HOST:PORT`: one node of a cluster (broker/cluster.ts). Redis holds
   * sessions and retained messages and carries publishes between nodes; `persistence` is ignored.
   * The in-process update server then takes the cluster's lease: one per cluster (docs/cluster.md).
   */
  cluster?: string;
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
  /**
   * A TLS listener beside the plain one (keep the plain one on loopback to use
   * TLS only). With `ca`, clients must present a certificate it signed.
   */
  tls?: { port: number; host?: string; cert: string | Buffer; key: string | Buffer; ca?: string | Buffer };
  /**
   * MQTT over WebSocket (for browsers: an operator's page subscribing read-only
   * with its own login; the ACL applies as on TCP). Port 0: any free port.
   */
  ws?: { port: number; host?: string };
  /** An HTTP listener serving `GET /metrics` (Prometheus; operator/broker-metrics.ts). Port 0: any free port. */
  http?: { port: number; host?: string; processMetrics?: boolean };
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
  /** `mqtts://host:port` when a TLS listener runs. */
  tlsUrl: string | undefined;
  /** `ws://host:port` when the WebSocket listener runs. */
  wsUrl: string | undefined;
  /** `http://host:port/metrics` when the metrics listener runs. */
  metricsUrl: string | undefined;
  close(): Promise<void>;
}

/**
 * Aedes (MQTT 3.1.1) on TCP with TCP_NODELAY on every socket, on-disk
 * persistence by default, and the update server connected to it over loopback.
 */
export async function startBroker(o: BrokerOptions): Promise<RunningBroker> {
  const host = o.host ?? '127.0.0.1';
  await fs.mkdir(o.dataDir, { recursive: true });
  // One broker per data directory: a second one is named, not left to fail inside LevelDB.
  const dirLock = await DirLock.acquire(o.dataDir, 'fleet broker');
  let persistence: Persistence | undefined;
  const log = o.log;
  let cluster: ClusterParts | undefined;
  if (o.cluster) {
    cluster = await openCluster(o.cluster, log.child('cluster'));
    persistence = cluster.persistence;
  } else if ((o.persistence ?? 'level') === 'level') {
    const db = new Level(path.join(o.dataDir, 'broker-db'));
    await db.open();
    persistence = guardStreams(new AsyncLevelPersistence(db), log.child('persistence'));
  }
  const destroyPersistence = async (): Promise<void> => {
    if (cluster) await cluster.close();
    else if (persistence) await persistence.destroy();
  };
  const topics = new Topics(o.prefix);
  const internalClientId = `fleet-update-server-${process.pid}`;
  let auth: BrokerAuth | undefined;
  try {
    auth = o.auth ? await BrokerAuth.open({ file: o.auth, topics, log: log.child('auth'), internalClientId, pollMs: o.authPollMs }) : undefined;
  } catch (e) {
    await destroyPersistence();
    throw e;
  }
  const authHooks = auth?.hooks();
  const aedes = await Aedes.createBroker({ persistence, mq: cluster?.mq, id: cluster?.brokerId ?? `fleet-broker-${process.pid}`, ...authHooks, ...connectRules(authHooks, log.child('connect')) });
  const roleOf = (c: Client): Role | undefined => auth?.roleOf(c);
  // Packets over the limit for the connection's phase and role are cut before Aedes buffers them.
  const handle = (stream: net.Socket, req?: http.IncomingMessage): void => {
    const client = aedes.handle(stream, req);
    limitPackets(stream, client, roleOf, auth !== undefined, log.child('limits'));
  };
  if (auth) auth.attach(aedes);
  else log.warn('broker is unauthenticated: any client may publish and subscribe to anything (start it with --auth FILE)');
  aedes.on('clientError', (client, err) => log.debug('client error', { client: client?.id, error: err.message }));
  let updateServer: UpdateServer | undefined;
  const metrics = o.http ? new BrokerMetrics({ aedes, topics, updateStats: () => updateServer?.stats, processMetrics: o.http.processMetrics }) : undefined;

  const sockets = new Set<net.Socket>();
  const accept = (socket: net.Socket): void => {
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    metrics?.trackSocket(socket);
    handle(socket);
  };
  const listen = (srv: net.Server, port: number, on: string): Promise<number> =>
    new Promise<number>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, on, () => resolve((srv.address() as net.AddressInfo).port));
    });
  const server = net.createServer(accept);
  const port = await listen(server, o.port ?? BROKER_DEFAULTS.port, host);
  const url = `mqtt://${host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host}:${port}`;
  let tlsServer: tls.Server | undefined;
  let tlsUrl: string | undefined;
  if (o.tls) {
    const mutual = o.tls.ca !== undefined;
    tlsServer = tls.createServer({ cert: o.tls.cert, key: o.tls.key, ca: o.tls.ca, requestCert: mutual, rejectUnauthorized: mutual }, accept);
    tlsServer.on('tlsClientError', (e) => log.warn('TLS handshake refused', { error: e.message }));
    const tlsHost = o.tls.host ?? host;
    const tlsPort = await listen(tlsServer, o.tls.port, tlsHost);
    tlsUrl = `mqtts://${tlsHost === '0.0.0.0' || tlsHost === '::' ? '127.0.0.1' : tlsHost}:${tlsPort}`;
    log.info('TLS listener', { url: tlsUrl, clientCertificates: mutual });
  }
  log.info('broker listening', { url, persistence: o.cluster ? 'redis' : o.persistence ?? 'level', auth: o.auth ?? null });
  let wsHttp: http.Server | undefined;
  let wsServer: WebSocketServer | undefined;
  let wsUrl: string | undefined;
  if (o.ws) {
    wsHttp = http.createServer((_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' });
      res.end('MQTT over WebSocket only\n');
    });
    // ws buffers a whole message before handing it on: no message over the largest packet a logged-in operator may send.
    wsServer = new WebSocketServer({ server: wsHttp, maxPayload: PACKET_LIMITS.operator, handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : false) });
    wsServer.on('connection', (socket, req) => {
      (req.socket as net.Socket).setNoDelay(true);
      sockets.add(req.socket as net.Socket);
      req.socket.on('close', () => sockets.delete(req.socket as net.Socket));
      handle(createWebSocketStream(socket) as unknown as net.Socket, req);
    });
    const wsHost = o.ws.host ?? host;
    const wsPort = await listen(wsHttp, o.ws.port, wsHost);
    wsUrl = `ws://${wsHost === '0.0.0.0' || wsHost === '::' ? '127.0.0.1' : wsHost}:${wsPort}`;
    log.info('WebSocket listener', { url: wsUrl });
  }

  let transport: MqttTransport | undefined;
  let lease: UpdateServerLease | undefined;
  if (o.updateServer !== false && o.cluster) {
    try {
      lease = await UpdateServerLease.acquire({ url: o.cluster, prefix: topics.prefix, holder: `${os.hostname()}:${host}:${port}`, log: log.child('cluster') });
    } catch (e) {
      auth?.close();
      wsServer?.close();
      for (const srv of [server, tlsServer, wsHttp]) srv?.close();
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await destroyPersistence();
      throw e;
    }
  }
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
  let metricsHttp: Awaited<ReturnType<typeof serveMetrics>> | undefined;

  let closed = false;
  const running: RunningBroker = {
    port,
    host,
    url,
    aedes,
    updateServer,
    auth,
    tlsUrl,
    wsUrl,
    metricsUrl: undefined,
    async close() {
      if (closed) return;
      closed = true;
      await metricsHttp?.close();
      metrics?.close();
      auth?.close();
      if (updateServer) await updateServer.stop();
      if (transport) await transport.close();
      await lease?.release();
      wsServer?.close();
      await Promise.all([server, tlsServer, wsHttp].filter((x) => x !== undefined).map((srv) => new Promise<void>((resolve) => srv.close(() => resolve()))).concat([
        Promise.resolve().then(() => {
          for (const s of sockets) s.destroy();
        }),
      ]));
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await destroyPersistence();
      await dirLock.release();
      log.info('broker stopped');
    },
  };
  if (metrics && o.http) {
    try {
      await metrics.loadRetained();
      // Beside /metrics, the dashboard page (GET /), fed in the browser over the WebSocket listener.
      const page = liveDashboard({ wsPort: wsUrl ? Number(new URL(wsUrl).port) : undefined, prefix: o.prefix, log: log.child('dashboard') });
      metricsHttp = await serveMetrics(metrics, { port: o.http.port, host: o.http.host ?? host, log, page });
    } catch (e) {
      // A metrics port already taken must not leave a half-started broker behind.
      await running.close();
      throw e;
    }
    running.metricsUrl = metricsHttp.url;
    log.info('metrics listener', { url: metricsHttp.url });
  }
  return running;
}
