import type net from 'node:net';
import type { Clock } from '../platform/clock.ts';
import { parseSs, plainAddress, readSendersFrom, type SsConnection } from '../platform/tcp-senders.ts';
import type { Logger } from '../util/log.ts';

/**
 * `fleet broker --unpin-senders`: resets a device's connection that the broker host's own TCP holds
 * at a trickle, so the device reconnects on a fresh one (and resumes where it was).
 *
 * Linux's BBR (v1) takes heavy random loss for a token-bucket policer: when more than 50/256
 * (19.5 %) of an interval's packets are lost at a steady delivery rate, it paces the connection at
 * that rate for 48 round trips, and samples again (net/ipv4/tcp_bbr.c, its long-term estimator).
 * On a cellular link losing ~20 % that held device connections at 11-60 kbit/s of a free
 * 512 kbit/s link for 30-200 s, a chunk every 10-20 s, while a fresh connection, starting from
 * BBR's start-up, brought the rest in seconds (docs/links.md, tenth pass). The device cannot tell
 * such a connection from a slow or shared link; the broker's host can: `ss -tin` shows BBR's
 * estimate and pacing gain per connection.
 *
 * The signature, sampled once a second: under BBR, a pacing gain of exactly 1 (BBR's probing
 * cycles 1.25 and 0.75 through its rounds; the long-term estimate pins it at 1), the same bandwidth
 * estimate to the bit, and bytes queued to send, for `holdMs` without a break, with more queued
 * than the pinned rate sends in `minDrainMs` (a close must be worth a reconnect). A client is closed
 * so at most once per `cooldownMs`: behind a real policer the estimate is right, and a fresh
 * connection only costs a reconnect (its retained messages, ~1-2 KB) and a start-up burst, once.
 */
/** `fleet broker --unpin-senders auto|on|off`: auto is the default. */
export type UnpinMode = 'auto' | 'on' | 'off';

/**
 * Whether the watch runs. `auto`: when the host's congestion control for new connections is BBR
 * (the only one with the long-term mode) and `ss` is there to read it; `on` runs it regardless (the
 * broker refuses to start without `ss`), `off` never.
 */
export function unpinDecision(mode: UnpinMode, host: { congestion: string | undefined; ss: boolean }): { on: boolean; why: string } {
  if (mode === 'off') return { on: false, why: '--unpin-senders off' };
  if (mode === 'on') return { on: true, why: '--unpin-senders on' };
  if (host.congestion !== 'bbr') return { on: false, why: `this host's TCP congestion control is ${host.congestion ?? 'unknown'}, not bbr: nothing to unpin` };
  if (!host.ss) return { on: false, why: "this host's TCP is bbr, but ss (iproute2) is not installed to watch it: apt-get install iproute2" };
  return { on: true, why: "this host's TCP congestion control is bbr" };
}

export interface PinnedSenderRules {
  holdMs: number;
  cooldownMs: number;
  /** Only a connection whose queued bytes would take this long at its pinned rate is worth a reconnect. */
  minDrainMs: number;
}

export const UNPIN_DEFAULTS = {
  /** How often `ss` is read. */
  everyMs: 1000,
  /** How long a connection must show the signature before it is closed. */
  holdMs: 15_000,
  /** The least time between two closes of one client. */
  cooldownMs: 600_000,
  /**
   * The least time its queued bytes would take at the pinned rate: a connection pinned at a rate that
   * drains its queue in a second or two loses little, and one whose estimate is stale rather than
   * pinned (hundreds of Mbit/s, no ACK for a while) is not what this is for.
   */
  minDrainMs: 5000,
} as const;

export interface Unpinned {
  connection: SsConnection;
  /** The client id (or the peer, for a connection not logged in). */
  who: string;
  heldMs: number;
}

/** Fed each sample of the broker's connections, names those to close now (pure). */
export class PinnedSenders {
  /** Per peer (address:port): the estimate it sits at, and since when. */
  private readonly pinned = new Map<string, { bw: number; since: number }>();
  /** Per client: when it was last closed. */
  private readonly closedAt = new Map<string, number>();

  constructor(private readonly rules: PinnedSenderRules) {}

  observe(now: number, connections: readonly SsConnection[], who: (c: SsConnection) => string | undefined): Unpinned[] {
    const out: Unpinned[] = [];
    const seen = new Set<string>();
    for (const c of connections) {
      seen.add(c.peer);
      if (c.bbrBwBps === null || c.pacingGain !== 1 || c.sendQ <= 0) {
        this.pinned.delete(c.peer);
        continue;
      }
      const p = this.pinned.get(c.peer);
      if (!p || p.bw !== c.bbrBwBps) {
        this.pinned.set(c.peer, { bw: c.bbrBwBps, since: now });
        continue;
      }
      if (now - p.since < this.rules.holdMs || (c.sendQ * 8 * 1000) / c.bbrBwBps < this.rules.minDrainMs) continue;
      const key = who(c) ?? c.peer;
      const last = this.closedAt.get(key);
      if (last !== undefined && now - last < this.rules.cooldownMs) continue;
      this.closedAt.set(key, now);
      this.pinned.delete(c.peer);
      out.push({ connection: c, who: key, heldMs: now - p.since });
    }
    for (const peer of [...this.pinned.keys()]) if (!seen.has(peer)) this.pinned.delete(peer);
    for (const [key, t] of [...this.closedAt]) if (now - t >= this.rules.cooldownMs) this.closedAt.delete(key);
    return out;
  }
}

export interface UnpinOptions {
  /** The listener's port: its connections are the ones looked at. */
  port: number;
  /** The listener's open connections. */
  sockets: ReadonlySet<net.Socket>;
  /** The client id logged in on a connection, if any. */
  clientOf: (socket: net.Socket) => string | undefined;
  /** `ss -tin` of the connections from `port` (default: run it). */
  read?: () => Promise<string>;
  clock: Clock;
  log: Logger;
  everyMs?: number;
  holdMs?: number;
  cooldownMs?: number;
  minDrainMs?: number;
}

export interface UnpinWatch {
  stop(): void;
}

/** Reads the listener's connections every `everyMs` and closes those the host's BBR pins (see above). */
export function watchPinnedSenders(o: UnpinOptions): UnpinWatch {
  const everyMs = o.everyMs ?? UNPIN_DEFAULTS.everyMs;
  const read = o.read ?? (() => readSendersFrom(o.port));
  const senders = new PinnedSenders({ holdMs: o.holdMs ?? UNPIN_DEFAULTS.holdMs, cooldownMs: o.cooldownMs ?? UNPIN_DEFAULTS.cooldownMs, minDrainMs: o.minDrainMs ?? UNPIN_DEFAULTS.minDrainMs });
  /** The listener's sockets by peer address and port, made once per reading (a broker may hold thousands). */
  const socketsByPeer = (): Map<string, net.Socket> => new Map([...o.sockets].map((s) => [`${plainAddress(s.remoteAddress ?? '')}|${s.remotePort}`, s]));
  let stopped = false;
  let timer: unknown;
  let warned = false;
  const tick = async (): Promise<void> => {
    try {
      const connections = parseSs(await read()).filter((c) => c.localPort === o.port);
      const sockets = socketsByPeer();
      const socketOf = (c: SsConnection): net.Socket | undefined => sockets.get(`${c.peerAddress}|${c.peerPort}`);
      for (const u of senders.observe(o.clock.now(), connections, (c) => {
        const s = socketOf(c);
        return s ? o.clientOf(s) : undefined;
      })) {
        const socket = socketOf(u.connection);
        if (!socket) continue;
        o.log.info("resetting a connection the host's BBR holds at a steady trickle; the client reconnects on a fresh one", {
          client: u.who,
          kbit: Math.round(u.connection.bbrBwBps! / 1000),
          heldMs: u.heldMs,
          queuedBytes: u.connection.sendQ,
        });
        // A reset, not a close: a close leaves the queued bytes to go out at the pinned rate before the
        // FIN (the client would see its old connection trickle on, then receive its chunks twice).
        socket.resetAndDestroy();
      }
    } catch (e) {
      if (!warned) o.log.warn('cannot read the connections with ss; pinned senders are not looked for until it works', { error: String(e) });
      warned = true;
    }
  };
  const schedule = (): void => {
    if (!stopped) timer = o.clock.setTimeout(() => void tick().finally(schedule), everyMs);
  };
  schedule();
  return {
    stop() {
      stopped = true;
      if (timer !== undefined) o.clock.clearTimeout(timer);
    },
  };
}
