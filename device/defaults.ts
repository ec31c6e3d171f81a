import type { AgentConfig } from './agent-config.ts';

const MiB = 1024 * 1024;

/**
 * Every default of the device process, in one table: the agent resolves its
 * config from it (resolveAgentConfig) and `fleet device --help` shows these
 * values (cli/device-cli.ts). Times in ms unless the name says otherwise.
 */
export const DEVICE_DEFAULTS = {
  /** Chunks in flight at most; the window adapts below this to the link. */
  window: 32,
  /** Re-ask for outstanding chunks after at least this much silence. */
  idleMs: 10_000,
  /** No new chunk for this long: `download-stalled`, retried later. */
  stallMs: 120_000,
  /** Bad copies of one chunk before the source is declared corrupt. */
  maxBadCopies: 3,
  /** First delay before a failed download is tried again (doubles up to 30 min). */
  retryMs: 30_000,
  /**
   * A status at least this often while downloading (the rate, or how long nothing has come). Each
   * status is ~650 B up a link whose uplink may be a quarter of its downlink or less: 30 s keeps a
   * downloading device well inside the operators' stale limit (staleMs in operator/defaults.ts, 60 s).
   */
  watchdogMs: 30_000,
  /** And a progress status each time the download passes another this much of the payload (half: one at 50 %). */
  progressStep: 0.5,
  /** Allowed clock skew for issue times in the future (docs/protocol.md §5.5). */
  skewSeconds: 300,
  /** The device's caps on what a manifest may ask it to download (docs/protocol.md §5.2 limits). */
  maxPayloadBytes: 256 * MiB,
  maxChunks: 65_536,
  maxChunkBytes: MiB,
  validateTimeoutMs: 120_000,
  healthTimeoutMs: 60_000,
  /** Stay `testing` this long after a healthy check (0: the switch is the commit unless a health command runs). */
  healthWindowMs: 0,
  maxAttempts: 3,
  onSwitchTimeoutMs: 60_000,
  /** One device id, one agent (docs/protocol.md §8.1): how long to wait for the retained status, and takeovers before giving up. */
  guardWaitMs: 3000,
  guardTakeovers: 3,
  /** Least silence (chunks outstanding, nothing arriving) before the device probes the link and reconnects (device/silence-watch.ts). */
  probeSilenceMs: 2000,
  /** Least silence (chunks outstanding) before the device nudges the broker with a PINGREQ (device/silence-watch.ts); doubles while the silence lasts. */
  nudgeMs: 1000,
  /**
   * A download may reconnect on silence once per this many chunks of its payload (at least once):
   * each such reconnect throws away up to a chunk, so this bounds what the watch costs in bytes
   * (a 16-chunk payload: one; 64 chunks: two).
   */
  chunksPerSilentReconnect: 32,
  /**
   * The share of a payload's size the silence watch may spend on its reconnects (the frame part each
   * throws away, the retained messages each brings again): the byte overhead stays within ~1 % of
   * what it is without them (socket bytes ÷ payload ≤ 1.02 at 20 % loss, issue 20).
   */
  silentReconnectBudget: 0.006,
  /** The device's MQTT connection. */
  keepaliveSeconds: 60,
  connectTimeoutSeconds: 30,
  reconnectMaxSeconds: 60,
} as const;

type Defaulted =
  | 'window'
  | 'idleMs'
  | 'stallMs'
  | 'maxBadCopies'
  | 'retryMs'
  | 'watchdogMs'
  | 'progressStep'
  | 'skewSeconds'
  | 'maxPayloadBytes'
  | 'maxChunks'
  | 'maxChunkBytes'
  | 'validateTimeoutMs'
  | 'healthTimeoutMs'
  | 'healthWindowMs'
  | 'maxAttempts';

/** An agent's config with every default filled in: what the agent runs with. */
export type ResolvedAgentConfig = AgentConfig & Required<Pick<AgentConfig, Defaulted>>;

/** The config the agent runs with: what was given, the table's value for what was not. */
export function resolveAgentConfig(c: AgentConfig): ResolvedAgentConfig {
  const d = DEVICE_DEFAULTS;
  return {
    ...c,
    window: c.window ?? d.window,
    idleMs: c.idleMs ?? d.idleMs,
    stallMs: c.stallMs ?? d.stallMs,
    maxBadCopies: c.maxBadCopies ?? d.maxBadCopies,
    retryMs: c.retryMs ?? d.retryMs,
    watchdogMs: c.watchdogMs ?? d.watchdogMs,
    progressStep: c.progressStep ?? d.progressStep,
    skewSeconds: c.skewSeconds ?? d.skewSeconds,
    maxPayloadBytes: c.maxPayloadBytes ?? d.maxPayloadBytes,
    maxChunks: c.maxChunks ?? d.maxChunks,
    maxChunkBytes: c.maxChunkBytes ?? d.maxChunkBytes,
    validateTimeoutMs: c.validateTimeoutMs ?? d.validateTimeoutMs,
    healthTimeoutMs: c.healthTimeoutMs ?? d.healthTimeoutMs,
    healthWindowMs: c.healthWindowMs ?? d.healthWindowMs,
    maxAttempts: c.maxAttempts ?? d.maxAttempts,
  };
}
