/** Every default of the site gateway (gateway/), in one table; `fleet gateway --help` shows them. */
export const GATEWAY_DEFAULTS = {
  /** The upstream MQTT connection. */
  keepaliveSeconds: 30,
  reconnectMinMs: 500,
  reconnectMaxMs: 15_000,
  /** How often the window and budget are checked and DIR/status.json refreshed. */
  tickMs: 1000,
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
} as const;
