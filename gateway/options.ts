import type { Aedes } from 'aedes';
import type { BrokerAuth } from '../broker/auth.ts';
import type { MqttBrokerOptions } from '../broker/broker.ts';
import type { Clock } from '../platform/clock.ts';
import type { ContentStore } from '../server/content-store.ts';
import type { MqttTransport } from '../transport/mqtt.ts';
import type { Logger } from '../util/log.ts';
import type { BudgetLedger, DownloadWindow } from './policy.ts';

/*
 * What a site gateway is given: its options (resolved against gateway/defaults.ts), the parts it
 * is built on (started before it by nodes/gateway-node.ts), and the warning for an open site broker.
 */

/** The site broker the gateway's devices connect to: a broker with its own update server (nodes/broker-node.ts). */
export interface SiteBroker {
  url: string;
  port: number;
  host: string;
  aedes: Aedes;
  auth: BrokerAuth | undefined;
  close(): Promise<void>;
}

export interface GatewayOptions {
  /** The central broker, `mqtt://[user:pass@]host:port` (mqtts:// with the CLI's TLS options). */
  upstream: string;
  /** Port of the site broker the devices connect to (0: any free port). */
  listen: number;
  host?: string;
  dataDir: string;
  site: string;
  /** Bytes per calendar month over the upstream link (in and out); downloads pause past it. */
  budgetBytes?: number;
  /** Daily window (local time) in which upstream downloads may run. */
  window?: DownloadWindow;
  /** Groups (and models) to mirror besides those learned from the site's devices. */
  groups?: string[];
  /**
   * Most group/model pairs learned from the site's devices. With `auth` the pairs come from the
   * device users' logins (default: no cap); without it from what devices say, only when this is
   * given (default 0: mirror only `groups`/`models`).
   */
  learnGroups?: number;
  models?: string[];
  prefix?: string;
  persistence?: 'level' | 'memory';
  /**
   * The site broker's users file (as `fleet broker --auth`): the site's devices log in and the
   * ACL applies to them. Without it the site broker trusts the site's network.
   */
  auth?: string;
  /** A TLS listener for the site's devices beside the plain one (as `fleet broker --tls-port`). */
  tls?: MqttBrokerOptions['tls'];
  /** Wall-clock time for the window and the budget month (tests inject one). */
  now?: () => number;
  /** Timers of the transfer (default: the system clock). */
  clock?: Clock;
  /** After a pause for the window or the budget, chunks already asked for are still taken for this long (default 3000 ms). */
  drainMs?: number;
  /** How often the policy is re-evaluated (default 1000 ms). */
  tickMs?: number;
  /** While fetching, the status goes upstream when the fetch passes another this much of a payload (default 0.5), besides state changes and every 30 s. */
  statusProgressStep?: number;
  /** Upstream transfer tuning (as the device's --window, --idle-ms). */
  maxWindow?: number;
  idleMs?: number;
  stallMs?: number;
  /** Bad copies of one chunk before the upstream source is declared corrupt. */
  maxBadCopies?: number;
  /** Device statuses relayed upstream at once. */
  statusInFlight?: number;
  /** How long a relayed status waits before it goes up, ms (passing states superseded meanwhile are dropped). */
  relayLingerMs?: number;
  /** relayDrained()'s wait when none is given, ms. */
  relayDrainTimeoutMs?: number;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  keepaliveSeconds?: number;
  log: Logger;
}

/** The error a site broker on `host` without a users file logs at start; undefined on loopback or with auth. */
export function openSiteWarning(host: string, auth: string | undefined): string | undefined {
  if (auth || host === 'localhost' || host === '::1' || /^127\./.test(host)) return undefined;
  return `the site broker listens on ${host}, beyond loopback, without --auth: any client on the network may publish and subscribe as any device (give it --auth FILE)`;
}

/** The parts a gateway is built from, started before it (nodes/gateway-node.ts's steps). */
export interface GatewayParts {
  /** This month's (and earlier months') upstream bytes, as kept in `DIR/budget.json`. */
  ledger: BudgetLedger;
  site: SiteBroker;
  /** The site store the site broker's update server serves from (`DIR/site/store`). */
  store: ContentStore;
  /** The connection upstream, its last will saying the gateway lost it; the gateway closes it (closeUpstream). */
  upstream: MqttTransport;
}
