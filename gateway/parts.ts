import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { MqttBrokerOptions } from '../broker/broker.ts';
import { Topics } from '../protocol/topics.ts';
import { ContentStore } from '../server/content-store.ts';
import type { MqttTransportOptions } from '../transport/mqtt.ts';
import { readJson } from '../util/fs-atomic.ts';
import { VERSION } from '../util/version.ts';
import type { ResolvedGatewayConfig } from './defaults.ts';
import type { GatewayOptions } from './options.ts';
import type { BudgetLedger } from './policy.ts';

/**
 * How each part of a gateway (GatewayParts) is made from its options: the
 * composition root (nodes/gateway-node.ts) starts them as named steps and
 * builds the Gateway on them.
 */

/** The gateway's topics; throws on a site name that cannot be a topic level. */
export function gatewayTopics(o: Pick<GatewayOptions, 'prefix' | 'site'>): Topics {
  const topics = new Topics(o.prefix);
  topics.gatewayStatus(o.site); // checks the site name
  return topics;
}

/** The budget ledger kept in `DIR/budget.json` (empty when there is none yet); creates DIR. */
export async function loadLedger(o: Pick<GatewayOptions, 'dataDir'>): Promise<BudgetLedger> {
  await fs.mkdir(o.dataDir, { recursive: true });
  return (await readJson<BudgetLedger>(path.join(o.dataDir, 'budget.json'))) ?? {};
}

/** The site broker's options: a broker with its own update server in `DIR/site`. */
export function siteBrokerOptions(o: ResolvedGatewayConfig): MqttBrokerOptions {
  return {
    port: o.listen,
    host: o.host,
    dataDir: path.join(o.dataDir, 'site'),
    persistence: o.persistence,
    prefix: o.prefix,
    auth: o.auth,
    tls: o.tls,
    log: o.log.child('site'),
  };
}

/** The site store (`DIR/site/store`), opened. */
export async function openSiteStore(o: Pick<GatewayOptions, 'dataDir'>): Promise<ContentStore> {
  const store = new ContentStore(path.join(o.dataDir, 'site', 'store'));
  await store.init();
  return store;
}

/** The upstream connection's options: its last will says the gateway lost the link. */
export function upstreamOptions(o: ResolvedGatewayConfig, topics: Topics): MqttTransportOptions {
  return {
    url: o.upstream,
    clientId: `fleet-gateway-${o.site}`,
    will: {
      topic: topics.gatewayStatus(o.site),
      payload: JSON.stringify({
        site: o.site,
        gateway: VERSION,
        upstream: { state: 'down', connects: 0, since: null },
        downloads: 'idle',
        waiting: 'upstream-down',
        message: 'the gateway lost its upstream connection (last will)',
      }),
      retain: true,
      qos: 1,
    },
    keepaliveSeconds: o.keepaliveSeconds,
    // The status file breaks the uplink down by topic kind (request, gateway-status, status, presence).
    labelTopic: (t) => topics.parse(t)?.kind ?? 'other',
    reconnectMinMs: o.reconnectMinMs,
    reconnectMaxMs: o.reconnectMaxMs,
  };
}
