import { part } from '../broker/broker.ts';
import { resolveGatewayConfig, type ResolvedGatewayConfig } from '../gateway/defaults.ts';
import { Gateway } from '../gateway/gateway.ts';
import { openSiteWarning, type GatewayOptions, type SiteBroker } from '../gateway/options.ts';
import { gatewayTopics, loadLedger, openSiteStore, siteBrokerOptions, upstreamOptions } from '../gateway/parts.ts';
import type { BudgetLedger } from '../gateway/policy.ts';
import type { GatewayStatus } from '../gateway/status.ts';
import { startSteps, type Started, type Step } from '../platform/steps.ts';
import type { Topics } from '../protocol/topics.ts';
import type { ContentStore } from '../server/content-store.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { startBroker } from './broker-node.ts';
import { urlWithoutLogin } from '../util/url-login.ts';

export type GatewayNodeOptions = GatewayOptions;

/** What the node's steps start, in order; the last builds the Gateway on the others. */
interface GatewayNodeParts {
  /** The node's one resolved config (its options over gateway/defaults.ts's table), resolved at construction. */
  readonly o: ResolvedGatewayConfig;
  readonly topics: Topics;
  ledger?: BudgetLedger;
  site?: SiteBroker;
  store?: ContentStore;
  upstream?: MqttTransport;
  gateway?: Gateway;
}

/** The gateway node, in the order it starts (and, reversed, stops); a step that fails undoes the ones before it. */
const GATEWAY_NODE: readonly Step<GatewayNodeParts>[] = [
  {
    name: 'budget ledger',
    start: async (p) => {
      p.ledger = await loadLedger(p.o);
    },
  },
  {
    name: 'site broker',
    start: async (p) => {
      const site = (p.site = await startBroker(siteBrokerOptions(p.o)));
      const exposed = openSiteWarning(site.host, p.o.auth);
      // Loud on purpose: without --auth, anything on the site's network may pose as any device.
      if (exposed) p.o.log.error(exposed, { host: site.host, port: site.port });
    },
    stop: (p) => p.site?.close(),
  },
  {
    name: 'site store',
    start: async (p) => {
      p.store = await openSiteStore(p.o);
    },
    stop: (p) => p.store?.close(),
  },
  {
    name: 'upstream connection',
    start: (p) => {
      p.upstream = MqttTransport.start(upstreamOptions(p.o, p.topics));
    },
    // Once built, the gateway closes it (saying "gateway stopped" upstream first).
    stop: (p) => (p.gateway ? p.gateway.closeUpstream() : p.upstream?.close()),
  },
  {
    name: 'gateway',
    start: async (p) => {
      p.gateway = new Gateway(p.o, { ledger: part(p.ledger, 'budget ledger'), site: part(p.site, 'site broker'), store: part(p.store, 'site store'), upstream: part(p.upstream, 'upstream connection') });
      await p.gateway.start();
    },
    stop: (p) => p.gateway?.close(),
  },
];

/**
 * `fleet gateway`: a broker node (Aedes and its own update server,
 * nodes/broker-node.ts) as the site broker, the site store, the upstream
 * connection, and the Gateway (gateway/gateway.ts) built on them.
 * Not started: `start()` runs the steps, `close()` stops them in reverse.
 */
export class GatewayNode {
  private readonly parts: GatewayNodeParts;
  private started: Started | undefined;
  private stopping: Promise<void> | undefined;

  constructor(private readonly o: GatewayNodeOptions) {
    this.parts = { o: resolveGatewayConfig(o), topics: gatewayTopics(o) };
  }

  async start(): Promise<void> {
    this.started = await startSteps(GATEWAY_NODE, this.parts, this.o.log);
    this.o.log.info('gateway started', { site: this.o.site, url: this.url, upstream: urlWithoutLogin(this.o.upstream) });
  }

  /** Stops the started steps in reverse, once (later calls share the first). */
  close(): Promise<void> {
    const started = this.started;
    if (!started) return Promise.resolve();
    this.stopping ??= started.stop().then(() => this.o.log.info('gateway stopped', { site: this.o.site }));
    return this.stopping;
  }

  /** The running gateway (after start()). */
  get gateway(): Gateway {
    return part(this.parts.gateway, 'gateway');
  }
  get url(): string {
    return part(this.parts.site, 'site broker').url;
  }
  get port(): number {
    return part(this.parts.site, 'site broker').port;
  }
  get topics(): Topics {
    return this.parts.topics;
  }
  get fetcherId(): string {
    return this.gateway.fetcherId;
  }
  status(): Promise<GatewayStatus> {
    return this.gateway.status();
  }
  settled(): Promise<void> {
    return this.gateway.settled();
  }
  relayDrained(timeoutMs?: number): Promise<boolean> {
    return this.gateway.relayDrained(timeoutMs);
  }
}

export function gatewayNode(o: GatewayNodeOptions): GatewayNode {
  return new GatewayNode(o);
}
