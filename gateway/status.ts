import type { WaitReason } from './policy.ts';
import type { MirroredRelease } from './mirror.ts';
import type { FetchState } from './upstream-fetcher.ts';
import type { LearningSummary } from './group-watch.ts';

/** The gateway's own status: JSON, retained on `fleet/gateways/{site}/status`. */
export interface GatewayStatus {
  site: string;
  gateway: string;
  upstream: {
    state: 'connected' | 'down';
    /** Successful connections since start. */
    connects: number;
    /** When the link last changed state (ISO 8601). */
    since: string | null;
  };
  /** `running`: fetching from upstream now; `waiting`: something to fetch but not allowed now (`waiting` says why). */
  downloads: 'idle' | 'running' | 'waiting';
  waiting: WaitReason | null;
  message: string | null;
  /** When downloads may resume by themselves (window opens, next month), if known. */
  resumesAt: string | null;
  fetched: {
    /** Payload bytes received from upstream (verified new chunks) since the gateway started. */
    payloadBytes: number;
    /** What the upstream MQTT socket carried since the gateway started (what the link paid). */
    wireBytesIn: number;
    wireBytesOut: number;
  };
  budget: { month: string; usedBytes: number; limitBytes: number | null };
  window: string | null;
  /** Payloads held on the site (served to its devices). */
  cache: Array<{ updateId: string; model: string; size: number }>;
  /** Payloads being fetched (bytes held on disk so far). */
  fetching: FetchState[];
  releases: MirroredRelease[];
  /** Statuses waiting on disk, delivered, and not sent because a newer one of the same device followed (passing states). */
  relay: { queued: number; relayed: number; merged?: number };
  /** Devices the site broker has seen a status from. */
  devices: number;
  /** Groups learned from the site's devices: how, how many, the cap, and pairs refused at the cap. */
  learning: LearningSummary;
  time: string;
}

/**
 * `DIR/status.json`: the status, and what only the local file carries (never published upstream):
 * the upstream MQTT packets the gateway wrote since start, by type (`publish <topic kind>` for
 * publishes), for breaking its uplink down.
 */
export interface GatewayFileStatus extends GatewayStatus {
  upstreamSent?: Record<string, { packets: number; bytes: number }>;
  /** When the last payload fetched from upstream was held (ms since the epoch), and the upstream socket's figures then. */
  /** When a release last arrived from upstream (ms since the epoch). */
  lastReleaseAt?: number;
  lastStored?: { at: number; upstreamSent: Record<string, { packets: number; bytes: number }>; wireBytesOut: number };
}

export const GATEWAY_WAIT_REASONS: Record<WaitReason, string> = {
  'window-closed': 'outside the download window',
  'budget-exhausted': 'the monthly data budget is used up',
  'upstream-down': 'the upstream broker is unreachable',
};

export function parseGatewayStatus(payload: Uint8Array): GatewayStatus | null {
  try {
    const j = JSON.parse(new TextDecoder().decode(payload)) as GatewayStatus;
    return typeof j === 'object' && j !== null && typeof j.site === 'string' && typeof j.upstream === 'object' ? j : null;
  } catch {
    return null;
  }
}
