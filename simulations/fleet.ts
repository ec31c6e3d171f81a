/**
 * A fleet behind one impaired link (a site), end to end with real processes:
 *
 *   npm run sim:fleet -- --devices N --size BYTES [--loss P] [--rate KBIT] [--cuts K]
 *       [--cut-seconds S] [--kills K] [--kernel] [--broker aedes|mosquitto] [--compare]
 *
 * The broker (with its update server) runs as its own process; the devices
 * run as real agents (one MQTT connection, directory, bitmap each) in a
 * device-host process. Without --kernel the site link is the in-process TCP
 * proxy (bandwidth shared by the site, cuts); with --kernel it is a veth pair
 * between two network namespaces with nftables packet loss and a tbf rate
 * cap (root only). Ends with one JSON line of figures.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { FLEET_BIN, stopChild } from '../platform/child-process.ts';
import { keygen } from '../publisher/keys.ts';
import { synthesizeModel, synthesizeUpdate } from '../publisher/synth.ts';
import { mulberry32 } from '../util/random.ts';
import { LinkProxy } from './link-proxy.ts';
import { NetnsLink } from './netns-link.ts';
import { brokerCommands, collectEnds, modelFor, waitForPortIn, type DeviceEnd, type Exec } from './sim-support.ts';
import { encodeUpdateFile } from '../protocol/update-file.ts';

const HOST_SCRIPT = new URL('./device-host.ts', import.meta.url).pathname;

export interface FleetSimOptions {
  devices: number;
  size: number;
  lossPercent: number;
  rateKbit: number;
  cuts: number;
  cutSeconds: number;
  kills: number;
  kernel: boolean;
  broker: 'aedes' | 'mosquitto';
  seed: number;
  timeoutSeconds: number;
  log: (line: string) => void;
}

export interface FleetSimResult {
  broker: string;
  link: string;
  devices: number;
  completed: number;
  seconds: number;
  payloadBytes: number;
  overheadMean: number;
  overheadMax: number;
  upBytesPerDevice: number;
  reconnects: number;
  duplicates: number;
  badChunks: number;
  cuts: number;
  kills: number;
  timeOverIdeal: number | null;
}

export async function runFleetSim(o: FleetSimOptions): Promise<FleetSimResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-sim-'));
  const children: ChildProcess[] = [];
  let link: NetnsLink | undefined;
  let proxy: LinkProxy | undefined;
  const rand = mulberry32(o.seed);
  try {
    const keys = await keygen(path.join(dir, 'keys'));
    const { layers, rank } = modelFor(o.size);
    const base = synthesizeModel(3, layers);
    const update = synthesizeUpdate(base, rank, 4);
    const baseFile = path.join(dir, 'base.safetensors');
    const updateFile = path.join(dir, 'update.cbor');
    await fs.writeFile(baseFile, base);
    await fs.writeFile(updateFile, encodeUpdateFile(update.payload));
    const payloadBytes = update.payload.byteLength;
    o.log(`payload ${payloadBytes} bytes, ${o.devices} devices, broker ${o.broker}, ${o.kernel ? 'kernel link' : 'proxy link'}`);

    // Where each side runs.
    let srvExec: Exec;
    let siteExec: Exec;
    let brokerHost: string;
    if (o.kernel) {
      const ok = NetnsLink.available();
      if (!ok.ok) throw new Error(`--kernel needs: ${ok.reason}`);
      link = await NetnsLink.create({ name: `s${process.pid % 100000}`, lossPercent: o.lossPercent, rateKbit: o.rateKbit || undefined });
      const l = link;
      srvExec = (cmd, args) => l.exec('srv', cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      siteExec = (cmd, args) => l.exec('site', cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      brokerHost = l.srvAddress;
    } else {
      if (o.lossPercent > 0) throw new Error('--loss needs --kernel (the proxy carries TCP streams, not packets)');
      const local: Exec = (cmd, args) => spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      srvExec = local;
      siteExec = local;
      brokerHost = '127.0.0.1';
    }
    const port = 20000 + Math.floor(rand() * 20000);
    for (const c of await brokerCommands(o.broker, brokerHost, port, path.join(dir, 'broker'))) {
      const child = srvExec(c.cmd, c.args);
      children.push(child);
      child.stderr?.on('data', () => undefined);
      await waitForPortIn(srvExec, brokerHost, port, c.waitForPort);
    }
    const brokerUrl = `mqtt://${brokerHost}:${port}`;
    const publish = srvExec(process.execPath, [FLEET_BIN, 'publish', '--update', updateFile, '--key', keys.keyFile, '--rollout-key', keys.rolloutKeyFile, '--model', 'sim', '--group', 'site', '--broker', brokerUrl, '--yes']);
    children.push(publish);
    const pubExit = await new Promise<number | null>((r) => publish.once('exit', r));
    if (pubExit !== 0) throw new Error('publish failed');

    let deviceUrl = brokerUrl;
    if (!o.kernel) {
      proxy = new LinkProxy({ targetHost: brokerHost, targetPort: port, bytesPerSecond: o.rateKbit ? (o.rateKbit * 1000) / 8 : 0, sharedBandwidth: true });
      await proxy.start();
      deviceUrl = proxy.url;
    }
    const ends = new Map<string, DeviceEnd>();
    const startHost = (): ChildProcess => {
      const host = siteExec(process.execPath, ['--import', 'tsx', HOST_SCRIPT, '--broker', deviceUrl, '--devices', String(o.devices), '--dir', path.join(dir, 'site'), '--trust', keys.trustFile, '--initial', baseFile, '--model', 'sim', '--group', 'site']);
      collectEnds(host, ends);
      host.stderr!.on('data', () => undefined);
      children.push(host);
      return host;
    };
    const t0 = Date.now();
    let host = startHost();
    const ideal = o.rateKbit ? (o.devices * payloadBytes * 8) / (o.rateKbit * 1000) : 2;
    // Faults at random moments of the first 70 % of the ideal transfer time.
    const faults: Array<{ at: number; kind: 'cut' | 'kill' }> = [
      ...Array.from({ length: o.cuts }, () => ({ at: (0.1 + 0.6 * rand()) * ideal * 1000, kind: 'cut' as const })),
      ...Array.from({ length: o.kills }, () => ({ at: (0.1 + 0.6 * rand()) * ideal * 1000, kind: 'kill' as const })),
    ].sort((x, y) => x.at - y.at);
    let cuts = 0;
    let kills = 0;
    const deadline = t0 + o.timeoutSeconds * 1000;
    while (ends.size < o.devices && Date.now() < deadline) {
      const next = faults[0];
      if (next && Date.now() - t0 >= next.at && ends.size < o.devices) {
        faults.shift();
        if (next.kind === 'cut') {
          cuts++;
          o.log(`cut ${cuts} at ${((Date.now() - t0) / 1000).toFixed(1)} s for ${o.cutSeconds} s`);
          if (link) await link.cut();
          else proxy!.takeDown();
          await new Promise((r) => setTimeout(r, o.cutSeconds * 1000));
          if (link) await link.restore();
          else proxy!.restore();
        } else {
          kills++;
          o.log(`kill ${kills} of the device host at ${((Date.now() - t0) / 1000).toFixed(1)} s`);
          const exited = new Promise((r) => host.once('exit', r));
          process.kill(host.pid!, 'SIGKILL');
          await exited;
          host = startHost();
        }
        continue;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const seconds = (Date.now() - t0) / 1000;
    const list = [...ends.values()];
    const ok = list.filter((e) => e.state === 'ok' && e.running === update.targetDigest);
    // With kills, one device's socket counters restart with each process: count at the proxy instead.
    const received = (e: DeviceEnd): number => (o.kills > 0 && proxy && o.devices === 1 ? proxy.deliveredDown : e.wire.bytesIn);
    const overheads = list.map((e) => received(e) / payloadBytes);
    const result: FleetSimResult = {
      broker: o.broker,
      link: o.kernel ? `veth, ${o.lossPercent}% loss, ${o.rateKbit || '∞'} kbit/s` : `proxy, ${o.rateKbit || '∞'} kbit/s`,
      devices: o.devices,
      completed: ok.length,
      seconds: Number(seconds.toFixed(2)),
      payloadBytes,
      overheadMean: Number((overheads.reduce((x, y) => x + y, 0) / Math.max(1, overheads.length)).toFixed(4)),
      overheadMax: Number(Math.max(0, ...overheads).toFixed(4)),
      upBytesPerDevice: Math.round(list.reduce((x, e) => x + e.wire.bytesOut, 0) / Math.max(1, list.length)),
      reconnects: list.reduce((x, e) => x + e.wire.connects - 1, 0),
      duplicates: list.reduce((x, e) => x + e.stats.duplicateChunks, 0),
      badChunks: list.reduce((x, e) => x + e.stats.badChunks, 0),
      cuts,
      kills,
      timeOverIdeal: o.rateKbit ? Number((seconds / ideal).toFixed(3)) : null,
    };
    return result;
  } finally {
    await Promise.all(children.map((c) => stopChild(c, 2000).catch(() => undefined)));
    await proxy?.stop();
    await link?.destroy();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      devices: { type: 'string', default: '3' },
      size: { type: 'string', default: '262144' },
      loss: { type: 'string', default: '0' },
      rate: { type: 'string', default: '0' },
      cuts: { type: 'string', default: '0' },
      'cut-seconds': { type: 'string', default: '3' },
      kills: { type: 'string', default: '0' },
      kernel: { type: 'boolean', default: false },
      broker: { type: 'string', default: 'aedes' },
      compare: { type: 'boolean', default: false },
      seed: { type: 'string', default: '1' },
      timeout: { type: 'string', default: '600' },
    },
  });
  const base = {
    devices: Number(a.devices), size: Number(a.size), lossPercent: Number(a.loss), rateKbit: Number(a.rate), cuts: Number(a.cuts),
    cutSeconds: Number(a['cut-seconds']), kills: Number(a.kills), kernel: a.kernel === true, seed: Number(a.seed),
    timeoutSeconds: Number(a.timeout), log: (s: string) => process.stderr.write(s + '\n'),
  };
  if (a.compare) {
    const aedes = await runFleetSim({ ...base, broker: 'aedes' });
    process.stderr.write(JSON.stringify(aedes) + '\n');
    const mosquitto = await runFleetSim({ ...base, broker: 'mosquitto' });
    process.stderr.write(JSON.stringify(mosquitto) + '\n');
    process.stdout.write(JSON.stringify({ aedes, mosquitto, aedesOverMosquittoSeconds: Number((aedes.seconds / mosquitto.seconds).toFixed(3)) }) + '\n');
    return;
  }
  const r = await runFleetSim({ ...base, broker: a.broker === 'mosquitto' ? 'mosquitto' : 'aedes' });
  process.stdout.write(JSON.stringify(r) + '\n');
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
