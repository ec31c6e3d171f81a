/**
 * One download per site: N devices behind a site gateway, the gateway's
 * upstream link impaired, against the same N devices directly upstream over
 * the same link, in one run.
 *
 *   npm run sim:gateway -- [--devices 10] [--size 262144] [--loss 10] [--rate 512]
 *       [--cuts 2] [--cut-seconds 3] [--proxy] [--timeout 600]
 *       [--profile rural-3g|rural-lte-edge|satellite] [--rate-up K] [--loss-up P] [--delay MS]
 *       [--jitter MS] [--compare-http] [--skip-direct] [--seed S] [--congestion cubic|bbr|reno] [--rto-max MS]
 *
 * `--profile` and the link flags are those of sim:fleet (link-profiles.ts; kernel link only).
 * `--compare-http` then fetches the payload once by HTTP range resume over the same link, with
 * the same seed's cuts at the same moments after its start (compare-http.ts): the gateway's one
 * upstream fetch is the transfer HTTP is compared with, in time and in uplink bytes up to the
 * fetch done.
 *
 * As root with nftables and tc (simulations/netns-link.ts) the link is a veth
 * pair between two network namespaces: the upstream broker on the srv side;
 * the gateway and the devices on the site side (devices talk to the gateway
 * over the site namespace's loopback, which is not impaired). Otherwise, or
 * with --proxy, the link is the userspace TCP proxy (rate and cuts, no
 * packet loss), and a note says so.
 *
 * Phase 1 (gateway): the gateway and its devices run before the release is published; the
 * gateway fetches the update once, timed from the release, and the link is cut at the seed's
 * moments (sim:fleet's schedule, over one payload's ideal time) while it does. Phase 2 (direct):
 * the devices fetch from upstream themselves, with the same cuts (at 30 %
 * and 60 % of the ideal time). Figures: bytes the gateway's upstream socket
 * received and the bytes on the link (veth counters, headers and
 * retransmissions included), for each phase. Ends with one JSON line.
 */
import type { ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { FLEET_BIN, stopChild } from '../platform/child-process.ts';
import type { GatewayFileStatus } from '../gateway/status.ts';
import { keygen } from '../publisher/keys.ts';
import { runHttpBaseline, tcpFloorSeconds } from './compare-http.ts';
import { runFaults, scheduleFaults, type Fault } from './faults.ts';
import type { LinkSpec } from './link-profiles.ts';
import { NetnsLink } from './netns-link.ts';
import { pinnedOf, senderSampler } from './sender-pacing.ts';
import { congestionControls, reportedRtoMaxMs, rtoMaxArg } from './tcp-sysctls.ts';
import { hostReady, linkFromArgs, unpinActive, waitForPortIn, writeSimUpdate, type DeviceEnd, type Exec } from './sim-support.ts';
import { hostCongestionControl } from '../platform/tcp-senders.ts';
import { localExec, netnsExec, publishSimRelease, releaseHeld, startSimBroker, startSiteProxy, tracker, writePayloadFile, type SimHeld } from './sim-run.ts';
import type { SentByType } from './uplink.ts';
import { mulberry32 } from '../util/random.ts';
import type { GatewayHttpComparison, GatewaySimOptions, GatewaySimResult, PhaseResult } from './gateway-sim-types.ts';
import { rigOf, type Rig } from './gateway-rig.ts';

export type { GatewayHttpComparison, GatewaySimOptions, GatewaySimResult, PhaseResult } from './gateway-sim-types.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The link between the upstream side and the site: the kernel's (namespaces, loss) where it can, else the userspace proxy. */
async function openLink(o: GatewaySimOptions, held: SimHeld): Promise<{ kernel: boolean; note: string | null; srvExec: Exec; siteExec: Exec; brokerHost: string }> {
  const avail = NetnsLink.available();
  const kernel = !o.proxy && avail.ok;
  let note: string | null = null;
  if (!kernel) {
    note = o.proxy ? 'userspace proxy by request (--proxy): rate and cuts, no packet loss' : `kernel link unavailable (${avail.ok ? '' : avail.reason}); userspace proxy: rate and cuts, no packet loss`;
    o.log(`NOTE: ${note}`);
  }
  if (kernel) {
    const l0 = o.link;
    const l = (held.link = await NetnsLink.create({
      name: `g${process.pid % 100000}`,
      lossPercent: o.lossPercent,
      rateKbit: o.rateKbit || undefined,
      lossUpPercent: l0?.lossUpPercent,
      rateUpKbit: l0?.upKbit || undefined,
      delayMs: l0?.delayMs,
      jitterMs: l0?.jitterMs,
      seed: o.seed,
      congestion: o.congestion,
      rtoMaxMs: o.rtoMaxMs,
    }));
    return { kernel, note, srvExec: netnsExec(l, 'srv'), siteExec: netnsExec(l, 'site'), brokerHost: l.srvAddress };
  }
  return { kernel, note, srvExec: localExec, siteExec: localExec, brokerHost: '127.0.0.1' };
}

/** Phase 1 result, and what the HTTP comparison needs: when the fetch was done, the cut schedule, the uplink up to then. */
interface GatewayPhaseOutcome {
  phase: GatewaySimResult['gateway'];
  fetchSeconds: number | null;
  faults: Fault[];
  /** Link bytes up from the release to the fetch done, and what the gateway's upstream socket wrote in that time. */
  upToFetched: number | null;
  socketUpToFetched: number | null;
  /** The gateway's upstream MQTT packets by type over the same span. */
  sentToFetched: SentByType | null;
  /** Packets up the link over the same span (TCP's ACKs included). */
  upPacketsToFetched: number | null;
}

/** The gateway and the device host behind it, started and waited for (devices idle, the gateway connected upstream). */
async function startSite(rig: Rig): Promise<{ gateway: ChildProcess; host: ChildProcess; ends: Map<string, DeviceEnd>; readStatus: () => Promise<GatewayFileStatus | undefined> }> {
  const gwDir = path.join(rig.dir, 'gw');
  const gwPort = 40000 + (process.pid % 20000);
  const args = ['gateway', '--upstream', rig.upstreamUrl, '--listen', String(gwPort), '--host', '127.0.0.1', '--data-dir', gwDir, '--site', 'sim-site', '--group', 'site', '--model', 'sim', '--tick-ms', '200'];
  const gateway = rig.track(rig.siteExec(process.execPath, [FLEET_BIN, ...args]));
  // FLEET_SIM_HOST_LOG=DIR: the gateway's log (FLEET_LOG sets its level) in DIR/gateway.log, as the device hosts'.
  const logDir = process.env.FLEET_SIM_HOST_LOG;
  if (logDir) gateway.stderr?.pipe(createWriteStream(path.join(logDir, 'gateway.log'), { flags: 'a' }));
  await waitForPortIn(rig.siteExec, '127.0.0.1', gwPort, true);
  const readStatus = async (): Promise<GatewayFileStatus | undefined> => {
    try {
      return JSON.parse(await fs.readFile(path.join(gwDir, 'status.json'), 'utf8')) as GatewayFileStatus;
    } catch {
      return undefined;
    }
  };
  const ends = new Map<string, DeviceEnd>();
  const host = rig.startHost('mqtt://127.0.0.1:' + gwPort, 'gwdev', ends);
  await hostReady(host);
  const upDeadline = Date.now() + 60_000;
  while ((await readStatus())?.upstream.state !== 'connected') {
    if (Date.now() > upDeadline) throw new Error('the gateway did not connect upstream in 60 s');
    await sleep(100);
  }
  // As in the field, the site has been idle a while before a release: every device's start-up status
  // and presence are upstream already (on a narrow lossy uplink they took seconds, and went up inside
  // the fetch's time and bytes before issue 20's fifth pass).
  const relayDeadline = Date.now() + 60_000;
  for (let s = await readStatus(); !(s && s.devices >= rig.o.devices && s.relay.queued === 0); s = await readStatus()) {
    if (Date.now() > relayDeadline) {
      rig.o.log(`NOTE: the site's start-up statuses were not all relayed upstream in 60 s (${s?.devices ?? 0} devices seen, ${s?.relay.queued ?? '?'} queued)`);
      break;
    }
    await sleep(100);
  }
  return { gateway, host, ends, readStatus };
}

/**
 * Phase 1: the gateway and its devices run (connected, subscribed, idle) before the release is
 * published, as in the field and as in sim:fleet, so the fetch is timed from the release and not
 * from a Node start-up on a loaded machine; the link is cut at the seed's moments (sim:fleet's
 * schedule over one payload's ideal time) while the upstream fetch runs.
 */
async function gatewayPhase(rig: Rig, publish: () => Promise<void>): Promise<GatewayPhaseOutcome> {
  const { o } = rig;
  const { gateway, host: host1, ends: ends1, readStatus } = await startSite(rig);
  await sleep(500);
  const linkBefore1 = await rig.linkBytes();
  const packetsBefore = (await rig.link?.counters())?.txPackets;
  const before = await readStatus();
  const socketOutBefore = before?.fetched.wireBytesOut ?? 0;
  const sentBefore = before?.upstreamSent;
  let sentAtFetched: SentByType | undefined;
  const sampler = rig.sampler();
  const senders = rig.link ? senderSampler(rig.link) : undefined;
  sampler?.start();
  senders?.start();
  const t0 = Date.now();
  let releaseAt: number | undefined;
  await publish();
  const t1 = Date.now();
  const ideal = o.rateKbit ? (rig.payloadBytes * 8) / (o.rateKbit * 1000) : 2;
  const faults = scheduleFaults(mulberry32(o.seed ?? 1), ideal, o.cuts, 0);
  let fetchedAt: number | undefined;
  let firstSeen: number | undefined;
  let socketOutAtFetched: number | undefined;
  const deadline1 = t1 + o.timeoutSeconds * 1000;
  const cutsDone = runFaults({ faults: [...faults], t0: t1, finished: () => fetchedAt !== undefined, cutSeconds: o.cutSeconds, link: rig.link, proxy: rig.proxy, log: o.log, deadline: deadline1 });
  while (ends1.size < o.devices && Date.now() < deadline1) {
    const s = await readStatus();
    const now = Date.now();
    if (firstSeen === undefined && s && (s.fetching.length > 0 || s.fetched.payloadBytes > 0)) firstSeen = now;
    if (s?.lastReleaseAt !== undefined && s.lastReleaseAt >= t0) releaseAt = s.lastReleaseAt;
    if (fetchedAt === undefined && (s?.fetched.payloadBytes ?? 0) >= rig.payloadBytes) {
      // The moment the gateway held the payload, and its socket's figures then (before the site's
      // devices heard of the release and their statuses went up), where its status file says them.
      const st = s!.lastStored && s!.lastStored.at >= t0 ? s!.lastStored : undefined;
      fetchedAt = st?.at ?? now;
      socketOutAtFetched = st?.wireBytesOut ?? s!.fetched.wireBytesOut;
      sentAtFetched = st?.upstreamSent ?? s!.upstreamSent;
    }
    await sleep(100);
  }
  fetchedAt ??= Date.now(); // ends the cut schedule if the fetch never completed (fetchSeconds stays null below)
  const { cuts: cuts1 } = await cutsDone;
  const fetched = socketOutAtFetched !== undefined;
  // The publish command may exit after the release went out: time from whichever came first, its exit,
  // the gateway's status first showing the fetch, or the release's arrival there (its status file).
  const tStart = Math.min(t1, firstSeen ?? t1, releaseAt ?? t1);
  const seconds1 = (Date.now() - tStart) / 1000;
  await sleep(1500); // the last statuses go up
  const gs = await readStatus();
  await sampler?.stop();
  await senders?.stop();
  await stopChild(host1, 3000).catch(() => undefined);
  await stopChild(gateway, 5000).catch(() => undefined);
  const linkAfter1 = await rig.linkBytes();
  const atFetched = fetched ? (sampler?.around(fetchedAt) ?? (await rig.link?.counters())) : undefined;
  const gwPhase = {
    completed: rig.okCount(ends1),
    seconds: Number(seconds1.toFixed(2)),
    socketBytesIn: gs?.fetched.wireBytesIn ?? -1,
    linkBytesDown: linkAfter1[0] - linkBefore1[0],
    linkBytesUp: linkAfter1[1] - linkBefore1[1],
    cuts: cuts1,
    upstreamFetchedPayloadBytes: gs?.fetched.payloadBytes ?? -1,
    upstreamWireOut: gs?.fetched.wireBytesOut ?? -1,
    senderPinned: senders ? pinnedOf(senders, Number(new URL(rig.upstreamUrl).port), o.rateKbit) : null,
  };
  o.log(
    `gateway phase: ${gwPhase.completed}/${o.devices} ok in ${gwPhase.seconds} s; gateway socket in ${gwPhase.socketBytesIn} B (${(gwPhase.socketBytesIn / rig.payloadBytes).toFixed(3)} × payload); link down ${gwPhase.linkBytesDown} B, up ${gwPhase.linkBytesUp} B`,
  );
  return {
    phase: gwPhase,
    fetchSeconds: fetched ? (fetchedAt - tStart) / 1000 : null,
    faults,
    upToFetched: atFetched ? atFetched.txBytes - linkBefore1[1] : null,
    socketUpToFetched: fetched ? socketOutAtFetched! - socketOutBefore : null,
    sentToFetched: sentAtFetched ? sentSince(sentAtFetched, sentBefore) : null,
    upPacketsToFetched: atFetched && packetsBefore !== undefined ? atFetched.txPackets - packetsBefore : null,
  };
}

/** What was sent between two readings of the same counters (`upstreamSent` of the gateway's status file). */
function sentSince(now: SentByType, before: SentByType | undefined): SentByType {
  const out: SentByType = {};
  for (const [k, v] of Object.entries(now)) {
    const d = { packets: v.packets - (before?.[k]?.packets ?? 0), bytes: v.bytes - (before?.[k]?.bytes ?? 0) };
    if (d.packets > 0) out[k] = d;
  }
  return out;
}

/** Phase 2: the same devices directly upstream, the link cut at fixed fractions of the ideal time. */
async function directPhase(rig: Rig): Promise<PhaseResult> {
  const { o } = rig;
  const linkBefore2 = await rig.linkBytes();
  const t2 = Date.now();
  const ends2 = new Map<string, DeviceEnd>();
  const host2 = rig.startHost(rig.upstreamUrl, 'direct', ends2);
  const ideal = o.rateKbit ? (o.devices * rig.payloadBytes * 8) / (o.rateKbit * 1000) : 2;
  const cutAt = Array.from({ length: o.cuts }, (_, i) => (i + 1) / (o.cuts + 1));
  let cuts2 = 0;
  const deadline2 = t2 + o.timeoutSeconds * 1000;
  while (ends2.size < o.devices && Date.now() < deadline2) {
    if (cuts2 < o.cuts && Date.now() - t2 >= cutAt[cuts2] * ideal * 1000) await rig.cut(++cuts2, t2);
    else await sleep(100);
  }
  const seconds2 = (Date.now() - t2) / 1000;
  await stopChild(host2, 3000).catch(() => undefined);
  const linkAfter2 = await rig.linkBytes();
  const directPhase: PhaseResult = {
    completed: rig.okCount(ends2),
    seconds: Number(seconds2.toFixed(2)),
    socketBytesIn: [...ends2.values()].reduce((a, e) => a + e.wire.bytesIn, 0),
    linkBytesDown: linkAfter2[0] - linkBefore2[0],
    linkBytesUp: linkAfter2[1] - linkBefore2[1],
    cuts: cuts2,
    devicesSaw: devicesSaw([...ends2.values()], rig.payloadBytes),
  };
  o.log(
    `direct phase: ${directPhase.completed}/${o.devices} ok in ${directPhase.seconds} s; devices' sockets in ${directPhase.socketBytesIn} B (${(directPhase.socketBytesIn / rig.payloadBytes).toFixed(3)} × payload); link down ${directPhase.linkBytesDown} B, up ${directPhase.linkBytesUp} B; ${JSON.stringify(directPhase.devicesSaw)}`,
  );
  return directPhase;
}

function devicesSaw(ends: DeviceEnd[], payloadBytes: number): PhaseResult['devicesSaw'] {
  const sum = (f: (e: DeviceEnd) => number): number => ends.reduce((a, e) => a + f(e), 0);
  const maxOverPayload = Number((Math.max(0, ...ends.map((e) => e.wire.bytesIn)) / payloadBytes).toFixed(3));
  return { duplicateChunks: sum((e) => e.stats.duplicateChunks), reconnects: sum((e) => Math.max(0, e.wire.connects - 1)), quickReconnects: sum((e) => e.loss?.quickReconnects ?? 0), maxOverPayload };
}

/** The gateway's one upstream fetch against one HTTP range-resume fetch of the payload over the same link, with the same cut schedule. */
async function compareWithHttp(o: GatewaySimOptions, link: NetnsLink, w: { dir: string; port: number; payload: Uint8Array; gateway: GatewayPhaseOutcome }): Promise<GatewayHttpComparison> {
  const payloadBytes = w.payload.byteLength;
  const payloadFile = await writePayloadFile(w.dir, w.payload);
  const faults = w.gateway.faults.filter((f) => f.kind === 'cut');
  const spec: LinkSpec = o.link ?? { downKbit: o.rateKbit, upKbit: o.rateKbit, delayMs: 0, jitterMs: 0, lossDownPercent: o.lossPercent, lossUpPercent: o.lossPercent, cuts: o.cuts, cutSeconds: o.cutSeconds };
  const http = await runHttpBaseline({
    link,
    port: w.port + 1,
    payloadFile,
    payloadBytes,
    devices: 1,
    faults,
    cutSeconds: o.cutSeconds,
    downKbit: spec.downKbit,
    dir: w.dir,
    idleSeconds: 10,
    timeoutSeconds: o.timeoutSeconds,
    log: o.log,
  });
  const floor = tcpFloorSeconds(spec, 1, payloadBytes, spec.delayMs > 0 || spec.jitterMs > 0 ? 1500 : 1514);
  const { fetchSeconds, upToFetched, socketUpToFetched } = w.gateway;
  const r3 = (x: number): number => Number(x.toFixed(3));
  const mib = payloadBytes / (1 << 20);
  const up = w.gateway.phase.linkBytesUp;
  return {
    http,
    gatewayFetchSeconds: fetchSeconds === null ? null : Number(fetchSeconds.toFixed(2)),
    floorSeconds: floor === null ? null : Number(floor.toFixed(2)),
    gatewayFetchOverHttp: fetchSeconds === null ? null : r3(fetchSeconds / http.seconds),
    gatewayFetchOverFloor: fetchSeconds === null || floor === null ? null : r3(fetchSeconds / floor),
    gatewayUpPerMiB: up === null ? null : Math.round(up / mib),
    gatewayUpToFetchedPerMiB: upToFetched === null ? null : Math.round(upToFetched / mib),
    gatewaySocketUpToFetchedPerMiB: socketUpToFetched === null ? null : Math.round(socketUpToFetched / mib),
    httpUpPerMiB: Math.round(http.wireUp / mib),
    gatewayUpToFetchedOverHttp: upToFetched === null ? null : r3(upToFetched / http.wireUp),
    cutsAtMs: faults.map((f) => Math.round(f.at)),
    gatewaySentToFetched: w.gateway.sentToFetched,
    gatewayUpPacketsToFetched: w.gateway.upPacketsToFetched,
  };
}

export async function runGatewaySim(o: GatewaySimOptions): Promise<GatewaySimResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-gwsim-'));
  const held: SimHeld = { children: [] };
  const track = tracker(held);
  try {
    const keys = await keygen(path.join(dir, 'keys'));
    const { update, baseFile, updateFile } = await writeSimUpdate(dir, o.size);
    const payloadBytes = update.payload.byteLength;

    const { kernel, note, srvExec, siteExec, brokerHost } = await openLink(o, held);
    o.log(`payload ${payloadBytes} bytes, ${o.devices} devices, ${kernel ? `kernel link ${o.lossPercent}% loss ${o.rateKbit} kbit/s` : `proxy ${o.rateKbit} kbit/s`}, ${o.cuts} cuts of ${o.cutSeconds} s per phase`);
    const port = 20000 + (process.pid % 20000);
    const brokerUrl = await startSimBroker('aedes', srvExec, track, brokerHost, port, dir);
    const upstreamUrl = kernel ? brokerUrl : await startSiteProxy(held, brokerHost, port, o.rateKbit);
    const rig = rigOf(o, held, { dir, payloadBytes, upstreamUrl, siteExec, track, trustFile: keys.trustFile, baseFile, targetDigest: update.targetDigest });
    const gw = await gatewayPhase(rig, () => publishSimRelease(srvExec, track, keys, updateFile, brokerUrl));
    const gwPhase = gw.phase;
    const directPhase_ = o.skipDirect ? null : await directPhase(rig);
    const compareHttp = o.compareHttp && held.link ? await compareWithHttp(o, held.link, { dir, port, payload: update.payload, gateway: gw }) : undefined;
    return {
      compareHttp,
      link: kernel ? `veth, ${o.lossPercent}% loss, ${o.rateKbit || '∞'} kbit/s${o.link?.profile ? ` (${o.link.profile})` : ''}` : `proxy, ${o.rateKbit || '∞'} kbit/s`,
      devices: o.devices,
      payloadBytes,
      gateway: gwPhase,
      direct: directPhase_,
      gatewayOverPayload: Number((gwPhase.socketBytesIn / payloadBytes).toFixed(4)),
      directOverPayload: directPhase_ ? Number((directPhase_.socketBytesIn / payloadBytes).toFixed(4)) : null,
      gatewayLinkDownOverPayload: gwPhase.linkBytesDown !== null ? Number((gwPhase.linkBytesDown / payloadBytes).toFixed(4)) : null,
      linkDownRatio: gwPhase.linkBytesDown !== null && directPhase_?.linkBytesDown ? Number((gwPhase.linkBytesDown / directPhase_.linkBytesDown).toFixed(4)) : null,
      note,
    };
  } finally {
    await releaseHeld(held, dir);
  }
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      devices: { type: 'string', default: '10' },
      size: { type: 'string', default: '262144' },
      loss: { type: 'string' },
      rate: { type: 'string' },
      cuts: { type: 'string' },
      'cut-seconds': { type: 'string' },
      proxy: { type: 'boolean', default: false },
      timeout: { type: 'string', default: '600' },
      profile: { type: 'string' },
      'rate-up': { type: 'string' },
      'loss-up': { type: 'string' },
      delay: { type: 'string' },
      jitter: { type: 'string' },
      'compare-http': { type: 'boolean', default: false },
      'skip-direct': { type: 'boolean', default: false },
      seed: { type: 'string', default: '1' },
      congestion: { type: 'string' },
      'rto-max': { type: 'string' },
    },
  });
  // Without a profile, this simulation's own defaults (10 % loss, 512 kbit/s, 2 cuts of 3 s).
  const spec = linkFromArgs('sim:gateway', a.profile, a, a.profile ? {} : { loss: '10', rate: '512', cuts: '2', 'cut-seconds': '3' });
  if ((a['compare-http'] === true || a.profile !== undefined) && a.proxy === true) {
    process.stderr.write('sim:gateway: --profile and --compare-http need the kernel link: drop --proxy\n');
    process.exit(2);
  }
  const rtoMaxMs = rtoMaxArg(a['rto-max']);
  const r = await runGatewaySim({
    devices: Number(a.devices),
    size: Number(a.size),
    lossPercent: spec.lossDownPercent,
    rateKbit: spec.downKbit,
    cuts: spec.cuts,
    cutSeconds: spec.cutSeconds,
    link: spec,
    compareHttp: a['compare-http'] === true,
    skipDirect: a['skip-direct'] === true,
    seed: Number(a.seed),
    congestion: a.congestion,
    rtoMaxMs,
    proxy: a.proxy === true,
    timeoutSeconds: Number(a.timeout),
    log: (s) => process.stderr.write(s + '\n'),
  });
  const congestion = r.link.startsWith('proxy') ? null : (a.congestion ?? congestionControls().hostDefault);
  // The upstream broker runs with `fleet broker`'s default, --unpin-senders auto.
  const unpin = { unpin: 'auto', unpinActive: unpinActive('aedes', undefined, congestion ?? hostCongestionControl()) };
  process.stdout.write(JSON.stringify({ ...r, congestion, rtoMaxMs: congestion === null ? null : reportedRtoMaxMs(rtoMaxMs), ...unpin }) + '\n');
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
