import { withDefaults } from '../platform/defaults.ts';
import type { GatewayOptions } from './options.ts';

/**
 * Every default of the site gateway (gateway/), in one table: the gateway node
 * resolves its config from it once (resolveGatewayConfig) and `fleet gateway
 * --help` shows these values (cli/gateway-command.ts).
 */
export const GATEWAY_DEFAULTS = {
  /** The site broker's persistence. */
  persistence: 'level',
  /** The upstream MQTT connection. */
  keepaliveSeconds: 30,
  reconnectMinMs: 500,
  reconnectMaxMs: 15_000,
  /** How often the window and budget are checked and DIR/status.json refreshed. */
  tickMs: 1000,
  /**
   * While fetching, the status goes upstream at each such share of the payload (and on every state
   * change, and every 30 s): half-way, as a device's (DEVICE_DEFAULTS.progressStep); a quarter before
   * issue 20's fifth pass (two statuses of ~750 B more per fetch on the uplink).
   */
  statusProgressStep: 0.5,
  /** How long a paused transfer may drain before it stops. */
  drainMs: 3000,
  /** The upstream transfer (as the device's, docs/protocol.md §4.2). */
  maxWindow: 32,
  idleMs: 10_000,
  stallMs: 60_000,
  maxBadCopies: 3,
  /** On stop: longest wait for queued statuses to drain upstream. */
  relayDrainTimeoutMs: 30_000,
  /** Device statuses relayed upstream at once. */
  statusInFlight: 16,
  /**
   * A device status or presence waits this long on the gateway before it goes up (with what came
   * meanwhile), so a site device's passing states over the LAN go up as its newest only (issue 20).
   */
  relayLingerMs: 1000,
} as const;

type Defaulted = keyof typeof GATEWAY_DEFAULTS;

/** A gateway's config with every default filled in: what the gateway runs with. */
export type ResolvedGatewayConfig = GatewayOptions & Required<Pick<GatewayOptions, Defaulted>>;

/** The config the gateway runs with: what was given, the table's value for what was not. */
export function resolveGatewayConfig(o: GatewayOptions): ResolvedGatewayConfig {
  return withDefaults(o, GATEWAY_DEFAULTS);
}
