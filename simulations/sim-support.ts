import { spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FLEET_BIN } from '../platform/child-process.ts';
import { ssAvailable } from '../platform/tcp-senders.ts';
import { unpinDecision, type UnpinMode } from '../broker/pinned-senders.ts';
import type { DeviceAgent } from '../device/agent.ts';
import type { MqttTransport } from '../transport/mqtt.ts';
import { LinkSpecError, resolveLink, type LinkFlagName } from './link-profiles.ts';
import { synthesizeModel, synthesizeUpdate } from '../publisher/synth.ts';
import { encodeUpdateFile } from '../protocol/update-file.ts';

/** What sim:fleet and sim:gateway both take: the devices and payload, the link's rate, loss and cuts, the run's bound and log. */
export interface SiteRunOptions {
  devices: number;
  size: number;
  lossPercent: number;
  rateKbit: number;
  cuts: number;
  cutSeconds: number;
  timeoutSeconds: number;
  log: (line: string) => void;
  /** Kernel link: the TCP congestion control of its connections (`--congestion`); default the host's. */
  congestion?: string;
  /** Kernel link: the cap on TCP's retransmission backoff in both namespaces, ms (`--rto-max`). */
  rtoMaxMs?: number;
}

/** Start a command on one side of the link (a namespace, or this host). */
export type Exec = (cmd: string, args: string[]) => ChildProcess;

export function findMosquittoBinary(): string | undefined {
  for (const p of ['/usr/sbin/mosquitto', '/usr/bin/mosquitto']) if (spawnSync(p, ['-h']).error === undefined) return p;
  return undefined;
}

/** The processes that make up the broker side: Aedes with its update server, or Mosquitto plus `fleet serve`. */
/** `unpin`: `fleet broker --unpin-senders` on or off; undefined leaves the broker's default (auto). */
export async function brokerCommands(kind: 'aedes' | 'mosquitto', host: string, port: number, dataDir: string, unpin?: boolean): Promise<Array<{ cmd: string; args: string[]; waitForPort: boolean }>> {
  if (kind === 'aedes') {
    const unpinArgs = unpin === undefined ? [] : ['--unpin-senders', unpinMode(unpin)];
    return [{ cmd: process.execPath, args: [FLEET_BIN, 'broker', '--host', host, '--port', String(port), '--data-dir', dataDir, ...unpinArgs], waitForPort: true }];
  }
  if (unpin) throw new Error('--unpin is a `fleet broker` option: it needs --broker aedes');
  const bin = findMosquittoBinary();
  if (!bin) throw new Error('mosquitto is not installed (apt-get install mosquitto)');
  const conf = path.join(dataDir, 'mosquitto.conf');
  await fs.mkdir(dataDir, { recursive: true });
  await fs.writeFile(conf, `listener ${port} ${host}\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n`);
  return [
    { cmd: bin, args: ['-c', conf], waitForPort: true },
    { cmd: process.execPath, args: [FLEET_BIN, 'serve', '--broker', `mqtt://${host}:${port}`, '--data-dir', path.join(dataDir, 'store')], waitForPort: false },
  ];
}

/** Wait until something listens on host:port, probing from the same side. */
export async function waitForPortIn(exec: Exec, host: string, port: number, wait: boolean, timeoutMs = 15_000): Promise<void> {
  if (!wait) {
    await new Promise((r) => setTimeout(r, 1500));
    return;
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const probe = exec(process.execPath, ['-e', `const s=require('net').connect(${port},'${host}',()=>{s.destroy();process.exit(0)});s.on('error',()=>process.exit(1))`]);
    const code = await new Promise<number | null>((r) => probe.once('exit', r));
    if (code === 0) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * What a device host (simulations/device-host.ts, bench/fleet-worker.ts) prints,
 * one JSON line per device, when the device reaches a terminal state.
 */
export interface DeviceEnd {
  device: string;
  state: string;
  running: string;
  reason: string | null;
  wire: { bytesIn: number; bytesOut: number; connects: number };
  stats: { duplicateChunks: number; badChunks: number };
  /** Reconnects the silence watch made, and received bytes that were no new message: parts of packets on closed connections, retained messages. */
  loss?: { quickReconnects: number; nudges?: number; partialBytesDropped: number; retainedBytesIn: number };
  time: number;
  /** When the device began to download (its first `downloading` status), ms since the epoch. */
  started?: number;
  /** When the payload was all on disk (the first status after `downloading`), ms since the epoch. */
  downloaded?: number;
  /** MQTT packets the device sent since it started, by type (`publish <topic kind>`): up to its end, up to `downloaded`, and before `started`. */
  sent?: Record<string, { packets: number; bytes: number }>;
  sentToDownloaded?: Record<string, { packets: number; bytes: number }>;
  sentBeforeStarted?: Record<string, { packets: number; bytes: number }>;
}

/** Prints the device's DeviceEnd line once, when it reaches a terminal state for a release. */
export function reportEnd(id: string, agent: DeviceAgent, transport: MqttTransport, ended: Set<string>): void {
  let downloaded: number | undefined;
  let started: number | undefined;
  let sentToDownloaded: DeviceEnd['sent'];
  let sentBeforeStarted: DeviceEnd['sent'];
  const sentNow = (): DeviceEnd['sent'] => JSON.parse(JSON.stringify(transport.sent)) as DeviceEnd['sent'];
  agent.onStatus((s) => {
    if (s.state === 'downloading' && started === undefined) {
      started = Date.now();
      sentBeforeStarted = sentNow();
    } else if (s.state === 'downloading') return;
    else if (started !== undefined && downloaded === undefined) {
      downloaded = Date.now();
      sentToDownloaded = sentNow();
    }
    const terminal = s.state === 'ok' || s.state === 'rejected' || s.state === 'rolled_back' || (s.state === 'failed' && s.reason === 'corrupt-source');
    if (!terminal || ended.has(id) || s.target === null) return;
    ended.add(id);
    const end: DeviceEnd = {
      device: id,
      state: s.state,
      running: s.running,
      reason: s.reason,
      wire: transport.stats(),
      stats: agent.stats,
      loss: { quickReconnects: transport.quickReconnects, nudges: transport.nudges, ...transport.loss },
      time: Date.now(),
      started,
      downloaded,
      sent: sentNow(),
      sentToDownloaded,
      sentBeforeStarted,
    };
    process.stdout.write(JSON.stringify(end) + '\n');
  });
}

/** Calls `onLine` for every JSON line a child prints on stdout (other lines are skipped). */
export function readLines(child: ChildProcess, onLine: (j: Record<string, unknown>) => void): void {
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        onLine(JSON.parse(line) as Record<string, unknown>);
      } catch {
        /* not a JSON line */
      }
    }
  });
}

/** Resolves once the device host says its devices run (connected, subscribed, idle). */
export function hostReady(host: ChildProcess): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('the device host did not start its devices in 120 s')), 120_000);
    readLines(host, (j) => {
      if (typeof j.ready === 'number') {
        clearTimeout(t);
        resolve();
      }
    });
    host.once('exit', (c) => reject(new Error(`the device host exited ${c} before its devices started`)));
  });
}

/** Node's arguments for the device host (device-host.ts): `devices` agents of model `sim` in group `site`, in one process. */
export function deviceHostArgs(o: { broker: string; devices: number; dir: string; trustFile: string; baseFile: string; idPrefix?: string }): string[] {
  const host = new URL('./device-host.ts', import.meta.url).pathname;
  const args = ['--import', 'tsx', host, '--broker', o.broker, '--devices', String(o.devices), '--dir', o.dir, '--trust', o.trustFile, '--initial', o.baseFile];
  return [...args, '--model', 'sim', '--group', 'site', ...(o.idPrefix === undefined ? [] : ['--id-prefix', o.idPrefix])];
}

/** Collects the first DeviceEnd line of each device a host prints. */
export function collectEnds(host: ChildProcess, ends: Map<string, DeviceEnd>): void {
  readLines(host, (j) => {
    if (typeof j.device === 'string' && !ends.has(j.device)) ends.set(j.device, j as unknown as DeviceEnd);
  });
}

/** Model layers sized so a rank-r update is about `size` bytes. */
export function modelFor(size: number): { layers: Array<[number, number]>; rank: number } {
  const d = 512;
  const layers: Array<[number, number]> = [
    [d, d],
    [d, d],
    [d, d],
    [d, d],
  ];
  const perRank = layers.length * 2 * d * 4;
  return { layers, rank: Math.max(1, Math.min(d / 2 - 1, Math.round(size / perRank))) };
}

const LINK_FLAGS: readonly LinkFlagName[] = ['rate', 'rate-up', 'delay', 'jitter', 'loss', 'loss-up', 'cuts', 'cut-seconds'];

/**
 * The link of a simulation command from its parsed flags (given ones over `defaults`, over the
 * profile's): a bad value or an unknown profile ends the command with one line and exit 2.
 */
export function linkFromArgs(command: string, profile: string | undefined, args: Partial<Record<string, unknown>>, defaults: Partial<Record<LinkFlagName, string>> = {}): ReturnType<typeof resolveLink> {
  const flags: Partial<Record<LinkFlagName, string>> = { ...defaults };
  for (const f of LINK_FLAGS) if (typeof args[f] === 'string') flags[f] = args[f];
  try {
    return resolveLink(profile, flags);
  } catch (e) {
    if (e instanceof LinkSpecError) {
      process.stderr.write(`${command}: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
}

/** The simulation's model and its update (of about `size` payload bytes), written to `dir`. */
export async function writeSimUpdate(dir: string, size: number): Promise<{ update: ReturnType<typeof synthesizeUpdate>; baseFile: string; updateFile: string }> {
  const { layers, rank } = modelFor(size);
  const base = synthesizeModel(3, layers);
  const update = synthesizeUpdate(base, rank, 4);
  const baseFile = path.join(dir, 'base.safetensors');
  const updateFile = path.join(dir, 'update.cbor');
  await fs.writeFile(baseFile, base);
  await fs.writeFile(updateFile, encodeUpdateFile(update.payload));
  return { update, baseFile, updateFile };
}

/** Whether the broker's pinned-sender watch ran: the same decision `fleet broker` makes (broker/pinned-senders.ts). */
export function unpinActive(broker: string, unpin: boolean | undefined, congestion: string | undefined): boolean {
  if (broker !== 'aedes') return false;
  return unpinDecision(unpinMode(unpin), { congestion, ss: ssAvailable() }).on;
}

/** The simulations' `--unpin` / `--no-unpin` / neither as `fleet broker --unpin-senders`'s mode. */
export function unpinMode(unpin: boolean | undefined): UnpinMode {
  return unpin === undefined ? 'auto' : unpin ? 'on' : 'off';
}
