/**
 * The server side's TCP senders over a transfer, as the kernel reports them (`ss -tin` in the
 * server's namespace, sampled through the run): how long connections that had bytes waiting to go
 * were held by BBR to a small share of the link.
 *
 * Why: at 20 % random loss, Linux's BBR (v1, net/ipv4/tcp_bbr.c) takes the loss for a token-bucket
 * policer — its long-term estimator fires when more than 50/256 (19.5 %) of an interval's packets
 * are lost at a steady delivery rate — and paces the connection at that rate for 48 round trips,
 * then samples again. A connection pinned so sat at 11-60 kbit/s on a free 512 kbit/s link for
 * 40-99 s with up to 100 KB queued (docs/links.md, tenth pass), for the fleet's connections and
 * HTTP's alike; a fresh connection starts again from BBR's start-up. The figure says how much of a
 * run's time went to that, in each transfer, so a slow tail is not read as the protocol's.
 */
import { parseSs, type SsConnection } from '../platform/tcp-senders.ts';
import type { NetnsLink } from './netns-link.ts';
import { PeriodicSampler } from './uplink.ts';

export interface SenderSample {
  /** ms (any clock, increasing). */
  t: number;
  connections: SsConnection[];
}

/** `senderPinned` of a simulation's JSON line. */
export interface SenderPinned {
  /** A connection counts as pinned while BBR's estimate is at most this (an eighth of the downlink) and bytes wait to go. */
  belowKbit: number;
  /** Connections from the server's port seen in the samples. */
  connections: number;
  /** Of them, those pinned at some point. */
  pinnedConnections: number;
  /** Pinned time summed over connections, s (a sample counts until the next one, at most `2 × everyMs`). */
  pinnedSeconds: number;
  /** The longest stretch one connection was pinned without a break, s. */
  longestPinnedSeconds: number;
  samples: number;
}

/**
 * What the samples say about the connections from `port`: null when none of them was under BBR
 * (another congestion control, or no connection seen), as there is then nothing of this to measure.
 */
export function senderPinned(samples: SenderSample[], o: { port: number; downKbit: number; everyMs: number }): SenderPinned | null {
  const belowBps = (o.downKbit * 1000) / 8;
  const seen = new Set<string>();
  const pinned = new Set<string>();
  const runs = new Map<string, number>();
  let pinnedMs = 0;
  let longestMs = 0;
  let bbr = false;
  samples.forEach((s, i) => {
    const next = samples[i + 1];
    const span = next ? Math.min(next.t - s.t, 2 * o.everyMs) : 0;
    const pinnedNow = new Set<string>();
    for (const c of s.connections) {
      if (c.localPort !== o.port) continue;
      seen.add(c.peer);
      if (c.bbrBwBps === null) continue;
      bbr = true;
      if (c.sendQ <= 0 || c.bbrBwBps > belowBps) continue;
      pinnedNow.add(c.peer);
      pinned.add(c.peer);
      pinnedMs += span;
      const run = (runs.get(c.peer) ?? 0) + span;
      runs.set(c.peer, run);
      longestMs = Math.max(longestMs, run);
    }
    for (const peer of runs.keys()) if (!pinnedNow.has(peer)) runs.delete(peer);
  });
  if (!bbr) return null;
  const s1 = (ms: number): number => Number((ms / 1000).toFixed(1));
  return { belowKbit: Number((belowBps / 1000).toFixed(1)), connections: seen.size, pinnedConnections: pinned.size, pinnedSeconds: s1(pinnedMs), longestPinnedSeconds: s1(longestMs), samples: samples.length };
}

/** How often the senders are sampled: each sample is one `ss` run in the server's namespace. */
export const SENDER_SAMPLE_MS = 1000;

/** Samples the server side's connections to the site (`NetnsLink.senderTcpInfo`) through a transfer. */
export function senderSampler(link: Pick<NetnsLink, 'senderTcpInfo'>): PeriodicSampler<SsConnection[]> {
  return new PeriodicSampler(async () => parseSs(await link.senderTcpInfo()), SENDER_SAMPLE_MS);
}

/** `senderPinned` over what a sampler took, for the connections from the server's `port`. */
export function pinnedOf(sampler: PeriodicSampler<SsConnection[]>, port: number, downKbit: number): SenderPinned | null {
  return senderPinned(
    sampler.all().map((s) => ({ t: s.t, connections: s.c })),
    { port, downKbit, everyMs: sampler.everyMs },
  );
}
