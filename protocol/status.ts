/** The device status contract: JSON, retained on fleet/devices/{id}/status. */
export const DEVICE_STATES = [
  'idle',
  'downloading',
  'verifying',
  'applying',
  'testing',
  'ok',
  'rolled_back',
  'rejected',
  'failed',
] as const;

export type DeviceState = (typeof DEVICE_STATES)[number];

export interface DeviceStatus {
  device: string;
  group: string;
  model: string;
  state: DeviceState;
  /** Digest of the model the device runs now. */
  running: string;
  /** Digest the current release asks for, when there is one. */
  target: string | null;
  /** Release sequence number being processed or last processed. */
  seq: number | null;
  updateId: string | null;
  /** The target is an operator rollback to an earlier version. */
  rollback: boolean;
  /** 0..1 of the current download. */
  progress: number;
  /** Payload bytes held for the current update. */
  bytes: number;
  /** Payload bytes of the current update. */
  totalBytes: number;
  /** Chunks dropped because they did not match the chunk list. */
  badChunks: number;
  /** Payload bytes received per second over the last 10 s of the current download. */
  rateBps: number;
  /** The agent's MQTT socket counters since it started: what the link carried. */
  wire: WireStats | null;
  reason: string | null;
  message: string | null;
  /**
   * The trial of a switched version (A/B boot-counter style): the attempt under way while
   * `testing`, or the one that ended it (`ok`, `rolled_back`); null otherwise, and when the
   * switch is the commit (no health command, no health window).
   */
  attempt?: number | null;
  /** Attempts a trial may take before the device switches back (`--max-attempts`), with `attempt`. */
  maxAttempts?: number | null;
  agent: string;
  /** A random id of the agent process that published it: two agents with one id tell each other apart. */
  instance?: string;
  /** ISO time that agent process started (the younger of two with one id gives way). */
  started?: string;
  /** ISO 8601. */
  time: string;
}

export interface WireStats {
  bytesIn: number;
  bytesOut: number;
  /** Successful connections since start (1 + reconnects). */
  connects: number;
}

export function encodeStatus(s: DeviceStatus): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(s));
}

/** Parses a status payload; null when it is not a status (operators' tools must not crash on junk). */
export function parseStatus(payload: Uint8Array): DeviceStatus | null {
  try {
    const j = JSON.parse(new TextDecoder().decode(payload)) as DeviceStatus;
    if (typeof j !== 'object' || j === null || !DEVICE_STATES.includes(j.state) || typeof j.device !== 'string') return null;
    return j;
  } catch {
    return null;
  }
}

export const PRESENCE_ONLINE = 'online';
export const PRESENCE_OFFLINE = 'offline';
