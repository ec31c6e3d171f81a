import type { HttpRunResult } from './compare-http.ts';
import type { LinkSpec } from './link-profiles.ts';
import type { SiteRunOptions } from './sim-support.ts';
import type { SenderPinned } from './sender-pacing.ts';
import type { SentByType } from './uplink.ts';

/** sim:gateway's options and the figures its one JSON line carries (simulations/gateway.ts). */

export interface GatewaySimOptions extends SiteRunOptions {
  /** Use the userspace proxy even when the kernel link is available. */
  proxy: boolean;
  /** The rest of the link (sim:fleet's flags and profiles); kernel link only. */
  link?: LinkSpec & { profile: string | null };
  /** Also fetch the payload once by HTTP range resume over the same link (kernel link only). */
  compareHttp?: boolean;
  /** The cut schedule of the gateway phase (and HTTP's) and the delay line's jitter come from it. */
  seed?: number;
  /** Leave out phase 2 (the devices directly upstream): the gateway's fetch (and HTTP's) only. */
  skipDirect?: boolean;
}

export interface GatewayHttpComparison {
  http: HttpRunResult;
  /**
   * The release published to an already running gateway (or, if earlier, the gateway's status first
   * showing the fetch) → its status file showing the whole payload (refreshed every ~0.2 s).
   */
  gatewayFetchSeconds: number | null;
  floorSeconds: number | null;
  gatewayFetchOverHttp: number | null;
  gatewayFetchOverFloor: number | null;
  /** Bytes up the link per MiB delivered upstream: the gateway phase (its fetch, and the site's statuses) and HTTP's one fetch. */
  gatewayUpPerMiB: number | null;
  /** The link's uplink from the release to the fetch done (what HTTP's covers: its fetch), per MiB fetched. */
  gatewayUpToFetchedPerMiB: number | null;
  /** Of it, what the gateway's upstream MQTT socket wrote (requests, relayed statuses, its status), per MiB fetched. */
  gatewaySocketUpToFetchedPerMiB: number | null;
  httpUpPerMiB: number;
  gatewayUpToFetchedOverHttp: number | null;
  /** When the cuts came, ms after the release (the same for HTTP, after its start). */
  cutsAtMs: number[];
  /**
   * The gateway's upstream MQTT packets from the release to the fetch done, by type (`publish <topic kind>`
   * for publishes: request, gateway-status, status, presence), from its `DIR/status.json` (`upstreamSent`).
   */
  gatewaySentToFetched: SentByType | null;
  /** Packets up the link from the release to the fetch done (HTTP's: `http.wireUpPackets`). */
  gatewayUpPacketsToFetched: number | null;
}

export interface PhaseResult {
  completed: number;
  seconds: number;
  /** Bytes the site received over the upstream link at the socket level (MQTT bytes, no headers or retransmissions). */
  socketBytesIn: number;
  /** Bytes on the link towards the site (veth counters: IP/TCP headers and retransmissions included; the proxy: bytes delivered). */
  linkBytesDown: number | null;
  /** Bytes on the link from the site (statuses, requests, TCP acknowledgements). */
  linkBytesUp: number | null;
  cuts: number;
  /** Direct phase: what the devices' agents counted (duplicate chunks, reconnects: connects after the first) and the most one device's socket received ÷ one payload. */
  devicesSaw?: { duplicateChunks: number; reconnects: number; quickReconnects: number; maxOverPayload: number };
}

export interface GatewaySimResult {
  link: string;
  devices: number;
  payloadBytes: number;
  gateway: PhaseResult & {
    upstreamFetchedPayloadBytes: number;
    upstreamWireOut: number;
    /** Kernel link: how long the broker's connection to the gateway sat with BBR's rate pinned low (sender-pacing.ts; null without BBR). */ senderPinned: SenderPinned | null;
  };
  /** Null with `skipDirect`. */
  direct: PhaseResult | null;
  /** Gateway phase: socket bytes in over the link ÷ one payload (goal ≤ 1.10). */
  gatewayOverPayload: number;
  /** Direct phase: socket bytes in over the link ÷ one payload (goal ≥ 10 for 10 devices). */
  directOverPayload: number | null;
  /** Gateway phase: link bytes towards the site ÷ one payload (headers and retransmissions included). */
  gatewayLinkDownOverPayload: number | null;
  /** Link bytes towards the site, gateway ÷ direct. */
  linkDownRatio: number | null;
  note: string | null;
  compareHttp?: GatewayHttpComparison;
}
