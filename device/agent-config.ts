import type { ManifestLimits, TrustFile } from '../protocol/release.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import type { Clock } from '../platform/clock.ts';
import { DEVICE_DEFAULTS } from './defaults.ts';
import type { HealthCheck } from './health.ts';
import type { StagedValidator } from './onnx-validate.ts';
import type { DeviceStorage } from './storage.ts';

/** How a device agent behaves; every field but the identity has a default suited to slow links. */
export interface AgentConfig {
  deviceId: string;
  model: string;
  group: string;
  trust: TrustFile;
  /** Chunks in flight at most (default 32); the window adapts below this to the link. */
  window?: number;
  /** Re-ask for outstanding chunks after at least this long without a byte on the socket (default 10 s; grows with the round trip). */
  idleMs?: number;
  /** A download with no new chunk for this long fails `download-stalled` and is retried later (default 120 s). */
  stallMs?: number;
  /** Bad copies of one chunk before the source is declared corrupt (default 3). */
  maxBadCopies?: number;
  /** First delay before a failed download is tried again; doubles up to 30 min (default 30 s). */
  retryMs?: number;
  /** Publish a status at least this often while downloading, even when nothing arrives (default 30 s). */
  watchdogMs?: number;
  /** A progress status each time the download passes another this much of the payload (0..1; default 0.5). */
  progressStep?: number;
  /** Allowed clock skew for issue times in the future (default 300 s). */
  skewSeconds?: number;
  /** Largest payload accepted (default 256 MiB): a manifest whose limits allow more is refused. */
  maxPayloadBytes?: number;
  /** Most chunks in one payload accepted (default 65,536). */
  maxChunks?: number;
  /** Largest chunk accepted (default 1 MiB). */
  maxChunkBytes?: number;
  /** Run on the staged model before the switch; exit 0 = fit. */
  validateCmd?: string;
  validateTimeoutMs?: number;
  /** Run after the switch; exit 0 = healthy. */
  healthCmd?: string;
  healthTimeoutMs?: number;
  /** Stay `testing` this long after a healthy check before committing: a crash in it is a failed attempt (default 0). */
  healthWindowMs?: number;
  /** Attempts of the trial after a switch (each crash, failed or timed-out health command counts one) before switching back (default 3). */
  maxAttempts?: number;
  /** Told about every switch, with FLEET_MODEL_PATH and FLEET_MODEL_DIGEST in its environment. */
  onSwitchCmd?: string;
  /** The group key that opens sealed payloads (protocol/seal.ts). */
  groupKey?: Uint8Array;
  /** Checks the staged model before the switch, in-process (`--validate-onnx`: device/onnx-validate.ts). */
  validator?: StagedValidator;
}

export interface AgentPorts {
  transport: Transport;
  storage: DeviceStorage;
  clock: Clock;
  health: HealthCheck;
  topics: Topics;
  log: Logger;
  /** The agent stopped itself and the process should end (another agent uses this device id); default: it only stops. */
  onFatal?: (message: string) => void;
}

/** The device's own caps on what a manifest may ask it to download. */
/**
 * The largest MQTT packet the device accepts (transport/packet-limit.ts): a frame of its
 * largest chunk, or the chunk list of its most chunks (32 bytes each), plus room for the
 * frame's fields; never under 1 MiB (releases, the trust file).
 */
export function packetLimitOf(c: Pick<AgentConfig, 'maxPayloadBytes' | 'maxChunks' | 'maxChunkBytes'>): number {
  const caps = capsOf(c);
  return Math.max(1024 * 1024, caps.chunkBytes, caps.chunks * 32) + 64 * 1024;
}

export function capsOf(c: Pick<AgentConfig, 'maxPayloadBytes' | 'maxChunks' | 'maxChunkBytes'>): ManifestLimits {
  const d = DEVICE_DEFAULTS;
  return { payloadBytes: c.maxPayloadBytes ?? d.maxPayloadBytes, chunks: c.maxChunks ?? d.maxChunks, chunkBytes: c.maxChunkBytes ?? d.maxChunkBytes };
}
