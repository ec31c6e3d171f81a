/** Every default of the broker node (broker/), in one table; `fleet broker --help` shows them. */
export const BROKER_DEFAULTS = {
  /** MQTT over TCP (IANA's port for MQTT, MQTT 3.1.1 §4.2). */
  port: 1883,
  /** How often the users file is checked for changes. */
  authPollMs: 1000,
  /** The update-server lease in a cluster: held this long unless renewed. */
  clusterLeaseTtlMs: 15_000,
} as const;
