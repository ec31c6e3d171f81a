import { execFile, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * What the kernel says about a host's own TCP connections, from `ss -tin` (iproute2, Linux): each
 * established connection's send queue and, under BBR, its bandwidth estimate and pacing gain. Node
 * has no TCP_INFO; ss reads the same through netlink. The broker's `--unpin-senders`
 * (broker/pinned-senders.ts) and the simulations' `senderPinned` (simulations/sender-pacing.ts) read it.
 */

/** One established connection in `ss -tin` output. */
export interface SsConnection {
  localPort: number;
  /** The peer as ss prints it (`10.77.0.2:53894`, `[::ffff:10.77.0.2]:53894`). */
  peer: string;
  /** The peer's address without brackets or an IPv4-mapped prefix (`10.77.0.2`), as a socket's `remoteAddress` gives it once the same is done to it. */
  peerAddress: string;
  peerPort: number;
  /** Bytes written that the peer has not acknowledged (ss's Send-Q). */
  sendQ: number;
  /** BBR's bandwidth estimate, bit/s; null when the connection is not under BBR. */
  bbrBwBps: number | null;
  /** BBR's pacing gain (1.25 and 0.75 while it probes, 2.89 at start-up, 1 otherwise); null when not under BBR. */
  pacingGain: number | null;
}

const CONNECTION = /^\s*\d+\s+(\d+)\s+(\S+):(\d+)\s+(\S+):(\d+)/;
const BBR = /\bbbr:\(([^)]*)\)/;
const BW = /\bbw:(\d+(?:\.\d+)?)([KMG]?)bps/;
const GAIN = /\bpacing_gain:(\d+(?:\.\d+)?)/;
const UNIT: Record<string, number> = { '': 1, K: 1e3, M: 1e6, G: 1e9 };

/** An address as ss or a socket gives it, without brackets or the IPv4-mapped `::ffff:` prefix. */
export function plainAddress(a: string): string {
  return a.replace(/^\[|\]$/g, '').replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
}

/**
 * The connections of `ss -tin state established` output (no State column): a line with the queues
 * and the two ends, then an indented line of TCP info. Lines of any other shape are skipped.
 */
export function parseSs(text: string): SsConnection[] {
  const out: SsConnection[] = [];
  let last: SsConnection | undefined;
  for (const line of text.split('\n')) {
    const c = CONNECTION.exec(line);
    if (c) {
      last = { localPort: Number(c[3]), peer: `${c[4]}:${c[5]}`, peerAddress: plainAddress(c[4]), peerPort: Number(c[5]), sendQ: Number(c[1]), bbrBwBps: null, pacingGain: null };
      out.push(last);
      continue;
    }
    const bbr = BBR.exec(line);
    const bw = bbr && BW.exec(bbr[1]);
    if (bw && last && /^\s/.test(line)) {
      last.bbrBwBps = Math.round(Number(bw[1]) * UNIT[bw[2]]);
      const gain = GAIN.exec(bbr![1]);
      last.pacingGain = gain ? Number(gain[1]) : null;
    }
  }
  return out;
}

/** Whether `ss` can be run here (Linux with iproute2). */
/** This host's (this network namespace's) TCP congestion control for new connections (`bbr`, `cubic`, …); undefined where it cannot be read. */
export function hostCongestionControl(): string | undefined {
  try {
    return readFileSync('/proc/sys/net/ipv4/tcp_congestion_control', 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

export function ssAvailable(): boolean {
  if (process.platform !== 'linux') return false;
  const r = spawnSync('ss', ['-V'], { encoding: 'utf8', timeout: 5000 });
  return r.status === 0 && !r.error;
}

/** `ss -tin` of this host's (this network namespace's) established connections from local `port`. */
export function readSendersFrom(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('ss', ['-tin', 'state', 'established', 'sport', '=', `:${port}`], { timeout: 10_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`ss -tin failed: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
  });
}
