import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { pidAlive } from '../util/dir-lock.ts';
import { startDelayLine } from './delay-line.ts';
import { readLinkCounters, readLossDrops, readTbfDrops, readTcpStats, readUpTcp, type LinkCounters, type LinkReading, type TcpStats, type UpTcp } from './link-counters.ts';
import { congestionControls, retries2ForRtoMax, rtoMaxAvailable } from './tcp-sysctls.ts';
import { deleteNamespace, exited, findBinary, killPid, listNamespaces, run, runSync } from './netns-commands.ts';

/**
 * A "site cellular link" built from two Linux network namespaces joined by a
 * veth pair, for root-only integration tests and simulations.
 *
 *   fleetsim-<pid>-<name>-srv  (cloud side, broker)   veth <name>-srv  10.77.0.1/24
 *   fleetsim-<pid>-<name>-site (devices)              veth <name>-site 10.77.0.2/24
 *
 * The veth is created directly inside the srv namespace with its peer inside
 * the site namespace (`ip -n <srv> link add ... peer name ... netns <site>`),
 * so nothing ever appears in the host's namespace and no host interface,
 * route or firewall is touched. Each pair of namespaces is isolated, so the
 * same 10.77.0.0/24 addresses can be reused by concurrent links.
 *
 * Impairments (the kernel has no netem):
 * - Loss: an nftables table `inet fleetsim` in EACH namespace, with one rule in
 *   the input hook that drops packets arriving on the veth (never loopback):
 *     iifname "<veth>" numgen random mod 100 < P counter drop
 *   Dropping on ingress only means each direction loses exactly P% (srv→site is
 *   dropped by the site's rule, site→srv by the srv's rule), and it is real
 *   loss: the sender's stack thinks the packet went out (an output-hook drop
 *   would instead return EPERM to the local sender).
 * - Rate: `tc qdisc replace dev <veth> root tbf rate <R>kbit burst <B> latency 500ms`
 *   on both ends (egress of each end = one direction each). Burst is
 *   max(4 × 1540 bytes, 20 ms worth of rate): a few full frames so tbf can
 *   always pass an MTU-sized (or GSO-segmented) packet even at tens of kbit/s,
 *   and large enough at higher rates for the timer granularity. Latency 500 ms
 *   bounds the queue (limit = rate × 0.5 s + burst), like a cellular buffer.
 *
 * - Delay and jitter (`delayMs`, `jitterMs`): there is no netem, no fq (for EDT
 *   pacing) and no NFQUEUE target in nftables on this kernel, so a delayed link
 *   is not a veth but a TUN device in each namespace (same names, addresses and
 *   rules), joined by a userspace delay line (simulations/delay-line.py, Python
 *   because TUNSETIFF is an ioctl Node cannot issue). Every packet, data and ACK
 *   alike, is held for the one-way delay ± jitter, in order, so TCP's own loss
 *   recovery sees the round trip (a delaying TCP proxy would hide it from TCP).
 *   tbf sits on each TUN's egress (the bottleneck before the propagation delay),
 *   nftables drops on each TUN's ingress, cuts take the TUNs down.
 *
 * Namespaces embed the creating process's PID so `cleanupStale()` only removes
 * leftovers of processes that no longer exist (never a concurrent run's).
 *
 * Beside this file: netns-commands.ts (running ip/tc/nft, listing and deleting namespaces),
 * link-counters.ts (what the link counts and how it is read) and delay-line.ts (starting the
 * TUN delay line).
 */

export const NS_PREFIX = 'fleetsim-';

export interface NetnsLinkOptions {
  /** Short unique tag, [a-z0-9], ≤ 10 chars (interface names are `<name>-site`, ≤ 15). */
  name: string;
  /** Random packet drop in BOTH directions, percent 0..100. */
  lossPercent?: number;
  /** Bandwidth cap (tc tbf), kbit/s: srv→site, and site→srv too unless `rateUpKbit` is given. */
  rateKbit?: number;
  /** Bandwidth cap site→srv (the uplink), kbit/s; default `rateKbit`. */
  rateUpKbit?: number;
  /** Random drop site→srv (uplink), percent; default `lossPercent`. */
  lossUpPercent?: number;
  /**
   * One-way delay, ms, each direction. > 0 (or a jitter) replaces the veth by a TUN device in each
   * namespace joined by a userspace delay line (simulations/delay-line.py): the kernel here has no netem.
   */
  delayMs?: number;
  /** Per-packet jitter, ± ms uniform, order kept. */
  jitterMs?: number;
  /** Seed of the jitter. */
  seed?: number;
  /**
   * TCP congestion control of every connection on the link, both ends (`cubic`, `bbr`, `reno`: one
   * of `/proc/sys/net/ipv4/tcp_available_congestion_control`); default: the host's. Set on the
   * link's route (`ip route … congctl`), so it also holds for connections made after a cut.
   */
  congestion?: string;
  /**
   * The most a TCP retransmission timeout may back off to, ms, in both namespaces
   * (`net.ipv4.tcp_rto_max_ms`, per namespace, Linux >= 6.15; 1000-120000; the kernel's default is
   * 120000). Every connection on the link, fleet and HTTP alike, gets it.
   */
  rtoMaxMs?: number;
}

type Side = 'srv' | 'site';

const TBF_LATENCY = '500ms';
const KILL_GRACE_MS = 1500;

const live = new Set<NetnsLink>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Best effort if the process exits without destroy(): synchronous only.
  process.on('exit', () => {
    for (const link of live) link.destroySync();
  });
}

export class NetnsLink {
  readonly srvNs: string;
  readonly siteNs: string;
  readonly srvIf: string;
  readonly siteIf: string;
  readonly srvAddress = '10.77.0.1';
  readonly siteAddress = '10.77.0.2';
  private readonly prefixLen = 24;
  private lossPercent = 0;
  private lossUpPercent = 0;
  private congctl: string | undefined;
  private readonly children = new Set<ChildProcess>();
  private destroyed = false;

  private constructor(readonly name: string) {
    this.srvNs = `${NS_PREFIX}${process.pid}-${name}-srv`;
    this.siteNs = `${NS_PREFIX}${process.pid}-${name}-site`;
    this.srvIf = `${name}-srv`;
    this.siteIf = `${name}-site`;
  }

  static available(): { ok: true } | { ok: false; reason: string } {
    if (process.platform !== 'linux') return { ok: false, reason: `needs Linux (platform is ${process.platform})` };
    if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
      return { ok: false, reason: 'needs root (process.getuid() !== 0)' };
    }
    for (const bin of ['ip', 'tc', 'nft']) {
      if (!findBinary(bin)) return { ok: false, reason: `'${bin}' not found in PATH/sbin` };
    }
    const probe = `${NS_PREFIX}${process.pid}-probe${Math.random().toString(36).slice(2, 8)}`;
    const add = runSync('ip', ['netns', 'add', probe]);
    if (!add.ok) return { ok: false, reason: `cannot create a network namespace: ip netns add ${probe}: ${add.err}` };
    const nft = runSync('ip', ['netns', 'exec', probe, 'nft', 'list', 'ruleset']);
    const del = runSync('ip', ['netns', 'del', probe]);
    if (!nft.ok) return { ok: false, reason: `nft does not work in a namespace: ${nft.err}` };
    if (!del.ok) return { ok: false, reason: `cannot delete a network namespace: ip netns del ${probe}: ${del.err}` };
    return { ok: true };
  }

  static async create(o: NetnsLinkOptions): Promise<NetnsLink> {
    if (!/^[a-z0-9]{1,10}$/.test(o.name)) throw new Error(`NetnsLink name must match [a-z0-9]{1,10}: ${o.name}`);
    if (o.rtoMaxMs !== undefined) {
      if (!rtoMaxAvailable()) throw new Error('--rto-max needs net.ipv4.tcp_rto_max_ms (Linux 6.15 or later); this kernel has none');
      if (!Number.isInteger(o.rtoMaxMs) || o.rtoMaxMs < 1000 || o.rtoMaxMs > 120000) throw new Error(`--rto-max must be an integer 1000-120000 (ms), not ${o.rtoMaxMs}`);
    }
    const link = new NetnsLink(o.name);
    live.add(link);
    installExitHook();
    try {
      await link.setup(o);
    } catch (e) {
      await link.destroy().catch(() => {});
      throw e;
    }
    return link;
  }

  /** Deletes namespaces named `<prefix>*` whose creating process no longer exists (crashed runs). */
  static async cleanupStale(prefix = NS_PREFIX, opts: { includeLive?: boolean } = {}): Promise<string[]> {
    const removed: string[] = [];
    for (const ns of await listNamespaces()) {
      if (!ns.startsWith(prefix)) continue;
      const m = /^(\d+)-/.exec(ns.slice(prefix.length));
      const owner = m ? Number(m[1]) : undefined;
      if (!opts.includeLive && (owner === undefined || owner === process.pid || pidAlive(owner))) continue;
      await deleteNamespace(ns);
      removed.push(ns);
    }
    return removed;
  }

  private ns(side: Side): string {
    return side === 'srv' ? this.srvNs : this.siteNs;
  }

  private ifname(side: Side): string {
    return side === 'srv' ? this.srvIf : this.siteIf;
  }

  private async setup(o: NetnsLinkOptions): Promise<void> {
    const existing = await listNamespaces();
    for (const ns of [this.srvNs, this.siteNs]) {
      if (existing.includes(ns)) throw new Error(`namespace ${ns} already exists`);
    }
    await run('ip', ['netns', 'add', this.srvNs]);
    await run('ip', ['netns', 'add', this.siteNs]);
    const delayed = (o.delayMs ?? 0) > 0 || (o.jitterMs ?? 0) > 0;
    if (delayed) await startDelayLine(this, { delayMs: o.delayMs ?? 0, jitterMs: o.jitterMs ?? 0, seed: o.seed ?? 1 }, (c) => this.track(c));
    else await run('ip', ['-n', this.srvNs, 'link', 'add', this.srvIf, 'type', 'veth', 'peer', 'name', this.siteIf, 'netns', this.siteNs]);
    for (const side of ['srv', 'site'] as const) {
      const ns = this.ns(side);
      const addr = side === 'srv' ? this.srvAddress : this.siteAddress;
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      await run('ip', ['-n', ns, 'addr', 'add', `${addr}/${this.prefixLen}`, 'dev', this.ifname(side)]);
      if (delayed) await run('ip', ['-n', ns, 'link', 'set', this.ifname(side), 'txqueuelen', '1000']);
      await run('ip', ['-n', ns, 'link', 'set', this.ifname(side), 'up']);
      const rate = side === 'site' ? (o.rateUpKbit ?? o.rateKbit) : o.rateKbit;
      if (rate !== undefined && rate > 0) {
        await run('ip', ['netns', 'exec', ns, 'tc', ...NetnsLink.tbfArgs(this.ifname(side), rate)]);
      }
    }
    await this.setLoss(o.lossPercent ?? 0, o.lossUpPercent);
    if (o.congestion !== undefined) {
      const { available } = congestionControls();
      if (!available.includes(o.congestion)) throw new Error(`congestion control ${o.congestion} is not available here (${available.join(', ')})`);
      this.congctl = o.congestion;
      await this.applyCongestion();
    }
    if (o.rtoMaxMs !== undefined) {
      // The kernel gives a connection up after `tcp_retries2` timeouts modelled with the cap: at 1 s that
      // is ~15 s without an ACK (a connection at 20 % loss after a 6 s outage was reset in a run), so the
      // retries are raised to keep the default's give-up time (~925 s) as far as the kernel allows.
      const retries = retries2ForRtoMax(o.rtoMaxMs);
      for (const side of ['srv', 'site'] as const) {
        await run('ip', ['netns', 'exec', this.ns(side), 'sysctl', '-qw', `net.ipv4.tcp_rto_max_ms=${o.rtoMaxMs}`, `net.ipv4.tcp_retries2=${retries}`]);
      }
    }
  }

  /** The congestion control new connections on the link get: the one asked for, else the host's. */
  get congestion(): string {
    return this.congctl ?? congestionControls().hostDefault;
  }

  /** The connected route of each end with `congctl` (a cut removes the route; `restore` calls this again). */
  private async applyCongestion(): Promise<void> {
    if (this.congctl === undefined) return;
    for (const side of ['srv', 'site'] as const) {
      const src = side === 'srv' ? this.srvAddress : this.siteAddress;
      await run('ip', ['-n', this.ns(side), 'route', 'replace', `10.77.0.0/${this.prefixLen}`, 'dev', this.ifname(side), 'proto', 'kernel', 'scope', 'link', 'src', src, 'congctl', this.congctl]);
    }
  }

  /** Tracks a process it started (destroy() kills it by PID) until it exits. */
  private track(child: ChildProcess): void {
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
  }

  /** `tc` arguments for the bandwidth cap (see file comment for burst/latency choice). */
  static tbfArgs(dev: string, rateKbit: number): string[] {
    const bytesPerSec = (rateKbit * 1000) / 8;
    const burst = Math.max(4 * 1540, Math.ceil(bytesPerSec / 50));
    return ['qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${rateKbit}kbit`, 'burst', String(burst), 'latency', TBF_LATENCY];
  }

  /** The nft script applied (atomically) in one namespace for a given loss. */
  static nftScript(dev: string, lossPercent: number): string {
    const lines = ['table inet fleetsim {', '  chain in { type filter hook input priority 0; policy accept; }', '}', 'flush chain inet fleetsim in'];
    // 100 % is every packet (`numgen random mod 100` is 0-99: `< 100` is out of nft's range for it).
    if (lossPercent >= 100) lines.push(`add rule inet fleetsim in iifname "${dev}" counter drop`);
    else if (lossPercent > 0) lines.push(`add rule inet fleetsim in iifname "${dev}" numgen random mod 100 < ${lossPercent} counter drop`);
    return lines.join('\n') + '\n';
  }

  /** Sets random loss (percent; srv→site, and site→srv unless `upPercent` is given) at runtime by replacing the nft rules. */
  async setLoss(lossPercent: number, upPercent = lossPercent): Promise<void> {
    for (const p of [lossPercent, upPercent]) {
      if (!Number.isInteger(p) || p < 0 || p > 100) throw new Error(`lossPercent must be an integer 0..100: ${p}`);
    }
    // The site's input drops what comes down; the server's input drops what goes up.
    for (const side of ['srv', 'site'] as const) {
      await run('ip', ['netns', 'exec', this.ns(side), 'nft', '-f', '-'], NetnsLink.nftScript(this.ifname(side), side === 'site' ? lossPercent : upPercent));
    }
    this.lossPercent = lossPercent;
    this.lossUpPercent = upPercent;
  }

  get lossUp(): number {
    return this.lossUpPercent;
  }

  get loss(): number {
    return this.lossPercent;
  }

  /** Packets dropped so far by the loss rules, per receiving side. */
  async drops(): Promise<{ srv: number; site: number }> {
    return { srv: await readLossDrops(this.srvNs), site: await readLossDrops(this.siteNs) };
  }

  /** Pulls the plug: both veth ends down (connected routes disappear, connects fail). */
  async cut(): Promise<void> {
    await run('ip', ['-n', this.siteNs, 'link', 'set', this.siteIf, 'down']);
    await run('ip', ['-n', this.srvNs, 'link', 'set', this.srvIf, 'down']);
  }

  /** Both ends up again; re-adds addresses if they were lost. */
  async restore(): Promise<void> {
    for (const side of ['srv', 'site'] as const) {
      const ns = this.ns(side);
      const dev = this.ifname(side);
      await run('ip', ['-n', ns, 'link', 'set', dev, 'up']);
      const addr = side === 'srv' ? this.srvAddress : this.siteAddress;
      const info = JSON.parse(await run('ip', ['-n', ns, '-j', 'addr', 'show', 'dev', dev])) as Array<{
        addr_info?: Array<{ local?: string }>;
      }>;
      if (!info.some((i) => i.addr_info?.some((a) => a.local === addr))) {
        await run('ip', ['-n', ns, 'addr', 'replace', `${addr}/${this.prefixLen}`, 'dev', dev]);
      }
    }
    // The kernel re-adds the connected route when the carrier comes up; wait for it.
    const deadline = Date.now() + 3000;
    for (;;) {
      const routes = await run('ip', ['-n', this.siteNs, 'route', 'show', 'dev', this.siteIf]);
      if (routes.includes('10.77.0.0/24')) break;
      if (Date.now() > deadline) throw new Error(`route to 10.77.0.0/24 did not come back in ${this.siteNs}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.applyCongestion();
  }

  /** Spawns `ip netns exec <ns> cmd ...args`; tracked so destroy() kills it by PID. */
  exec(side: Side, cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    if (this.destroyed) throw new Error(`NetnsLink ${this.name} is destroyed`);
    const child = spawn('ip', ['netns', 'exec', this.ns(side), cmd, ...args], { stdio: 'pipe', ...opts });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    child.once('error', () => this.children.delete(child));
    return child;
  }

  /** Every counter the simulations compare, read once: bytes and packets each way, the downlink's queue, the site's TCP. */
  async reading(): Promise<LinkReading> {
    return { counters: await this.counters(), queue: await this.downQueue(), up: await this.upTcp() };
  }

  /** Byte/packet counters of the site end of the veth (tx = site→srv). */
  counters(): Promise<LinkCounters> {
    return readLinkCounters(this.siteNs, this.siteIf);
  }

  /**
   * What the server side sent down and what its rate cap dropped: the srv end's tbf drops (the queue
   * overflowing, not the loss rule) and the srv namespace's retransmitted TCP segments.
   */
  async downQueue(): Promise<{ tbfDrops: number; retransSegs: number }> {
    const tbfDrops = await readTbfDrops(this.srvNs, this.srvIf);
    return { tbfDrops, retransSegs: (await this.tcpStats('srv')).retransSegs };
  }

  /**
   * What the site's TCP sent: segments, and of them those sent again, after a retransmission
   * timeout, and as tail-loss probes (a lone message whose copy or ACK was lost is sent twice).
   */
  upTcp(): Promise<UpTcp> {
    return readUpTcp(this.siteNs);
  }

  /** `ss -tin` of the server side's established connections to the site: each one's queues and TCP state (sender-pacing.ts). */
  senderTcpInfo(): Promise<string> {
    return run('ip', ['netns', 'exec', this.srvNs, 'ss', '-tin', 'state', 'established', 'dst', this.siteAddress]);
  }

  /** TCP MIB counters (/proc/net/snmp is per network namespace). */
  tcpStats(side: Side): Promise<TcpStats> {
    return readTcpStats(this.ns(side));
  }

  /** Kills tracked processes (SIGTERM, then SIGKILL), deletes both namespaces (and the veth). Idempotent. */
  async destroy(): Promise<void> {
    this.destroyed = true;
    const running = [...this.children].filter((c) => c.pid !== undefined && !exited(c));
    for (const c of running) killPid(c.pid!, 'SIGTERM');
    await Promise.all(
      running.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (exited(c)) return resolve();
            const t = setTimeout(() => {
              killPid(c.pid!, 'SIGKILL');
              resolve();
            }, KILL_GRACE_MS);
            c.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
          }),
      ),
    );
    this.children.clear();
    const existing = await listNamespaces();
    for (const ns of [this.siteNs, this.srvNs]) if (existing.includes(ns)) await deleteNamespace(ns);
    live.delete(this);
  }

  /** Synchronous best-effort teardown for process exit. */
  destroySync(): void {
    this.destroyed = true;
    for (const c of this.children) if (c.pid !== undefined && !exited(c)) killPid(c.pid, 'SIGKILL');
    this.children.clear();
    for (const ns of [this.siteNs, this.srvNs]) {
      for (const pid of runSync('ip', ['netns', 'pids', ns]).out.split(/\s+/).filter(Boolean)) killPid(Number(pid), 'SIGKILL');
      runSync('ip', ['netns', 'del', ns]);
    }
    live.delete(this);
  }
}
