import { resolveBrokerConfig, type ResolvedBrokerConfig } from './defaults.ts';
import net from 'node:net';
import tls from 'node:tls';
import http from 'node:http';
import { WebSocketServer, createWebSocketStream } from 'ws';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import { Aedes, type Client } from 'aedes';
import { Level } from 'level';
import { connectableHost, listen } from '../platform/listen.ts';
import type { Step } from '../platform/steps.ts';
import { Topics } from '../protocol/topics.ts';
import type { Logger } from '../util/log.ts';
import { DirLock } from '../util/dir-lock.ts';
import { BrokerAuth } from './auth.ts';
import type { Role } from './acl.ts';
import { openCluster, type ClusterParts } from './cluster.ts';
import type { ChunkRouting } from './cluster-emitter.ts';
import { guardStreams, type Persistence } from './persistence-streams.ts';
import { exactRetainedLookups, framesFilterDevice, skipFrameLookups } from './retained-lookups.ts';
import { connectRules, limitPackets, PACKET_LIMITS } from './connection-limits.ts';
import { stampPresence } from './presence-stamp.ts';
import { InternalError, UsageError } from '../platform/errors.ts';
import { systemClock } from '../platform/clock.ts';
import { hostCongestionControl, ssAvailable } from '../platform/tcp-senders.ts';
import { UNPIN_DEFAULTS, unpinDecision, watchPinnedSenders, type UnpinWatch } from './pinned-senders.ts';

const require = createRequire(import.meta.url);
// The async persistence class itself: Aedes 1.x requires an async setup().
const AsyncLevelPersistence = require('aedes-persistence-level/asyncPersistence.js') as new (db: unknown) => Persistence;

/** The MQTT broker's own options: Aedes, its persistence, its users and its listeners. */
export interface MqttBrokerOptions {
  port?: number;
  host?: string;
  /** Broker persistence (and, in a broker node, the update server's content store) live here. */
  dataDir: string;
  persistence?: 'level' | 'memory';
  /**
   * `redis://HOST:PORT`: one node of a cluster (broker/cluster.ts). Redis holds
   * sessions and retained messages and carries publishes between nodes; `persistence` is ignored.
   */
  cluster?: string;
  prefix?: string;
  /**
   * Users file (see broker/users-file.ts). With it every client must log in,
   * devices as client id `fleet-device-{name}`, and broker/acl.ts decides
   * every publish and subscription. Without it the broker is open (and says so).
   */
  auth?: string;
  /** How often the users file is checked for changes (default 1000 ms). */
  authPollMs?: number;
  /** In a cluster: the update-server lease is held this long unless renewed (ms). */
  clusterLeaseTtlMs?: number;
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
  /**
   * Close a TCP connection the host's BBR pins at a steady trickle, so the client reconnects on a
   * fresh one (broker/pinned-senders.ts; Linux with `ss`). `auto` (`fleet broker`'s default): when
   * the host's congestion control is bbr and `ss` is there (`unpinDecision`); true or settings: on;
   * absent or false: off. `read` replaces running `ss` (tests).
   */
  unpinSenders?: boolean | 'auto' | { everyMs?: number; holdMs?: number; cooldownMs?: number; minDrainMs?: number; read?: () => Promise<string> };
  log: Logger;
}

/** A listening server and the connections it accepted (destroyed when it stops). */
interface Listener {
  server: net.Server;
  sockets: Set<net.Socket>;
  /** The WebSocket server on top of an HTTP listener. */
  ws?: WebSocketServer;
}

/**
 * What the broker's steps build, part by part (a part is set once its step
 * has started). A node (nodes/broker-node.ts) adds its own parts beside them.
 */
export interface BrokerParts {
  /** The broker's one resolved config (its options over broker/defaults.ts's table). */
  readonly o: ResolvedBrokerConfig;
  readonly log: Logger;
  readonly host: string;
  readonly topics: Topics;
  /** The client id an in-process update server logs in with (with auth, by a credential that exists only in this process). */
  readonly internalClientId: string;
  /** Called with every TCP and TLS connection accepted (a node's metrics count its bytes). */
  onSocket?: (socket: net.Socket) => void;
  dirLock?: DirLock;
  /** In a cluster, set by a node that runs an update server: its devices' chunk traffic stays on the node. */
  chunkRouting?: ChunkRouting;
  cluster?: ClusterParts;
  persistence?: Persistence;
  auth?: BrokerAuth;
  aedes?: Aedes;
  tcp?: Listener;
  port?: number;
  url?: string;
  tls?: Listener;
  tlsUrl?: string;
  ws?: Listener;
  wsUrl?: string;
  /** The Aedes client of each accepted connection (its id once logged in). */
  readonly clients: WeakMap<object, Client>;
  /** One watch per listener (`--unpin-senders`). */
  unpin?: UnpinWatch[];
}

/** Brokers started in this process so far: a second one's update server needs a client id of its own (nodes of one cluster in one test process). */
let brokersStarted = 0;

export function brokerParts(o: MqttBrokerOptions): BrokerParts {
  const n = ++brokersStarted;
  return { o: resolveBrokerConfig(o), log: o.log, host: o.host ?? '127.0.0.1', topics: new Topics(o.prefix), internalClientId: `fleet-update-server-${process.pid}${n > 1 ? `-${n}` : ''}`, clients: new WeakMap() };
}

/** A part an earlier step set; its absence is a bug in the order of the steps. */
export function part<T>(value: T | undefined, name: string): T {
  if (value === undefined) throw new InternalError('step-order', `bug: the ${name} step has not run`);
  return value;
}

/** One broker per data directory: a second one is named, not left to fail inside LevelDB. */
const dataDir: Step<BrokerParts> = {
  name: 'data directory',
  async start(p) {
    await fs.mkdir(p.o.dataDir, { recursive: true });
    p.dirLock = await DirLock.acquire(p.o.dataDir, 'fleet broker');
  },
  stop: (p) => p.dirLock?.release(),
};

const persistence: Step<BrokerParts> = {
  name: 'persistence',
  async start(p) {
    if (p.o.cluster) {
      p.cluster = await openCluster(p.o.cluster, p.log.child('cluster'), p.topics, p.chunkRouting);
      p.persistence = p.cluster.persistence;
    } else if ((p.o.persistence ?? 'level') === 'level') {
      const db = new Level(path.join(p.o.dataDir, 'broker-db'));
      await db.open();
      const raw = new AsyncLevelPersistence(db);
      exactRetainedLookups(raw, db);
      p.persistence = guardStreams(raw, p.log.child('persistence'));
      // A device's frames subscription would read every retained message on disk (a status and a presence per device).
      skipFrameLookups(p.persistence, (f) => framesFilterDevice(p.topics, f) !== undefined);
    }
  },
  async stop(p) {
    if (p.cluster) await p.cluster.close();
    else if (p.persistence) await p.persistence.destroy();
  },
};

const auth: Step<BrokerParts> = {
  name: 'users file',
  when: (p) => p.o.auth !== undefined,
  async start(p) {
    p.auth = await BrokerAuth.open({ file: p.o.auth!, topics: p.topics, log: p.log.child('auth'), internalClientId: p.internalClientId, pollMs: p.o.authPollMs });
  },
  stop: (p) => p.auth?.close(),
};

const aedes: Step<BrokerParts> = {
  name: 'aedes',
  async start(p) {
    const authHooks = p.auth?.hooks();
    const log = p.log;
    const broker = await Aedes.createBroker({
      persistence: p.persistence,
      mq: p.cluster?.mq,
      id: p.cluster?.brokerId ?? `fleet-broker-${process.pid}`,
      ...authHooks,
      authorizePublish: stampPresence(p.topics, authHooks?.authorizePublish),
      ...connectRules(authHooks, log.child('connect')),
    });
    if (p.auth) p.auth.attach(broker);
    else log.warn('broker is unauthenticated: any client may publish and subscribe to anything (start it with --auth FILE)');
    broker.on('clientError', (client, err) => log.debug('client error', { client: client?.id, error: err.message }));
    p.aedes = broker;
  },
  stop: (p) => new Promise<void>((resolve) => part(p.aedes, 'aedes').close(() => resolve())),
};

/** Hand a connection to Aedes: packets over the limit for the connection's phase and role are cut before Aedes buffers them. */
function handle(p: BrokerParts, stream: net.Socket, req?: http.IncomingMessage): void {
  const client = part(p.aedes, 'aedes').handle(stream, req);
  // By the stream, and for WebSocket by the TCP socket under it too (what `--unpin-senders` sees).
  p.clients.set(stream, client);
  if (req) p.clients.set(req.socket, client);
  const roleOf = (c: Client): Role | undefined => p.auth?.roleOf(c);
  limitPackets(stream, client, roleOf, p.auth !== undefined, p.log.child('limits'));
}

/** Keep a connection until it closes (destroyed when its listener stops). */
function track(sockets: Set<net.Socket>, socket: net.Socket): void {
  socket.setNoDelay(true);
  sockets.add(socket);
  socket.on('close', () => sockets.delete(socket));
}

/** Accept TCP and TLS connections: TCP_NODELAY, counted by the node, handed to Aedes. */
function acceptor(p: BrokerParts, sockets: Set<net.Socket>): (socket: net.Socket) => void {
  return (socket) => {
    track(sockets, socket);
    p.onSocket?.(socket);
    handle(p, socket);
  };
}

async function stopListener(l: Listener | undefined): Promise<void> {
  if (!l) return;
  l.ws?.close();
  await Promise.all([
    new Promise<void>((resolve) => l.server.close(() => resolve())),
    Promise.resolve().then(() => {
      for (const s of l.sockets) s.destroy();
    }),
  ]);
}

const tcp: Step<BrokerParts> = {
  name: 'tcp listener',
  async start(p) {
    const sockets = new Set<net.Socket>();
    const server = net.createServer(acceptor(p, sockets));
    p.port = await listen(server, p.o.port, p.host);
    p.tcp = { server, sockets };
    p.url = `mqtt://${connectableHost(p.host)}:${p.port}`;
    p.log.info('broker listening', { url: p.url, persistence: p.o.cluster ? 'redis' : (p.o.persistence ?? 'level'), auth: p.o.auth ?? null });
  },
  stop: (p) => stopListener(p.tcp),
};

const tlsListener: Step<BrokerParts> = {
  name: 'tls listener',
  when: (p) => p.o.tls !== undefined,
  async start(p) {
    const o = p.o.tls!;
    const mutual = o.ca !== undefined;
    const sockets = new Set<net.Socket>();
    const server = tls.createServer({ cert: o.cert, key: o.key, ca: o.ca, requestCert: mutual, rejectUnauthorized: mutual }, acceptor(p, sockets));
    server.on('tlsClientError', (e) => p.log.warn('TLS handshake refused', { error: e.message }));
    const host = o.host ?? p.host;
    const port = await listen(server, o.port, host);
    p.tls = { server, sockets };
    p.tlsUrl = `mqtts://${connectableHost(host)}:${port}`;
    p.log.info('TLS listener', { url: p.tlsUrl, clientCertificates: mutual });
  },
  stop: (p) => stopListener(p.tls),
};

const wsListener: Step<BrokerParts> = {
  name: 'websocket listener',
  when: (p) => p.o.ws !== undefined,
  async start(p) {
    const o = p.o.ws!;
    const server = http.createServer((_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' });
      res.end('MQTT over WebSocket only\n');
    });
    const host = o.host ?? p.host;
    // Listening first: a WebSocketServer re-emits its HTTP server's errors (a port taken) where nothing listens for them.
    const port = await listen(server, o.port, host);
    const sockets = new Set<net.Socket>();
    // ws buffers a whole message before handing it on: no message over the largest packet a logged-in operator may send.
    const ws = new WebSocketServer({ server, maxPayload: PACKET_LIMITS.operator, handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : false) });
    ws.on('connection', (socket, req) => {
      track(sockets, req.socket as net.Socket);
      handle(p, createWebSocketStream(socket) as unknown as net.Socket, req);
    });
    p.ws = { server, sockets, ws };
    p.wsUrl = `ws://${connectableHost(host)}:${port}`;
    p.log.info('WebSocket listener', { url: p.wsUrl });
  },
  stop: (p) => stopListener(p.ws),
};

const unpinSenders: Step<BrokerParts> = {
  name: 'pinned-sender watch',
  when: (p) => p.o.unpinSenders !== undefined && p.o.unpinSenders !== false,
  start(p) {
    const given = typeof p.o.unpinSenders === 'object' ? p.o.unpinSenders : {};
    if (p.o.unpinSenders === 'auto') {
      // ss is looked for (a spawn) only where it would be used.
      const congestion = hostCongestionControl();
      const d = unpinDecision('auto', { congestion, ss: congestion === 'bbr' && ssAvailable() });
      p.log.info(d.on ? 'pinned-sender watch on' : 'pinned-sender watch off', { why: d.why });
      if (!d.on) return;
    } else if (!given.read && !ssAvailable()) throw new UsageError('bad-options', '--unpin-senders needs Linux and the ss command (iproute2: apt-get install iproute2)');
    // Every listener's connections: TCP, TLS and WebSocket all ride on the host's TCP.
    const listeners = [
      { l: part(p.tcp, 'tcp listener'), url: part(p.url, 'tcp listener') },
      { l: p.tls, url: p.tlsUrl },
      { l: p.ws, url: p.wsUrl },
    ];
    p.unpin = listeners.flatMap(({ l, url }) =>
      l && url ? [watchPinnedSenders({ ...given, port: Number(new URL(url).port), sockets: l.sockets, clientOf: (s) => p.clients.get(s)?.id, clock: systemClock, log: p.log.child('unpin') })] : [],
    );
    p.log.info('resetting connections the host pins at a trickle', { listeners: p.unpin.length, holdMs: given.holdMs ?? UNPIN_DEFAULTS.holdMs, cooldownMs: given.cooldownMs ?? UNPIN_DEFAULTS.cooldownMs });
  },
  stop: (p) => p.unpin?.forEach((w) => w.stop()),
};

/**
 * The broker's steps by name: Aedes (MQTT 3.1.1) with on-disk persistence by
 * default (or a cluster's Redis), the users file and ACLs, and TCP (TCP_NODELAY
 * on every socket), TLS and WebSocket listeners. A node lists them in order,
 * with its own parts between them (nodes/broker-node.ts).
 */
export const brokerSteps = { dataDir, persistence, auth, aedes, tcp, unpinSenders, tls: tlsListener, ws: wsListener } as const;
