/** Every default of an MQTT connection (transport/mqtt.ts), in one table; a process's own table may override them (device/defaults.ts). */
export const MQTT_DEFAULTS = {
  /** Longest wait for unacknowledged publishes on close. */
  closeGraceMs: 2000,
  /** First reconnect delay; doubles with jitter up to reconnectMaxMs. */
  reconnectMinMs: 500,
  reconnectMaxMs: 30_000,
  keepaliveSeconds: 60,
  connectTimeoutMs: 30_000,
  /** How often a subscribe that must be granted (subscribe-granted.ts) looks for the connection to be back, ms. */
  subscribeRetryPollMs: 100,
} as const;
