/**
 * What a hostile packet costs (issue 14, hole 2):
 *
 *   npm run bench:hostile -- [--connections 8] [--declared 268435455] [--send 67108864] [--no-baseline]
 *
 * Broker: `fleet broker` in its own process; N raw TCP connections each send a
 * CONNECT whose fixed header declares DECLARED bytes, then stream up to SEND
 * bytes of filler, all at once. Device: `fleet device` in its own process
 * connected to a hostile "broker" that answers each CONNECT with a CONNACK and a
 * PUBLISH header declaring 200 MB, then streams filler; the device reconnects N
 * times (the baseline client: twice). For each, the rise of the process's peak RSS (VmHWM − VmRSS before).
 * The baseline (unless --no-baseline): the same against a bare Aedes and a bare
 * mqtt.js client (bench/hostile-baseline.ts), as they ran before the limit. Linux
 * only (/proc). Ends with one JSON line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { FLEET_BIN, stopChild } from '../platform/child-process.ts';
import { keygen } from '../publisher/keys.ts';
import { synthesizeModel } from '../publisher/synth.ts';
import { fixedHeader } from '../transport/packet-limit.ts';
import { freePort, procStatusKb, startProcess, started, track } from './fleet-brokers.ts';

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '8' },
    declared: { type: 'string', default: '268435455' },
    send: { type: 'string', default: String(64 * 1024 * 1024) },
    'no-baseline': { type: 'boolean', default: false },
  },
});
const N = Number(values.connections);
const DECLARED = Number(values.declared);
const SEND = Number(values.send);
const DEVICE_DECLARED = 200 * 1024 * 1024;
const MB = 1024 * 1024;
/** The bare client buffers every 200 MB packet: two show it (eight take minutes). */
const BASELINE_DEVICE_CONNECTIONS = Math.min(N, 2);
const BASELINE = new URL('./hostile-baseline.ts', import.meta.url).pathname;

async function stopAll(): Promise<void> {
  await Promise.all([...started].map((c) => stopChild(c)));
  started.clear();
}
process.on('SIGINT', () => void stopAll().then(() => process.exit(130)));

/** A process that listens on nothing (a device), logging to a file. */
function spawnLogged(args: string[], logFile: string): ChildProcess {
  const c = track(spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  const log = createWriteStream(logFile, { flags: 'a' });
  c.stdout!.pipe(log);
  c.stderr!.pipe(log);
  return c;
}

/** VmRSS and VmHWM (peak) of a process, in bytes. */
function memory(pid: number): { rss: number; peak: number } {
  return { rss: procStatusKb(pid, 'VmRSS') * 1024, peak: procStatusKb(pid, 'VmHWM') * 1024 };
}

/** Lets a fresh process settle (JIT, first GCs) so its peak so far is its resting size. */
const settle = (ms = 2000): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Streams filler after `header` until `max` bytes or the peer closes; resolves with the bytes written. */
async function flood(s: net.Socket, header: Buffer, max: number): Promise<number> {
  let closed = false;
  s.once('close', () => (closed = true));
  s.on('error', () => undefined);
  s.write(header);
  const piece = Buffer.alloc(64 * 1024, 0x61);
  let written = 0;
  while (!closed && written < max) {
    const ok = s.write(piece);
    written += piece.length;
    if (!ok && !s.destroyed) {
      await new Promise<void>((r) => {
        const go = (): void => {
          s.off('drain', go);
          s.off('close', go);
          r();
        };
        s.on('drain', go);
        s.on('close', go);
      });
    }
  }
  return written;
}

interface Attack {
  /** Peak RSS rise, bytes. */
  rise: number;
  restingRss: number;
  /** Bytes the attacker got to write (all connections). */
  written: number;
  /** Connections the victim closed before the declared body. */
  cut: number;
}

/** N connections at once to the broker on `port`, each a CONNECT declaring DECLARED bytes. */
async function attackBroker(pid: number, port: number): Promise<Attack> {
  await settle();
  const before = memory(pid);
  const results = await Promise.all(
    Array.from({ length: N }, async () => {
      const s = net.createConnection({ host: '127.0.0.1', port });
      await new Promise<void>((resolve, reject) => {
        s.once('connect', resolve);
        s.once('error', reject);
      });
      const written = await flood(s, fixedHeader(1, DECLARED), SEND);
      const cut = s.destroyed || s.readableEnded || written < SEND;
      await settle(500);
      s.destroy();
      return { written, cut };
    }),
  );
  await settle(1000);
  const after = memory(pid);
  return { rise: after.peak - before.rss, restingRss: before.rss, written: results.reduce((a, r) => a + r.written, 0), cut: results.filter((r) => r.cut).length };
}

/** A hostile broker: CONNACK, then a PUBLISH header declaring 200 MB, on each of N connections. */
async function attackDevice(spawnVictim: (url: string) => ChildProcess, N: number): Promise<Attack> {
  let conns = 0;
  let written = 0;
  let cut = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  // Connections wait (unanswered) until the victim's resting size is taken.
  let armed!: () => void;
  const arming = new Promise<void>((r) => (armed = r));
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    s.once(
      'data',
      () =>
        void arming.then(async () => {
          if (conns >= N) return s.destroy();
          conns++;
          s.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
          const w = await flood(s, fixedHeader(3, DEVICE_DECLARED), DEVICE_DECLARED);
          written += w;
          if (w < DEVICE_DECLARED) cut++;
          s.destroy();
          if (conns >= N) done();
        }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const victim = spawnVictim(`mqtt://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
  await settle(3000);
  const before = memory(victim.pid!);
  armed();
  await Promise.race([finished, new Promise((r) => setTimeout(r, 300_000).unref())]);
  progress(`device: ${conns} connections flooded`);
  await settle(1000);
  const after = memory(victim.pid!);
  await stopChild(victim);
  progress('device stopped');
  started.delete(victim);
  await new Promise<void>((r) => server.close(() => r()));
  return { rise: after.peak - before.rss, restingRss: before.rss, written, cut };
}

const t0 = Date.now();
const progress = (what: string): void => void process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${what}\n`);

/** The broker attacked: `fleet broker`, then (unless --no-baseline) a bare Aedes for comparison. */
async function brokerAttacks(dir: string): Promise<{ run: Attack; baseline: Attack | undefined }> {
  const port = await freePort();
  const broker = await startProcess(
    process.execPath,
    [FLEET_BIN, '--log-level', 'warn', 'broker', '--host', '127.0.0.1', '--port', String(port), '--data-dir', path.join(dir, 'broker'), '--no-update-server'],
    path.join(dir, 'broker.log'),
    port,
  );
  progress('broker started');
  const run = await attackBroker(broker.pid!, port);
  progress('broker attacked');
  await stopChild(broker);
  started.delete(broker);
  let baseline: Attack | undefined;
  if (!values['no-baseline']) {
    const bport = await freePort();
    const bare = await startProcess(process.execPath, ['--import', 'tsx', BASELINE, 'broker', String(bport)], path.join(dir, 'baseline-broker.log'), bport);
    baseline = await attackBroker(bare.pid!, bport);
    await stopChild(bare);
    started.delete(bare);
  }
  return { run, baseline };
}

/** The device attacked: `fleet device`, then (unless --no-baseline) a bare MQTT.js client for comparison. */
async function deviceAttacks(dir: string): Promise<{ run: Attack; baseline: Attack | undefined }> {
  const keys = await keygen(path.join(dir, 'keys'));
  const model = path.join(dir, 'base.safetensors');
  await fs.writeFile(model, synthesizeModel(1, [[64, 64]]));
  progress('device attack');
  const args = (url: string): string[] =>
    [FLEET_BIN, '--log-level', 'warn', 'device', '--id', 'victim', '--model', 'm', '--group', 'g'].concat([
      '--dir',
      path.join(dir, 'device'),
      '--trust',
      keys.trustFile,
      '--initial',
      model,
      '--broker',
      url,
      '--reconnect-max',
      '1',
    ]);
  const run = await attackDevice((url) => spawnLogged(args(url), path.join(dir, 'device.log')), N);
  let baseline: Attack | undefined;
  if (!values['no-baseline']) {
    baseline = await attackDevice((url) => spawnLogged(['--import', 'tsx', BASELINE, 'client', url], path.join(dir, 'baseline-client.log')), BASELINE_DEVICE_CONNECTIONS);
  }
  return { run, baseline };
}

async function main(): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-bench-hostile-'));
  try {
    const { run: brokerRun, baseline: brokerBaseline } = await brokerAttacks(dir);
    const { run: deviceRun, baseline: deviceBaseline } = await deviceAttacks(dir);
    const mb = (n: number | undefined): number | null => (n === undefined ? null : Math.round((n / MB) * 10) / 10);
    const result = {
      bench: 'hostile',
      connections: N,
      brokerDeclaredBytes: DECLARED,
      deviceDeclaredBytes: DEVICE_DECLARED,
      broker: { riseMB: mb(brokerRun.rise), restingMB: mb(brokerRun.restingRss), attackerWroteMB: mb(brokerRun.written), cut: brokerRun.cut, limitMB: 64, ok: brokerRun.rise < 64 * MB },
      device: { riseMB: mb(deviceRun.rise), restingMB: mb(deviceRun.restingRss), attackerWroteMB: mb(deviceRun.written), cut: deviceRun.cut, limitMB: 32, ok: deviceRun.rise < 32 * MB },
      baseline: values['no-baseline']
        ? null
        : {
            broker: { riseMB: mb(brokerBaseline?.rise), attackerWroteMB: mb(brokerBaseline?.written), cut: brokerBaseline?.cut },
            device: { connections: BASELINE_DEVICE_CONNECTIONS, riseMB: mb(deviceBaseline?.rise), attackerWroteMB: mb(deviceBaseline?.written), cut: deviceBaseline?.cut },
          },
    };
    process.stdout.write(JSON.stringify(result) + '\n');
    if (!result.broker.ok || !result.device.ok) process.exitCode = 1;
  } finally {
    await stopAll();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

await main();
