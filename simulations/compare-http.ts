/**
 * The HTTP half of `sim:fleet --compare-http`: the same payload, on the same kernel link,
 * served by Node's HTTP server with Range support (in the server namespace) and fetched by
 * one `curl -C -` loop per device (in the site namespace), with the same cut schedule.
 * Also the TCP floor both are measured against.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { LinkSpec } from './link-profiles.ts';
import { fetchWithResume } from './http-range.ts';
import type { NetnsLink } from './netns-link.ts';
import { counterDelta, type UpTcp } from './link-counters.ts';
import { runFaults, type Fault } from './faults.ts';
import { pinnedOf, senderSampler, type SenderPinned } from './sender-pacing.ts';

const HTTP_SCRIPT = new URL('./http-range.ts', import.meta.url).pathname;

export interface HttpRunResult {
  completed: number;
  seconds: number;
  attempts: number;
  /** Bytes on the wire at the site end of the link (IP packets, retransmissions included). */
  wireDown: number;
  wireUp: number;
  /** Packets the site sent (the requests and TCP's ACKs). */
  wireUpPackets: number;
  /** The downlink's tbf drops and the server side's TCP retransmissions during the fetch. */
  downQueue: { tbfDrops: number; retransSegs: number };
  /** The site's TCP segments sent during the fetch, and of them sent again. */
  upTcp: UpTcp;
  /** How long the HTTP server's connections sat with BBR's rate pinned low (sender-pacing.ts; null without BBR). */
  senderPinned: SenderPinned | null;
}

export interface HttpRunOptions {
  link: NetnsLink;
  port: number;
  payloadFile: string;
  payloadBytes: number;
  devices: number;
  faults: Fault[];
  cutSeconds: number;
  /** The downlink's rate, kbit/s (what `senderPinned` measures a share of). */
  downKbit: number;
  dir: string;
  idleSeconds: number;
  timeoutSeconds: number;
  log: (line: string) => void;
}

export async function runHttpBaseline(o: HttpRunOptions): Promise<HttpRunResult> {
  const server = o.link.exec('srv', process.execPath, ['--import', 'tsx', HTTP_SCRIPT, o.payloadFile, o.link.srvAddress, String(o.port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const t = setTimeout(() => reject(new Error(`HTTP range server did not start: ${out}`)), 20_000);
      server.stdout!.on('data', (d) => {
        out += String(d);
        if (out.includes('ready')) {
          clearTimeout(t);
          resolve();
        }
      });
      server.stderr!.on('data', (d) => (out += String(d)));
      server.once('exit', (c) => {
        clearTimeout(t);
        reject(new Error(`HTTP range server exited ${c}: ${out}`));
      });
    });
    const expected = createHash('sha256')
      .update(await fs.readFile(o.payloadFile))
      .digest('hex');
    const before = await o.link.reading();
    const senders = senderSampler(o.link);
    senders.start();
    const t0 = Date.now();
    let done = 0;
    const fetches = Array.from({ length: o.devices }, async (_, i) => {
      const outFile = path.join(o.dir, `http-${i}.bin`);
      const r = await fetchWithResume({
        spawn: (cmd, args) => o.link.exec('site', cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }),
        url: `http://${o.link.srvAddress}:${o.port}/payload`,
        outFile,
        size: o.payloadBytes,
        idleSeconds: o.idleSeconds,
        retryMs: 1000,
        deadlineMs: o.timeoutSeconds * 1000,
      });
      const digest = r.ok
        ? createHash('sha256')
            .update(await fs.readFile(outFile))
            .digest('hex')
        : '';
      done++;
      return { ...r, ok: r.ok && digest === expected };
    });
    const faultsDone = runFaults({ faults: [...o.faults], t0, finished: () => done >= o.devices, cutSeconds: o.cutSeconds, link: o.link, log: o.log });
    const results = await Promise.all(fetches);
    const seconds = (Date.now() - t0) / 1000;
    await faultsDone;
    await senders.stop();
    const after = await o.link.reading();
    return {
      completed: results.filter((r) => r.ok).length,
      seconds: Number(seconds.toFixed(2)),
      attempts: results.reduce((x, r) => x + r.attempts, 0),
      wireDown: after.counters.rxBytes - before.counters.rxBytes,
      wireUp: after.counters.txBytes - before.counters.txBytes,
      wireUpPackets: after.counters.txPackets - before.counters.txPackets,
      downQueue: counterDelta(before.queue, after.queue),
      upTcp: counterDelta(before.up, after.up),
      senderPinned: pinnedOf(senders, o.port, o.downKbit),
    };
  } finally {
    if (server.pid !== undefined && server.exitCode === null) process.kill(server.pid, 'SIGTERM');
  }
}

/** TCP segment payload per packet (MSS 1460 − 12 bytes of timestamp option). */
const SEGMENT = 1448;

/**
 * The least time TCP needs over this link: every device's payload in full-size segments
 * through the downlink rate, the packets the link drops sent again (they pass the rate cap
 * before they are lost), two round trips (handshake, request) and the cuts. `frameBytes` is
 * what the rate cap counts per full packet: 1514 on a veth (Ethernet header), 1500 on a TUN.
 */
export function tcpFloorSeconds(spec: LinkSpec, devices: number, payloadBytes: number, frameBytes: number): number | null {
  if (spec.downKbit <= 0) return null;
  const bits = devices * Math.ceil(payloadBytes / SEGMENT) * frameBytes * 8;
  const send = bits / (spec.downKbit * 1000) / (1 - spec.lossDownPercent / 100);
  return send + (4 * spec.delayMs) / 1000 + spec.cuts * spec.cutSeconds;
}
