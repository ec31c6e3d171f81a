/**
 * Fleet-scale delivery through one broker:
 *
 *   npm run bench:fleet -- --devices N --size BYTES [--broker aedes|mosquitto|cluster]
 *       [--compare] [--workers W] [--ramp SECONDS] [--chunk-size 16384] [--redis URL] [--timeout 900]
 *       [--kill-node SECONDS]   (cluster: SIGKILL node B this long after the publish)
 *
 * The broker runs in its own process(es) with the update server as it runs
 * for that broker (bench/fleet-brokers.ts). W worker processes
 * (bench/fleet-worker.ts, started by bench/fleet-devices.ts) run N real device agents between them, each with
 * its own MQTT connection, directory, bitmap and chunk checks; they come online
 * staggered over the ramp. Once all are connected, one update of about BYTES
 * is published (publisher/publish.ts) and the clock runs until the last device
 * has applied it and acked. `--compare` runs Aedes, Mosquitto (when installed)
 * and the 2-node cluster (when redis-server or --redis is available) on the
 * same fleet and update, and adds time ratios. For a cluster it also reads
 * Redis's own byte counters (INFO stats) before the publish and after the last
 * ack: the bytes through Redis per payload byte delivered. Ends with one JSON line.
 * Every process's CPU (broker side, Redis, workers, this one) is read at the
 * publish and at the last ack, with the machine's busy time (bench/fleet-cpu.ts).
 * FLEET_BENCH_WORKER_NODE_ARGS and FLEET_BENCH_BROKER_NODE_ARGS (space-separated)
 * add node flags to the worker processes and to the `fleet broker` / `fleet serve`
 * processes, e.g. "--cpu-prof --cpu-prof-dir=DIR" (NODE_OPTIONS refuses --cpu-prof).
 */
import type { ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { stopChild } from '../platform/child-process.ts';
import { Topics } from '../protocol/topics.ts';
import { keygen, loadSigningKey } from '../publisher/keys.ts';
import { publishUpdate } from '../publisher/publish.ts';
import { synthesizeModel, synthesizeUpdate } from '../publisher/synth.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { silentLogger } from '../util/log.ts';
import { createProgress } from '../util/progress.ts';
import { cpuBetween, cpuSeconds, CpuLedger, type Activity, type CpuSplit, type MachineCpu } from './fleet-cpu.ts';
import { procStatusKb, findMosquitto, findRedisServer, redisFigures, redisNetBytes, started, startBrokerSetup, type BrokerKind } from './fleet-brokers.ts';
import { GROUP, MODEL, startWorkers, waitOnline } from './fleet-devices.ts';

/** Working directories of runs in progress (removed when interrupted, unless kept). */
const dirs = new Set<string>();

export interface FleetBenchOptions {
  devices: number;
  size: number;
  broker: BrokerKind;
  workers: number;
  rampSeconds: number;
  chunkSize: number;
  timeoutSeconds: number;
  redisUrl?: string;
  /** Progress and notes (stderr by default). */
  log: (line: string) => void;
  quiet?: boolean;
  /** Keep the working directory (logs of the broker side and the workers) and say where. */
  keep?: boolean;
  /** Cluster only: SIGKILL node B this many seconds after the publish (its devices fail over to A). */
  killNodeAfterSeconds?: number;
}

export interface FleetBenchResult {
  broker: BrokerKind;
  nodes: number;
  devices: number;
  completed: number;
  /** From the publish to the last ack. */
  seconds: number;
  /** Of which the upload to the update server and the signed release. */
  publishSeconds: number;
  payloadBytes: number;
  /** completed × payloadBytes / seconds, in 10^6 bytes per second. */
  deliveredMBps: number;
  /** Bytes the devices' sockets received over the payload bytes they needed. */
  wireOverhead: number;
  duplicates: number;
  reconnects: number;
  brokerPeakRssMB: number;
  nodesPeakRssMB: number[];
  serverPeakRssMB: number | null;
  redisPeakRssMB: number | null;
  workers: number;
  rampSeconds: number;
  chunkSize: number;
  /** Cluster: bytes Redis received and sent (all clients) from just before the publish to the last ack. */
  redisBytesIn: number | null;
  redisBytesOut: number | null;
  /** (redisBytesIn + redisBytesOut) / (completed × payloadBytes). */
  redisBytesPerPayloadByte: number | null;
  /** Seconds after the publish at which node B was killed, if it was. */
  killedNodeAfterSeconds: number | null;
  /** CPU seconds the device worker processes used (all of the run: start, provisioning, connect, delivery). */
  workersCpuSeconds: number;
  /** Of which from the publish to the last ack (the delivery alone, the same phase for every broker). */
  workersDeliveryCpuSeconds: number;
  nodesCpuSeconds: number[];
  serverCpuSeconds: number | null;
  redisCpuSeconds: number | null;
  /** Every process's CPU seconds from the publish to the last ack (bench/fleet-cpu.ts). */
  deliveryCpuSeconds: CpuSplit;
  /** The same over the whole run (broker side from its start, workers from theirs, this process from the run's start). */
  runCpuSeconds: CpuSplit;
  /** The whole machine from the publish to the last ack: busy vCPU seconds, steal, and what others used. */
  machineDeliveryCpuSeconds: MachineCpu | null;
  /** Each device worker process's peak resident memory (VmHWM), MiB. */
  workersPeakRssMB: number[];
  /** The device workers' read and write calls and context switches from the publish to the last ack. */
  workersDeliveryActivity: Activity;
  /** Cluster: commands Redis ran from the publish to the last ack, and from before the first device connected to the last ack. */
  redisCommands: number | null;
  redisCommandsFromConnect: number | null;
  /** deliveryCpuSeconds.total / vCPUs: the least the delivery could take on this machine with nothing else running. */
  cpuBoundSeconds: number;
  /** os.loadavg() when the run ended (the machine is shared). */
  loadAverage: number[];
}

/**
 * One tall, narrow layer: a rank-4 update of an m×8 matrix plus its bias is
 * about 20·m bytes while the apply costs only 32·m multiply-adds, so a device's
 * CPU goes to the transfer we measure rather than to arithmetic.
 */
function fleetModel(size: number): { base: Uint8Array; payload: Uint8Array; target: string } {
  const m = Math.max(64, Math.round(size / 20));
  const base = synthesizeModel(11, [[m, 8]]);
  const u = synthesizeUpdate(base, 4, 12);
  return { base, payload: u.payload, target: u.targetDigest };
}

/** Upload the payload and publish the signed release, through node A. */
async function publishOnce(o: FleetBenchOptions, url: string, keys: Awaited<ReturnType<typeof keygen>>, payload: Uint8Array): Promise<void> {
  const pub = await MqttTransport.connect({ url, clientId: `fleet-bench-publisher-${process.pid}` }, 30_000);
  try {
    await publishUpdate({
      transport: pub,
      topics: new Topics(),
      payloads: [payload],
      keys: [await loadSigningKey(keys.keyFile)],
      rolloutKeys: [await loadSigningKey(keys.rolloutKeyFile)],
      model: MODEL,
      group: GROUP,
      chunkSize: o.chunkSize,
      ttlSeconds: 3600,
      log: silentLogger,
    });
  } finally {
    await pub.close();
  }
}

/**
 * Cluster with --kill-node: SIGKILL node B that many seconds from now. The
 * function returned cancels it if not yet due and, once B has stopped, says whether it was killed.
 */
function killNodeLater(o: FleetBenchOptions, setup: Awaited<ReturnType<typeof startBrokerSetup>>): () => Promise<boolean> {
  if (o.killNodeAfterSeconds === undefined || setup.urls.length <= 1) return async () => false;
  let killed: Promise<void> | undefined;
  const timer = setTimeout(() => {
    o.log(`bench:fleet ${o.broker}: killing node B (SIGKILL)`);
    killed = setup.killNode(1);
  }, o.killNodeAfterSeconds * 1000);
  return async () => {
    clearTimeout(timer);
    await killed;
    return killed !== undefined;
  };
}

export async function runFleetBench(o: FleetBenchOptions): Promise<FleetBenchResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `fleet-bench-${o.broker}-`));
  if (!o.keep) dirs.add(dir);
  const workers: ChildProcess[] = [];
  let setup: Awaited<ReturnType<typeof startBrokerSetup>> | undefined;
  const ledger = new CpuLedger(() => setup!.cpu(), workers);
  try {
    const keys = await keygen(path.join(dir, 'keys'));
    const { base, payload, target } = fleetModel(o.size);
    const baseFile = path.join(dir, 'base.safetensors');
    await fs.writeFile(baseFile, base);
    setup = await startBrokerSetup({ kind: o.broker, dir: path.join(dir, 'broker'), redisUrl: o.redisUrl });
    o.log(`bench:fleet ${o.broker}: ${setup.urls.length} node(s), ${o.devices} devices in ${o.workers} processes, payload ${payload.byteLength} bytes`);

    const redisAtStart = setup.redisUrl ? await redisNetBytes(setup.redisUrl) : undefined;
    const progress = createProgress(`bench:fleet ${o.broker}`, process.stderr, o.quiet === true, 1000);
    const fleet = startWorkers(o, { dir, urls: setup.urls, trustFile: keys.trustFile, baseFile }, workers, (n) => progress.update(n, o.devices));
    await waitOnline(o, fleet, workers);
    const { ends } = fleet;
    const ready = fleet.ready;
    o.log(`bench:fleet ${o.broker}: ${ready} devices online; publishing`);

    const redisUrl = setup.redisUrl;
    const redisBefore = redisUrl ? await redisNetBytes(redisUrl) : undefined;
    ledger.publishing();
    const t0 = Date.now();
    const settleKill = killNodeLater(o, setup);
    await publishOnce(o, setup.urls[0], keys, payload);
    const publishSeconds = (Date.now() - t0) / 1000;
    const deadline = t0 + o.timeoutSeconds * 1000;
    while (ends.size < o.devices && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    ledger.delivered();
    const list = [...ends.values()];
    const ok = list.filter((e) => e.state === 'ok' && e.running === target);
    const seconds = ((ok.length === o.devices ? Math.max(...ok.map((e) => e.time)) : Date.now()) - t0) / 1000;
    const killedNode = await settleKill();
    const redisAfter = redisUrl ? await redisNetBytes(redisUrl) : undefined;
    progress.finish(`${ok.length}/${o.devices} acked in ${seconds.toFixed(2)} s`);
    const workersCpuSeconds = Number(workers.reduce((x, c) => x + cpuSeconds(c.pid!), 0).toFixed(2));
    const runCpu = cpuBetween(undefined, ledger.reading());
    const workersPeakRssMB = workers.map((c) => Number((procStatusKb(c.pid!, 'VmHWM') / 1024).toFixed(1)));
    // Devices first (they leave cleanly), then the broker side, whose peak memory is read before it stops.
    await Promise.all(workers.map((c) => stopChild(c, 10_000).catch(() => undefined)));
    const mem = await setup.stop();
    setup = undefined;
    const received = list.reduce((x, e) => x + e.wire.bytesIn, 0);
    return {
      broker: o.broker,
      nodes: o.broker === 'cluster' ? 2 : 1,
      devices: o.devices,
      completed: ok.length,
      seconds: Number(seconds.toFixed(3)),
      publishSeconds: Number(publishSeconds.toFixed(3)),
      payloadBytes: payload.byteLength,
      deliveredMBps: Number(((ok.length * payload.byteLength) / seconds / 1e6).toFixed(3)),
      wireOverhead: Number((received / Math.max(1, list.length * payload.byteLength)).toFixed(4)),
      duplicates: list.reduce((x, e) => x + e.stats.duplicateChunks, 0),
      reconnects: list.reduce((x, e) => x + Math.max(0, e.wire.connects - 1), 0),
      ...mem,
      workers: workers.length,
      rampSeconds: o.rampSeconds,
      chunkSize: o.chunkSize,
      ...redisFigures(redisAtStart, redisBefore, redisAfter, ok.length * payload.byteLength),
      workersCpuSeconds,
      ...ledger.deliveryFields(),
      runCpuSeconds: runCpu,
      workersPeakRssMB,
      killedNodeAfterSeconds: killedNode ? o.killNodeAfterSeconds! : null,
      loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))),
    };
  } finally {
    await Promise.all(workers.map((c) => stopChild(c, 10_000).catch(() => undefined)));
    if (setup) await setup.stop().catch(() => undefined);
    if (o.keep) o.log(`bench:fleet: kept ${dir}`);
    else await fs.rm(dir, { recursive: true, force: true });
    dirs.delete(dir);
  }
}

async function main(): Promise<void> {
  // Interrupted: stop every process we started, by PID, then leave.
  const interrupted = (): void => {
    const exits = [...started].map((c) => new Promise((r) => c.once('exit', r)));
    for (const c of started) if (c.pid) process.kill(c.pid, 'SIGTERM');
    void Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, 5000))])
      .then(() => Promise.all([...dirs].map((d) => fs.rm(d, { recursive: true, force: true }))))
      .finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  const { values: a } = parseArgs({
    options: {
      devices: { type: 'string', default: '100' },
      size: { type: 'string', default: '262144' },
      broker: { type: 'string', default: 'aedes' },
      compare: { type: 'boolean', default: false },
      workers: { type: 'string' },
      ramp: { type: 'string' },
      'chunk-size': { type: 'string', default: '16384' },
      redis: { type: 'string' },
      timeout: { type: 'string', default: '900' },
      quiet: { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      'kill-node': { type: 'string' },
    },
  });
  const devices = Number(a.devices);
  if (!Number.isInteger(devices) || devices < 1) throw new Error('--devices expects a positive integer');
  if (!['aedes', 'mosquitto', 'cluster'].includes(a.broker!)) throw new Error('--broker expects aedes, mosquitto or cluster');
  const base = {
    devices,
    size: Number(a.size),
    workers: a.workers ? Number(a.workers) : Math.max(2, Math.ceil(devices / 500)),
    // A fleet comes online over a while: by default 2 ms per device (2 s for 1,000).
    rampSeconds: a.ramp ? Number(a.ramp) : Math.min(30, devices * 0.002),
    chunkSize: Number(a['chunk-size']),
    timeoutSeconds: Number(a.timeout),
    redisUrl: a.redis,
    quiet: a.quiet === true,
    keep: a.keep === true,
    killNodeAfterSeconds: a['kill-node'] === undefined ? undefined : Number(a['kill-node']),
    log: (s: string) => process.stderr.write(s + '\n'),
  };
  if (!a.compare) {
    process.stdout.write(JSON.stringify(await runFleetBench({ ...base, broker: a.broker as BrokerKind })) + '\n');
    return;
  }
  const aedes = await runFleetBench({ ...base, broker: 'aedes' });
  process.stderr.write(JSON.stringify(aedes) + '\n');
  const mosquitto = findMosquitto() ? await runFleetBench({ ...base, broker: 'mosquitto' }) : null;
  if (mosquitto) process.stderr.write(JSON.stringify(mosquitto) + '\n');
  else process.stderr.write('bench:fleet: mosquitto is not installed; no Mosquitto run\n');
  const cluster = a.redis || findRedisServer() ? await runFleetBench({ ...base, broker: 'cluster' }) : null;
  if (cluster) process.stderr.write(JSON.stringify(cluster) + '\n');
  else process.stderr.write('bench:fleet: no redis-server and no --redis; no cluster run\n');
  const ratio = (x: number, y: number): number => Number((x / y).toFixed(3));
  process.stdout.write(
    JSON.stringify({
      devices,
      payloadBytes: aedes.payloadBytes,
      aedes,
      mosquitto,
      cluster,
      aedesOverMosquittoSeconds: mosquitto ? ratio(aedes.seconds, mosquitto.seconds) : null,
      clusterOverSingleSeconds: cluster ? ratio(cluster.seconds, aedes.seconds) : null,
      // The same ratio of the CPU bounds (every process's delivery CPU / vCPUs): what the ratio can be at best on this machine.
      clusterOverSingleCpuBound: cluster ? ratio(cluster.cpuBoundSeconds, aedes.cpuBoundSeconds) : null,
      clusterRedisBytesPerPayloadByte: cluster?.redisBytesPerPayloadByte ?? null,
      loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))),
      allCompleted: [aedes, mosquitto, cluster].every((r) => r === null || r.completed === r.devices),
    }) + '\n',
  );
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
