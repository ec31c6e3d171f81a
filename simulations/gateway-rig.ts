/**
 * sim:gateway's rig (simulations/gateway.ts): what its two phases work with over the link the
 * run set up: the link's byte counters and cuts, the site's device hosts and their outcome.
 */
import type { ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import type { GatewaySimOptions } from './gateway-sim-types.ts';
import type { LinkProxy } from './link-proxy.ts';
import type { NetnsLink } from './netns-link.ts';
import type { SimHeld } from './sim-run.ts';
import { collectEnds, deviceHostArgs, type DeviceEnd, type Exec } from './sim-support.ts';
import { CounterSampler } from './uplink.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A running simulation: the link, its counters and cuts, the processes it started. */
export interface Rig {
  o: GatewaySimOptions;
  dir: string;
  payloadBytes: number;
  upstreamUrl: string;
  siteExec: Exec;
  track: (c: ChildProcess) => ChildProcess;
  /** [down, up] as seen at the site end of the link. */
  linkBytes: () => Promise<[number, number]>;
  cut: (n: number, t0: number) => Promise<void>;
  link: NetnsLink | undefined;
  proxy: LinkProxy | undefined;
  /** Samples the kernel link's counters (none on the proxy). */
  sampler: () => CounterSampler | undefined;
  startHost: (broker: string, prefix: string, ends: Map<string, DeviceEnd>) => ChildProcess;
  okCount: (ends: Map<string, DeviceEnd>) => number;
}

/** The link's counters and cuts, and the site's device hosts, over what the simulation set up. */
export function rigOf(o: GatewaySimOptions, held: SimHeld, w: Pick<Rig, 'dir' | 'payloadBytes' | 'upstreamUrl' | 'siteExec' | 'track'> & { trustFile: string; baseFile: string; targetDigest: string }): Rig {
  const { link, proxy } = held;
  /** [down, up] as seen at the site end of the link. */
  const linkBytes = async (): Promise<[number, number]> => {
    if (!link) return [proxy!.deliveredDown, proxy!.deliveredUp];
    const c = await link.counters();
    return [c.rxBytes, c.txBytes];
  };
  const cut = async (n: number, t0: number): Promise<void> => {
    o.log(`cut ${n} at ${((Date.now() - t0) / 1000).toFixed(1)} s for ${o.cutSeconds} s`);
    if (link) await link.cut();
    else proxy!.takeDown();
    await sleep(o.cutSeconds * 1000);
    if (link) await link.restore();
    else proxy!.restore();
  };
  const startHost = (broker: string, prefix: string, ends: Map<string, DeviceEnd>): ChildProcess => {
    const host = w.track(w.siteExec(process.execPath, deviceHostArgs({ broker, devices: o.devices, dir: path.join(w.dir, prefix), trustFile: w.trustFile, baseFile: w.baseFile, idPrefix: `${prefix}-` })));
    // FLEET_SIM_HOST_LOG=DIR: each device host's log (FLEET_LOG sets its level) in DIR/<phase>.log.
    const logDir = process.env.FLEET_SIM_HOST_LOG;
    if (logDir) host.stderr?.pipe(createWriteStream(path.join(logDir, `${prefix}.log`), { flags: 'a' }));
    collectEnds(host, ends);
    return host;
  };
  const okCount = (ends: Map<string, DeviceEnd>): number => [...ends.values()].filter((e) => e.state === 'ok' && e.running === w.targetDigest).length;

  const sampler = (): CounterSampler | undefined => (link ? new CounterSampler(() => link.counters()) : undefined);
  return { o, ...w, linkBytes, cut, link, proxy, sampler, startHost, okCount };
}
