/**
 * The set-up and teardown that sim:fleet (fleet.ts) and sim:gateway (gateway.ts) share:
 * where each side of the link runs, the broker on the server side, the userspace proxy
 * in front of it, `fleet publish` of the release, and the cleanup of all of it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { FLEET_BIN, stopChild } from '../platform/child-process.ts';
import type { KeygenResult } from '../publisher/keys.ts';
import { LinkProxy } from './link-proxy.ts';
import type { NetnsLink } from './netns-link.ts';
import { brokerCommands, waitForPortIn, type Exec } from './sim-support.ts';

/** What a simulation run cleans up, whatever happens: the processes it started, its kernel link or proxy. */
export interface SimHeld {
  children: ChildProcess[];
  link?: NetnsLink;
  proxy?: LinkProxy;
}

/** Stops what the run holds (its processes, then the proxy, then the kernel link) and removes its directory. */
export async function releaseHeld(held: SimHeld, dir: string): Promise<void> {
  await Promise.all(held.children.map((c) => stopChild(c, 2000).catch(() => undefined)));
  await held.proxy?.stop();
  await held.link?.destroy();
  await fs.rm(dir, { recursive: true, force: true });
}

/** A function that hands a child to the run's teardown, its stderr drained (a full pipe would stall it), and returns it. */
export function tracker(held: SimHeld): (c: ChildProcess) => ChildProcess {
  return (c) => {
    held.children.push(c);
    c.stderr?.on('data', () => undefined);
    return c;
  };
}

/** Runs a command on this host, its output piped. */
export const localExec: Exec = (cmd, args) => spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });

/** Runs a command in one end (namespace) of the kernel link, its output piped. */
export function netnsExec(link: NetnsLink, side: 'srv' | 'site'): Exec {
  return (cmd, args) => link.exec(side, cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The broker (and for Mosquitto, `fleet serve`) on the server side of the link, each waited for; its URL there. */
export async function startSimBroker(kind: 'aedes' | 'mosquitto', srvExec: Exec, track: (c: ChildProcess) => ChildProcess, host: string, port: number, dir: string, unpin?: boolean): Promise<string> {
  for (const c of await brokerCommands(kind, host, port, path.join(dir, 'broker'), unpin)) {
    const child = track(srvExec(c.cmd, c.args));
    // FLEET_SIM_BROKER_LOG=FILE: the broker's log (FLEET_LOG sets its level), appended to FILE.
    const logFile = process.env.FLEET_SIM_BROKER_LOG;
    if (logFile) child.stderr?.pipe(createWriteStream(logFile, { flags: 'a' }));
    await waitForPortIn(srvExec, host, port, c.waitForPort);
  }
  return `mqtt://${host}:${port}`;
}

/** The userspace proxy in front of the broker (the site's rate shared by all its connections), held for the teardown; the URL the site uses. */
export async function startSiteProxy(held: SimHeld, brokerHost: string, port: number, rateKbit: number): Promise<string> {
  held.proxy = new LinkProxy({ targetHost: brokerHost, targetPort: port, bytesPerSecond: rateKbit ? (rateKbit * 1000) / 8 : 0, sharedBandwidth: true });
  await held.proxy.start();
  return held.proxy.url;
}

/** `fleet publish` of the update (model `sim`, group `site`) on the server side; throws when it fails. */
export async function publishSimRelease(srvExec: Exec, track: (c: ChildProcess) => ChildProcess, keys: KeygenResult, updateFile: string, brokerUrl: string): Promise<void> {
  const args = [FLEET_BIN, 'publish', '--update', updateFile, '--key', keys.keyFile, '--rollout-key', keys.rolloutKeyFile];
  const publish = track(srvExec(process.execPath, [...args, '--model', 'sim', '--group', 'site', '--broker', brokerUrl, '--yes']));
  if ((await new Promise<number | null>((r) => publish.once('exit', r))) !== 0) throw new Error('publish failed');
}

/** The payload alone (what the update server serves) in `dir`, for the HTTP baseline to serve. */
export async function writePayloadFile(dir: string, payload: Uint8Array): Promise<string> {
  const file = path.join(dir, 'payload.bin');
  await fs.writeFile(file, payload);
  return file;
}
