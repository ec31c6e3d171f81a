import path from 'node:path';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import { gatewayNode, type GatewayNodeOptions } from '../../nodes/gateway-node.ts';
import { parseGatewayStatus, type GatewayStatus } from '../../gateway/status.ts';
import { silentLogger } from '../../util/log.ts';
import { connect, topics, type Fixture } from '../support/harness.ts';
import { until } from '../support/wait.ts';

export const SITE = 'site-a';

/** A real gateway in this process, its site broker on an ephemeral loopback port. */
export async function startGateway(f: Fixture, o: Partial<GatewayNodeOptions> = {}, upstream = f.url): Promise<Gateway> {
  const gw = gatewayNode({
    upstream,
    listen: 0,
    host: '127.0.0.1',
    dataDir: path.join(f.dir, 'gateway'),
    site: SITE,
    persistence: 'memory',
    tickMs: 200,
    idleMs: 1000,
    stallMs: 30_000,
    reconnectMinMs: 200,
    reconnectMaxMs: 1000,
    log: silentLogger,
    ...o,
  });
  await gw.start();
  return gw;
}

/** Wait until `pred` holds for the gateway's status (polled). */
export function untilGateway(gw: Gateway, pred: (s: GatewayStatus) => boolean, timeoutMs = 30_000, what = 'gateway status'): Promise<GatewayStatus> {
  return until(() => gw.status(), { what, timeoutMs, accept: pred });
}

/** The gateway statuses retained/published upstream, as an operator sees them. */
export async function watchGatewayStatus(f: Fixture): Promise<{ latest: () => GatewayStatus | undefined; all: GatewayStatus[] }> {
  const all: GatewayStatus[] = [];
  const t = await connect(f, `gw-watch-${Math.random().toString(36).slice(2)}`);
  t.onMessage((topic, payload) => {
    if (topics.parse(topic)?.kind !== 'gatewayStatus') return;
    const s = parseGatewayStatus(payload);
    if (s) all.push(s);
  });
  await t.subscribe(topics.gatewayStatus(SITE), 1);
  return { latest: () => all[all.length - 1], all };
}
