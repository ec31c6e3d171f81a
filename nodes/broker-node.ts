import os from 'node:os';
import path from 'node:path';
import type { Aedes } from 'aedes';
import { brokerParts, brokerSteps, part, type BrokerParts, type MqttBrokerOptions } from '../broker/broker.ts';
import type { ResolvedBrokerConfig } from '../broker/defaults.ts';
import type { BrokerAuth } from '../broker/auth.ts';
import { UpdateServerLease } from '../broker/cluster.ts';
import type { EmitterCounters } from '../broker/cluster-emitter.ts';
import { BrokerMetrics, serveMetrics } from '../operator/broker-metrics.ts';
import { liveDashboard } from '../operator/dashboard-live.ts';
import { startSteps, type Step } from '../platform/steps.ts';
import { ContentStore } from '../server/content-store.ts';
import { UpdateServer } from '../server/update-server.ts';
import { MqttTransport } from '../transport/mqtt.ts';

export interface BrokerOptions extends MqttBrokerOptions {
  /**
   * Run the update server in-process (default true). In a cluster (`cluster`) it
   * then takes the cluster's lease: one per cluster (docs/cluster.md).
   */
  updateServer?: boolean;
  /**
   * The update server's content store (default DATA-DIR/store). In a cluster
   * every node names the same directory (a shared mount): the lease holder
   * writes uploads into it, every node serves its own devices from it.
   */
  store?: string;
  /** An HTTP listener serving `GET /metrics` (Prometheus; operator/broker-metrics.ts). Port 0: any free port. */
  http?: { port: number; host?: string; processMetrics?: boolean };
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
  /** In a cluster: what this node's emitter kept on the node and sent through Redis. */
  clusterCounters: EmitterCounters | undefined;
  /** In a cluster with an update server: whether this node holds the cluster lease now. */
  holdsLease(): boolean;
  /** Whether the pinned-sender watch runs (`unpinSenders`; with `auto`, what the host decided). */
  unpinning: boolean;
  close(): Promise<void>;
}

/** The broker node's parts: the broker's, and the update server and metrics beside it. */
interface NodeParts extends BrokerParts {
  /** The node's one resolved config (brokerParts resolves it over broker/defaults.ts's table). */
  readonly o: BrokerOptions & ResolvedBrokerConfig;
  metrics?: BrokerMetrics;
  lease?: UpdateServerLease;
  transport?: MqttTransport;
  updateServer?: UpdateServer;
  metricsHttp?: Awaited<ReturnType<typeof serveMetrics>>;
}

const withUpdateServer = (p: NodeParts): boolean => p.o.updateServer !== false;

/** Counts clients, bytes and messages from the first connection on (so before the listeners). */
const metrics: Step<NodeParts> = {
  name: 'metrics',
  when: (p) => p.o.http !== undefined,
  start(p) {
    const m = new BrokerMetrics({ aedes: part(p.aedes, 'aedes'), topics: p.topics, updateStats: () => p.updateServer?.stats, processMetrics: p.o.http!.processMetrics });
    p.metrics = m;
    p.onSocket = (s) => m.trackSocket(s);
  },
  stop: (p) => p.metrics?.close(),
};

/** In a cluster, every node with an update server joins the lease: its holder accepts uploads and re-asserts releases. */
const lease: Step<NodeParts> = {
  name: 'cluster lease',
  when: (p) => withUpdateServer(p) && p.o.cluster !== undefined,
  async start(p) {
    p.lease = await UpdateServerLease.join({
      url: p.o.cluster!,
      prefix: p.topics.prefix,
      holder: `${os.hostname()}:${p.host}:${part(p.port, 'tcp listener')}`,
      ttlMs: p.o.clusterLeaseTtlMs,
      log: p.log.child('cluster'),
    });
    p.lease.onTaken = () => p.updateServer?.becamePrimary();
  },
  stop: (p) => p.lease?.release(),
};

/** The update server's connection to this broker over loopback; with auth, by a credential that exists only in this process. */
const updateServerConnection: Step<NodeParts> = {
  name: 'update server connection',
  when: withUpdateServer,
  async start(p) {
    const cred = p.auth?.internalCredential;
    p.transport = await MqttTransport.connect({ url: part(p.url, 'tcp listener'), clientId: p.internalClientId, username: cred?.username, password: cred?.password }, 10_000);
  },
  stop: (p) => p.transport?.close(),
};

const updateServer: Step<NodeParts> = {
  name: 'update server',
  when: withUpdateServer,
  async start(p) {
    const lease = p.lease;
    p.updateServer = new UpdateServer({
      transport: part(p.transport, 'update server connection'),
      store: new ContentStore(p.o.store ?? path.join(p.o.dataDir, 'store')),
      topics: p.topics,
      log: p.log.child('server'),
      primary: lease ? () => lease.held : undefined,
    });
    await p.updateServer.start();
  },
  stop: (p) => p.updateServer?.stop(),
};

/** `GET /metrics` and, beside it, the dashboard page (GET /), fed in the browser over the WebSocket listener. */
const metricsListener: Step<NodeParts> = {
  name: 'metrics listener',
  when: (p) => p.o.http !== undefined,
  async start(p) {
    const m = part(p.metrics, 'metrics');
    await m.loadRetained();
    const page = liveDashboard({ wsPort: p.wsUrl ? Number(new URL(p.wsUrl).port) : undefined, prefix: p.o.prefix, log: p.log.child('dashboard') });
    p.metricsHttp = await serveMetrics(m, { port: p.o.http!.port, host: p.o.http!.host ?? p.host, log: p.log, page });
    p.log.info('metrics listener', { url: p.metricsHttp.url });
  },
  stop: (p) => p.metricsHttp?.close(),
};

const b = brokerSteps;
/** The broker node, in the order it starts (and, reversed, stops). */
export const BROKER_NODE: readonly Step<NodeParts>[] = [b.dataDir, b.persistence, b.auth, b.aedes, metrics, b.tcp, b.tls, b.ws, b.unpinSenders, lease, updateServerConnection, updateServer, metricsListener];

/**
 * `fleet broker`: Aedes on TCP (and TLS, WebSocket) with on-disk persistence
 * by default, the update server connected to it over loopback, and metrics
 * and the dashboard. A step that fails undoes the ones before it.
 */
export async function startBroker(o: BrokerOptions): Promise<RunningBroker> {
  const p: NodeParts = brokerParts(o);
  // In a cluster, a node with an update server answers its own devices on the node; the lease holder also those of nodes without one.
  if (withUpdateServer(p) && o.cluster !== undefined) p.chunkRouting = { servesLocally: true, answersRemote: () => p.lease?.held === true };
  const started = await startSteps(BROKER_NODE, p, p.log);
  let closed = false;
  return {
    port: part(p.port, 'tcp listener'),
    host: p.host,
    url: part(p.url, 'tcp listener'),
    aedes: part(p.aedes, 'aedes'),
    updateServer: p.updateServer,
    auth: p.auth,
    tlsUrl: p.tlsUrl,
    wsUrl: p.wsUrl,
    metricsUrl: p.metricsHttp?.url,
    clusterCounters: p.cluster?.counters,
    holdsLease: () => p.lease?.held === true,
    unpinning: (p.unpin?.length ?? 0) > 0,
    async close() {
      if (closed) return;
      closed = true;
      await started.stop();
      p.log.info('broker stopped');
    },
  };
}
