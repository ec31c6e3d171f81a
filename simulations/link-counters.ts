import { run } from './netns-commands.ts';

/*
 * What a NetnsLink (simulations/netns-link.ts) counts, read from the kernel: the site end's bytes
 * and packets, the loss rules' drops, the downlink's tbf queue drops, and each namespace's TCP
 * MIB counters; and counterDelta, what counters counted between two readings.
 */

export interface LinkCounters {
  rxBytes: number;
  rxPackets: number;
  txBytes: number;
  txPackets: number;
}

/** NetnsLink.reading(): the counters at one moment. */
export interface LinkReading {
  counters: LinkCounters;
  queue: { tbfDrops: number; retransSegs: number };
  up: UpTcp;
}

/** The site's sending TCP over a transfer (`NetnsLink.upTcp`). */
export interface UpTcp {
  outSegs: number;
  retransSegs: number;
  timeouts: number;
  lossProbes: number;
}

export interface TcpStats {
  outSegs: number;
  inSegs: number;
  retransSegs: number;
}

/** A counter of one `/proc/net/snmp` or `netstat` section (a header row of names, then a row of values). */
function mibRows(text: string, prefix: string): (name: string) => number {
  const rows = text.split('\n').filter((l) => l.startsWith(prefix));
  if (rows.length < 2) throw new Error(`no ${prefix} rows in the MIB counters`);
  const keys = rows[0].split(/\s+/);
  const vals = rows[1].split(/\s+/);
  return (k) => {
    const i = keys.indexOf(k);
    if (i < 0) throw new Error(`no ${prefix} ${k} in the MIB counters`);
    return Number(vals[i]);
  };
}

/** Byte/packet counters of device `dev` in namespace `ns` (at the site end: tx = site→srv). */
export async function readLinkCounters(ns: string, dev: string): Promise<LinkCounters> {
  const out = await run('ip', ['-n', ns, '-s', '-j', 'link', 'show', 'dev', dev]);
  const s = JSON.parse(out)[0].stats64;
  return { rxBytes: s.rx.bytes, rxPackets: s.rx.packets, txBytes: s.tx.bytes, txPackets: s.tx.packets };
}

/** Packets the loss rule (`inet fleetsim in`) of namespace `ns` dropped so far. */
export async function readLossDrops(ns: string): Promise<number> {
  const out = await run('ip', ['netns', 'exec', ns, 'nft', '-j', 'list', 'chain', 'inet', 'fleetsim', 'in']);
  let n = 0;
  for (const item of JSON.parse(out).nftables ?? []) {
    for (const expr of item.rule?.expr ?? []) if (expr.counter) n += Number(expr.counter.packets);
  }
  return n;
}

/** What the tbf queues on device `dev` of namespace `ns` dropped (the queue overflowing, not the loss rule). */
export async function readTbfDrops(ns: string, dev: string): Promise<number> {
  const out = await run('tc', ['-n', ns, '-s', '-j', 'qdisc', 'show', 'dev', dev]);
  const qdiscs = JSON.parse(out) as Array<{ kind?: string; drops?: number }>;
  return qdiscs.filter((q) => q.kind === 'tbf').reduce((n, q) => n + Number(q.drops ?? 0), 0);
}

/** TCP MIB counters of namespace `ns` (/proc/net/snmp is per network namespace). */
export async function readTcpStats(ns: string): Promise<TcpStats> {
  const out = await run('ip', ['netns', 'exec', ns, 'cat', '/proc/net/snmp']);
  const get = mibRows(out, 'Tcp:');
  return { outSegs: get('OutSegs'), inSegs: get('InSegs'), retransSegs: get('RetransSegs') };
}

/**
 * What the TCP of namespace `ns` sent: segments, and of them those sent again, after a retransmission
 * timeout, and as tail-loss probes (a lone message whose copy or ACK was lost is sent twice).
 */
export async function readUpTcp(ns: string): Promise<UpTcp> {
  const { outSegs, retransSegs } = await readTcpStats(ns);
  const ext = mibRows(await run('ip', ['netns', 'exec', ns, 'cat', '/proc/net/netstat']), 'TcpExt:');
  return { outSegs, retransSegs, timeouts: ext('TCPTimeouts'), lossProbes: ext('TCPLossProbes') };
}

/** What counters (`NetnsLink.downQueue`, `upTcp`) counted between two readings. */
export function counterDelta<T extends { [K in keyof T]: number }>(a: T, b: T): T {
  const keys = Object.keys(b) as Array<keyof T>;
  return Object.fromEntries(keys.map((k) => [k, b[k] - a[k]])) as T;
}
