import { withDefaults } from '../platform/defaults.ts';
import type { MqttBrokerOptions } from './broker.ts';

/**
 * Every default of the broker node (broker/), in one table: the broker
 * resolves its config from it once (resolveBrokerConfig, in brokerParts) and
 * `fleet broker --help` shows these values.
 */
export const BROKER_DEFAULTS = {
  /** MQTT over TCP (IANA's port for MQTT, MQTT 3.1.1 §4.2). */
  port: 1883,
  /** How often the users file is checked for changes. */
  authPollMs: 1000,
  /** The update-server lease in a cluster: held this long unless renewed. */
  clusterLeaseTtlMs: 15_000,
} as const;

type Defaulted = keyof typeof BROKER_DEFAULTS;

/** A broker's config with every default filled in: what the broker (and its node) runs with. */
export type ResolvedBrokerConfig = MqttBrokerOptions & Required<Pick<MqttBrokerOptions, Defaulted>>;

/** The config the broker runs with: what was given, the table's value for what was not (a node's own options kept). */
export function resolveBrokerConfig<O extends MqttBrokerOptions>(o: O): O & ResolvedBrokerConfig {
  return withDefaults(o, BROKER_DEFAULTS) as O & ResolvedBrokerConfig;
}
