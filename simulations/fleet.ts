/**
 * A fleet behind one impaired link (a site), end to end with real processes:
 *
 *   npm run sim:fleet -- --devices N --size BYTES [--profile NAME] [--loss P] [--loss-up P]
 *       [--rate KBIT] [--rate-up KBIT] [--delay MS] [--jitter MS] [--cuts K] [--cut-seconds S]
 *       [--kills K] [--kernel] [--broker aedes|mosquitto] [--compare] [--compare-http] [--seed S]
 *       [--congestion cubic|bbr|reno] [--rto-max MS]  (kernel link: TCP congestion control of its connections; default the host's)
 *       [--unpin | --no-unpin]  (the broker resets connections its host's BBR pins, `fleet broker --unpin-senders on|off`; default the broker's: auto, on under bbr)
 *
 * The broker (with its update server) runs as its own process; the devices
 * run as real agents (one MQTT connection, directory, bitmap each) in a
 * device-host process. Without --kernel the site link is the in-process TCP
 * proxy (bandwidth shared by the site, cuts); with --kernel it is a veth pair
 * between two network namespaces with nftables packet loss and a tbf rate
 * cap (root only); a delay or jitter puts the TUN delay line of netns-link.ts in
 * place of the veth. `--compare-http` then sends the same payload over the same link
 * with HTTP range resume (compare-http.ts). Ends with one JSON line of figures.
 */
import type { ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { stopChild } from '../platform/child-process.ts';
import { keygen } from '../publisher/keys.ts';
import { mulberry32 } from '../util/random.ts';
import { runHttpBaseline, tcpFloorSeconds, type HttpRunResult } from './compare-http.ts';
import { runFaults, scheduleFaults } from './faults.ts';
import { describeLink, needsKernel, type LinkSpec } from './link-profiles.ts';
import type { LinkProxy } from './link-proxy.ts';
import { NetnsLink } from './netns-link.ts';
import { pinnedOf, senderSampler, type SenderPinned } from './sender-pacing.ts';
import { congestionControls, reportedRtoMaxMs, rtoMaxArg } from './tcp-sysctls.ts';
import { hostCongestionControl } from '../platform/tcp-senders.ts';
import { counterDelta, type LinkCounters, type UpTcp } from './link-counters.ts';
import { CounterSampler, readingAtDownloaded, sumSent, type SentByType } from './uplink.ts';
import { collectEnds, deviceHostArgs, hostReady, linkFromArgs, unpinActive, unpinMode, writeSimUpdate, type DeviceEnd, type Exec, type SiteRunOptions } from './sim-support.ts';
import { localExec, netnsExec, publishSimRelease, releaseHeld, startSimBroker, startSiteProxy, tracker, writePayloadFile, type SimHeld } from './sim-run.ts';

export interface FleetSimOptions extends SiteRunOptions {
  kills: number;
  kernel: boolean;
  broker: 'aedes' | 'mosquitto';
  seed: number;
  /** Uplink (site → server) rate and loss when they differ from `rateKbit` / `lossPercent`. */
  rateUpKbit?: number;
  lossUpPercent?: number;
  /** One-way delay and ± jitter, ms (kernel link only). */
  delayMs?: number;
  jitterMs?: number;
  /** Also send the payload with HTTP range resume over the same link (kernel link only). */
  compareHttp?: boolean;
  profile?: string | null;
  /** The broker resets connections its host's BBR pins (`fleet broker --unpin-senders on|off`; aedes); undefined: the broker's default, auto. */
  unpin?: boolean;
}

export interface HttpComparison {
  http: HttpRunResult;
  /** The ratios compare the fleet's downloadSeconds (payload on disk) with HTTP's seconds. */
  /** The least time TCP needs (compare-http.ts tcpFloorSeconds). */
  floorSeconds: number | null;
  fleetOverHttpSeconds: number;
  fleetOverFloor: number | null;
  httpOverFloor: number | null;
  /** Uplink bytes on the wire per MiB of payload delivered. */
  fleetUpPerMiB: number;
  /** The fleet's uplink up to the last device's payload on disk (HTTP's covers its fetch only). */
  fleetUpToDownloadedPerMiB: number | null;
  httpUpPerMiB: number;
  fleetOverHttpUpBytes: number;
  /** Like for like: the fleet's uplink up to the last payload on disk ÷ HTTP's (its fetch). */
  fleetOverHttpUpBytesToDownloaded: number | null;
  fleetOverHttpDownBytes: number;
}

export interface FleetSimResult {
  broker: string;
  link: string;
  devices: number;
  completed: number;
  seconds: number;
  /** Until the last device had the whole payload on disk (before its check and apply): what HTTP's time compares with. */
  downloadSeconds: number | null;
  payloadBytes: number;
  overheadMean: number;
  overheadMax: number;
  upBytesPerDevice: number;
  reconnects: number;
  /** Of `reconnects`, those the silence watch made (the rest: keepalives lapsing, connections broken). */
  silentReconnects: number;
  duplicates: number;
  /** Nudges (a PINGREQ on a silent connection, device/silence-watch.ts), over all devices. */
  nudges: number;
  /** Bytes of packets under way when a connection closed (thrown away), over all devices. */
  partialBytesDropped: number;
  /** Retained messages received (the release and trust again at each reconnect), bytes over all devices. */
  retainedBytesIn: number;
  badChunks: number;
  cuts: number;
  kills: number;
  timeOverIdeal: number | null;
  /** Bytes on the wire at the site end of a kernel link during the transfer (null on the proxy). */
  wireDown: number | null;
  wireUp: number | null;
  /** Packets the site sent on a kernel link (TCP ACKs included), and the uplink bytes up to the last device's payload on disk. */
  wireUpPackets: number | null;
  wireUpToDownloaded: number | null;
  /** The devices' MQTT packets by type (`publish <topic kind>`): to their acks, and to their payload on disk. */
  upSent: SentByType;
  upSentToDownloaded: SentByType;
  /** Kernel link, release to the last device's end: the downlink's tbf drops (queue overflow) and the server side's TCP retransmissions. */
  downQueue?: { tbfDrops: number; retransSegs: number };
  /** Kernel link, the same span: the site's TCP segments sent, and of them sent again (link-netns `upTcp`). */
  upTcp?: UpTcp;
  /** Kernel link, the same span: how long the broker's connections sat with BBR's rate pinned low (sender-pacing.ts; null without BBR). */
  senderPinned?: SenderPinned | null;
  compareHttp?: HttpComparison;
}

/** The link of a run, from the options. */
export function specOf(o: FleetSimOptions): LinkSpec {
  return {
    downKbit: o.rateKbit,
    upKbit: o.rateUpKbit ?? o.rateKbit,
    delayMs: o.delayMs ?? 0,
    jitterMs: o.jitterMs ?? 0,
    lossDownPercent: o.lossPercent,
    lossUpPercent: o.lossUpPercent ?? o.lossPercent,
    cuts: o.cuts,
    cutSeconds: o.cutSeconds,
  };
}

const ratio = (a: number, b: number): number => Number((a / b).toFixed(3));

/** Where each side runs: the two ends of the kernel link (namespaces), or both here behind the userspace proxy. */
async function openSimLink(o: FleetSimOptions, held: SimHeld): Promise<{ srvExec: Exec; siteExec: Exec; brokerHost: string }> {
  if (o.kernel) {
    const ok = NetnsLink.available();
    if (!ok.ok) throw new Error(`--kernel needs: ${ok.reason}`);
    const l = (held.link = await NetnsLink.create({
      name: `s${process.pid % 100000}`,
      lossPercent: o.lossPercent,
      lossUpPercent: o.lossUpPercent,
      rateKbit: o.rateKbit || undefined,
      rateUpKbit: o.rateUpKbit || undefined,
      delayMs: o.delayMs,
      jitterMs: o.jitterMs,
      seed: o.seed,
      congestion: o.congestion,
      rtoMaxMs: o.rtoMaxMs,
    }));
    return { srvExec: netnsExec(l, 'srv'), siteExec: netnsExec(l, 'site'), brokerHost: l.srvAddress };
  }
  if (needsKernel(specOf(o))) throw new Error('--loss, --loss-up, --delay, --jitter, --rate-up and --profile need --kernel (the proxy carries TCP streams, not packets)');
  if (o.compareHttp) throw new Error('--compare-http needs --kernel (both transfers are measured on the same kernel link)');
  return { srvExec: localExec, siteExec: localExec, brokerHost: '127.0.0.1' };
}

/** Starts the site's device host (all the devices in one process); their ends are collected into `ends`. */
function deviceHostStarter(o: FleetSimOptions, held: SimHeld, siteExec: Exec, w: { deviceUrl: string; dir: string; trustFile: string; baseFile: string; ends: Map<string, DeviceEnd> }): () => ChildProcess {
  return () => {
    const host = siteExec(process.execPath, deviceHostArgs({ broker: w.deviceUrl, devices: o.devices, dir: path.join(w.dir, 'site'), trustFile: w.trustFile, baseFile: w.baseFile }));
    collectEnds(host, w.ends);
    // FLEET_SIM_HOST_LOG=FILE keeps the devices' log (with FLEET_LOG=debug: each request, chunk and reconnect, timed).
    const keep = process.env.FLEET_SIM_HOST_LOG;
    if (keep) host.stderr!.pipe(createWriteStream(keep, { flags: 'a' }));
    else host.stderr!.on('data', () => undefined);
    held.children.push(host);
    return host;
  };
}

/** The run's figures from the devices' ends and the link's counters. */
function simResult(
  o: FleetSimOptions,
  w: { list: DeviceEnd[]; tStart: number; seconds: number; ideal: number; payloadBytes: number; targetDigest: string; cuts: number; kills: number; proxy?: LinkProxy },
  before: LinkCounters | undefined,
  after: LinkCounters | undefined,
  atDownloaded: LinkCounters | undefined,
): FleetSimResult {
  const { list, tStart, seconds, payloadBytes } = w;
  const ok = list.filter((e) => e.state === 'ok' && e.running === w.targetDigest);
  // With kills, one device's socket counters restart with each process: count at the proxy instead.
  const received = (e: DeviceEnd): number => (o.kills > 0 && w.proxy && o.devices === 1 ? w.proxy.deliveredDown : e.wire.bytesIn);
  const overheads = list.map((e) => received(e) / payloadBytes);
  const sum = (f: (e: DeviceEnd) => number): number => list.reduce((x, e) => x + f(e), 0);
  return {
    broker: o.broker,
    link: o.kernel ? `${(o.delayMs ?? 0) > 0 || (o.jitterMs ?? 0) > 0 ? 'tun delay line' : 'veth'}, ${describeLink({ ...specOf(o), profile: o.profile })}` : `proxy, ${o.rateKbit || '∞'} kbit/s`,
    devices: o.devices,
    completed: ok.length,
    seconds: Number(seconds.toFixed(2)),
    downloadSeconds: list.length && list.every((e) => e.downloaded) ? Number(((Math.max(...list.map((e) => e.downloaded!)) - tStart) / 1000).toFixed(2)) : null,
    payloadBytes,
    overheadMean: Number((overheads.reduce((x, y) => x + y, 0) / Math.max(1, overheads.length)).toFixed(4)),
    overheadMax: Number(Math.max(0, ...overheads).toFixed(4)),
    upBytesPerDevice: Math.round(sum((e) => e.wire.bytesOut) / Math.max(1, list.length)),
    reconnects: sum((e) => e.wire.connects - 1),
    silentReconnects: sum((e) => e.loss?.quickReconnects ?? 0),
    duplicates: sum((e) => e.stats.duplicateChunks),
    nudges: sum((e) => e.loss?.nudges ?? 0),
    partialBytesDropped: sum((e) => e.loss?.partialBytesDropped ?? 0),
    retainedBytesIn: sum((e) => e.loss?.retainedBytesIn ?? 0),
    badChunks: sum((e) => e.stats.badChunks),
    cuts: w.cuts,
    kills: w.kills,
    timeOverIdeal: o.rateKbit ? Number((seconds / w.ideal).toFixed(3)) : null,
    wireDown: before && after ? after.rxBytes - before.rxBytes : null,
    wireUp: before && after ? after.txBytes - before.txBytes : null,
    wireUpPackets: before && after ? after.txPackets - before.txPackets : null,
    wireUpToDownloaded: before && atDownloaded ? atDownloaded.txBytes - before.txBytes : null,
    upSent: sumSent(list, 'sent'),
    upSentToDownloaded: sumSent(list, 'sentToDownloaded'),
  };
}

/** The same payload fetched by HTTP range resume over the same link, with the same cuts; the fleet's figures beside it. */
async function compareWithHttp(o: FleetSimOptions, link: NetnsLink, result: FleetSimResult, w: { port: number; dir: string; payload: Uint8Array; faults: ReturnType<typeof scheduleFaults> }): Promise<HttpComparison> {
  const payloadBytes = w.payload.byteLength;
  const http = await runHttpBaseline({
    link,
    port: w.port + 1,
    // The bytes devices fetch: the payload, not the publisher's update file (its integrity header stays with the publisher).
    payloadFile: await writePayloadFile(w.dir, w.payload),
    payloadBytes,
    devices: o.devices,
    faults: w.faults.filter((f) => f.kind === 'cut'),
    cutSeconds: o.cutSeconds,
    downKbit: o.rateKbit,
    dir: w.dir,
    idleSeconds: 10,
    timeoutSeconds: o.timeoutSeconds,
    log: o.log,
  });
  const delayed = (o.delayMs ?? 0) > 0 || (o.jitterMs ?? 0) > 0;
  const floor = tcpFloorSeconds(specOf(o), o.devices, payloadBytes, delayed ? 1500 : 1514);
  const mib = (o.devices * payloadBytes) / (1 << 20);
  // Like for like: HTTP's time ends when the file is on disk, so the fleet's does too.
  const fleetSeconds = result.downloadSeconds ?? result.seconds;
  return {
    http,
    floorSeconds: floor === null ? null : Number(floor.toFixed(2)),
    fleetOverHttpSeconds: ratio(fleetSeconds, http.seconds),
    fleetOverFloor: floor === null ? null : ratio(fleetSeconds, floor),
    httpOverFloor: floor === null ? null : ratio(http.seconds, floor),
    fleetUpPerMiB: Math.round(result.wireUp! / mib),
    fleetUpToDownloadedPerMiB: result.wireUpToDownloaded === null ? null : Math.round(result.wireUpToDownloaded / mib),
    httpUpPerMiB: Math.round(http.wireUp / mib),
    fleetOverHttpUpBytes: ratio(result.wireUp!, http.wireUp),
    fleetOverHttpUpBytesToDownloaded: result.wireUpToDownloaded === null ? null : ratio(result.wireUpToDownloaded, http.wireUp),
    fleetOverHttpDownBytes: ratio(result.wireDown!, http.wireDown),
  };
}

export async function runFleetSim(o: FleetSimOptions): Promise<FleetSimResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-sim-'));
  const held: SimHeld = { children: [] };
  const track = tracker(held);
  const rand = mulberry32(o.seed);
  try {
    const keys = await keygen(path.join(dir, 'keys'));
    const { update, baseFile, updateFile } = await writeSimUpdate(dir, o.size);
    const payloadBytes = update.payload.byteLength;
    o.log(`payload ${payloadBytes} bytes, ${o.devices} devices, broker ${o.broker}, ${o.kernel ? 'kernel link' : 'proxy link'}`);

    const { srvExec, siteExec, brokerHost } = await openSimLink(o, held);
    const port = 20000 + Math.floor(rand() * 20000);
    const brokerUrl = await startSimBroker(o.broker, srvExec, track, brokerHost, port, dir, o.unpin);
    const deviceUrl = o.kernel ? brokerUrl : await startSiteProxy(held, brokerHost, port, o.rateKbit);
    const { link, proxy } = held;
    const ends = new Map<string, DeviceEnd>();
    const startHost = deviceHostStarter(o, held, siteExec, { deviceUrl, dir, trustFile: keys.trustFile, baseFile, ends });
    // The devices run (connected, subscribed, idle) before the release comes, as in the field: the
    // transfer is timed from the release, not from the start of a Node process on a loaded machine.
    let host = startHost();
    await hostReady(host);
    await new Promise((r) => setTimeout(r, 500));
    const before = await link?.reading();
    const sampler = link ? new CounterSampler(() => link.counters()) : undefined;
    const senders = link ? senderSampler(link) : undefined;
    sampler?.start();
    senders?.start();
    await publishSimRelease(srvExec, track, keys, updateFile, brokerUrl);
    const t0 = Date.now();
    const ideal = o.rateKbit ? (o.devices * payloadBytes * 8) / (o.rateKbit * 1000) : 2;
    const faults = scheduleFaults(rand, ideal, o.cuts, o.kills);
    const { cuts, kills } = await runFaults({
      faults: [...faults],
      t0,
      finished: () => ends.size >= o.devices,
      cutSeconds: o.cutSeconds,
      link,
      proxy,
      log: o.log,
      deadline: t0 + o.timeoutSeconds * 1000,
      kill: async () => {
        const exited = new Promise((r) => host.once('exit', r));
        process.kill(host.pid!, 'SIGKILL');
        await exited;
        host = startHost();
      },
    });
    const deadline = t0 + o.timeoutSeconds * 1000;
    while (ends.size < o.devices && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const list = [...ends.values()];
    // A device may begin while the publish command is still exiting: time from whichever came first.
    const tStart = Math.min(t0, ...list.map((e) => e.started ?? t0));
    const seconds = (Date.now() - tStart) / 1000;
    // Sampling stops first: a sample read after `after` would count more than the whole run.
    await sampler?.stop();
    await senders?.stop();
    const after = await link?.reading();
    const atDownloaded = readingAtDownloaded(list, sampler, after?.counters);
    const result = simResult(o, { list, tStart, seconds, ideal, payloadBytes, targetDigest: update.targetDigest, cuts, kills, proxy }, before?.counters, after?.counters, atDownloaded);
    if (before && after) {
      result.downQueue = counterDelta(before.queue, after.queue);
      result.upTcp = counterDelta(before.up, after.up);
    }
    if (senders) result.senderPinned = pinnedOf(senders, port, o.rateKbit);
    if (o.compareHttp && link) {
      await Promise.all(held.children.splice(held.children.indexOf(host), 1).map((c) => stopChild(c, 2000).catch(() => undefined)));
      o.log(`fleet: ${JSON.stringify(result)}`);
      result.compareHttp = await compareWithHttp(o, link, result, { port, dir, payload: update.payload, faults });
    }
    return result;
  } finally {
    await releaseHeld(held, dir);
  }
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      devices: { type: 'string', default: '3' },
      size: { type: 'string', default: '262144' },
      profile: { type: 'string' },
      loss: { type: 'string' },
      'loss-up': { type: 'string' },
      rate: { type: 'string' },
      'rate-up': { type: 'string' },
      delay: { type: 'string' },
      jitter: { type: 'string' },
      cuts: { type: 'string' },
      'cut-seconds': { type: 'string' },
      kills: { type: 'string', default: '0' },
      kernel: { type: 'boolean', default: false },
      broker: { type: 'string', default: 'aedes' },
      compare: { type: 'boolean', default: false },
      'compare-http': { type: 'boolean', default: false },
      seed: { type: 'string', default: '1' },
      congestion: { type: 'string' },
      'rto-max': { type: 'string' },
      unpin: { type: 'boolean' },
      timeout: { type: 'string', default: '600' },
    },
    allowNegative: true,
  });
  const spec = linkFromArgs('sim:fleet', a.profile, a);
  const kernel = a.kernel === true || a.profile !== undefined || a['compare-http'] === true;
  const base = {
    devices: Number(a.devices),
    size: Number(a.size),
    lossPercent: spec.lossDownPercent,
    lossUpPercent: spec.lossUpPercent,
    rateKbit: spec.downKbit,
    rateUpKbit: spec.upKbit,
    delayMs: spec.delayMs,
    jitterMs: spec.jitterMs,
    cuts: spec.cuts,
    cutSeconds: spec.cutSeconds,
    kills: Number(a.kills),
    kernel,
    seed: Number(a.seed),
    congestion: a.congestion,
    rtoMaxMs: rtoMaxArg(a['rto-max']),
    profile: spec.profile,
    timeoutSeconds: Number(a.timeout),
    compareHttp: a['compare-http'] === true,
    unpin: a.unpin,
    log: (s: string) => process.stderr.write(s + '\n'),
  };
  if (base.compareHttp && base.kills > 0) {
    process.stderr.write('sim:fleet: --compare-http does not take --kills (HTTP has no device process to kill): drop one of them\n');
    process.exit(2);
  }
  if (a.compare) {
    const aedes = await runFleetSim({ ...base, broker: 'aedes' });
    process.stderr.write(JSON.stringify(aedes) + '\n');
    const mosquitto = await runFleetSim({ ...base, broker: 'mosquitto' });
    process.stderr.write(JSON.stringify(mosquitto) + '\n');
    process.stdout.write(JSON.stringify({ aedes, mosquitto, aedesOverMosquittoSeconds: Number((aedes.seconds / mosquitto.seconds).toFixed(3)) }) + '\n');
    return;
  }
  const r = await runFleetSim({ ...base, broker: a.broker === 'mosquitto' ? 'mosquitto' : 'aedes' });
  process.stdout.write(
    JSON.stringify({
      ...r,
      congestion: kernel ? (a.congestion ?? congestionControls().hostDefault) : null,
      rtoMaxMs: kernel ? reportedRtoMaxMs(base.rtoMaxMs) : null,
      unpin: unpinMode(base.unpin),
      unpinActive: unpinActive(r.broker, base.unpin, kernel ? (a.congestion ?? congestionControls().hostDefault) : hostCongestionControl()),
      loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))),
    }) + '\n',
  );
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
