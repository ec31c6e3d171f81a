/**
 * Every default of the operator's views (operator/), in one table; `fleet dashboard --help` shows them.
 * Each view (dashboard server, terminal and JSON watch, alert sink, browser feed) resolves its
 * settings from it once, when it is made (resolveOperatorConfig), never per use.
 */
export const OPERATOR_DEFAULTS = {
  dashboardPort: 8080,
  /** Server-Sent Events keep-alive comment. */
  sseHeartbeatMs: 15_000,
  /** How often a view is recomputed and sent. */
  refreshMs: 1000,
  /** The terminal view: redraw interval, and how long retained statuses settle before the first draw. */
  terminalIntervalMs: 250,
  terminalSettleMs: 500,
  /** The browser's MQTT reconnect delay. */
  liveReconnectMs: 2000,
  /** A device silent this long is shown stale. */
  staleMs: 60_000,
  /** An alert command is stopped, and a webhook given up, after this long. */
  alertCommandTimeoutMs: 60_000,
  webhookTimeoutMs: 10_000,
  /** Alert webhooks: tries, and the first delay between them (doubles). */
  alertAttempts: 3,
  alertRetryMs: 1000,
} as const;

/** The operator's settings with every default filled in. */
export type OperatorConfig = { readonly [K in keyof typeof OPERATOR_DEFAULTS]: number };

/** The settings a view runs with: what was given (undefined: not given), the table's value for the rest. */
export function resolveOperatorConfig(given: { readonly [K in keyof OperatorConfig]?: number | undefined } = {}): OperatorConfig {
  const out: Record<string, number> = { ...OPERATOR_DEFAULTS };
  for (const [k, v] of Object.entries(given)) if (v !== undefined) out[k] = v;
  return out as OperatorConfig;
}
