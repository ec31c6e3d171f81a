/**
 * What the device agent costs the machine it runs on:
 *
 *   npm run bench:device [-- --sizes 100,400 --rank 8 --keep --entries bundle,source --formats safetensors,onnx --node-flags '--max-semi-space-size=1']
 *
 * Starts an embedded broker (with its update server) in this process, then
 * `fleet device` as the README starts it, as its own process, and measures:
 * the time from spawn to its "connected" line, its resident memory once idle,
 * and, for each model size (MB of float32 weights in 1024×1024 matrices), the
 * peak resident memory (VmHWM) of a fresh agent while it downloads, verifies,
 * applies a rank-r update to that model, switches and acks, and how long that
 * took. The ratio of interest is peak ÷ model bytes: an agent that streams
 * tensor by tensor stays flat as the model grows. Each size runs as a safetensors model and as
 * the same tensors in an ONNX file (bench/onnx-model.ts; `--initial base.onnx`, the ONNX apply).
 * Ends with one JSON line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startBroker } from '../nodes/broker-node.ts';
import { FLEET_BIN, stopChild } from '../platform/child-process.ts';
import { parseStatus, type DeviceStatus } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import { keygen, loadSigningKey } from '../publisher/keys.ts';
import { publishUpdate } from '../publisher/publish.ts';
import { synthesizeModel, synthesizeUpdate } from '../publisher/synth.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { silentLogger } from '../util/log.ts';
import { onnxOf, onnxPayload } from './onnx-model.ts';

const MODEL = 'bench-device';
const GROUP = 'bench';

/** Resident and peak resident memory of a process, in bytes (Linux /proc). */
function memoryOf(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

const mb = (b: number): number => Math.round((b / 2 ** 20) * 10) / 10;

interface AgentRun {
  child: ChildProcess;
  connectedMs: number;
}

/** `fleet device` as the README starts it; resolves once it prints that it is connected. */
/** How the agent runs: the compiled device bundle (npm run build), or the TypeScript sources through tsx. */
type Entry = 'bundle' | 'source';
type Format = 'safetensors' | 'onnx';
const BUNDLE = fileURLToPath(new URL('../dist/fleet-device.mjs', import.meta.url));

async function startAgent(entry: Entry, args: string[], logFile: string, nodeFlags: string[]): Promise<AgentRun> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [...nodeFlags, entry === 'bundle' ? BUNDLE : FLEET_BIN, 'device', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = await fs.open(logFile, 'a');
  child.stderr!.on('data', (d: Buffer) => void log.write(d));
  child.once('exit', () => void log.close());
  const connectedMs = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (/: connected to /.test(out)) resolve(performance.now() - t0);
    });
    child.once('exit', (code) => reject(new Error(`fleet device exited (${code}) before connecting; see ${logFile}`)));
  });
  return { child, connectedMs };
}

interface BenchOptions {
  sizes: number[];
  rank: number;
  keep: boolean;
  entries: Entry[];
  formats: Format[];
  /** Flags for the agent's node (e.g. a V8 heap setting tried against the figures); none by default. */
  nodeFlags: string[];
}

function parseOptions(): BenchOptions {
  const { values } = parseArgs({
    options: {
      sizes: { type: 'string', default: '100,400' },
      rank: { type: 'string', default: '8' },
      keep: { type: 'boolean', default: false },
      entries: { type: 'string', default: 'bundle,source' },
      formats: { type: 'string', default: 'safetensors,onnx' },
      'node-flags': { type: 'string', default: '' },
    },
  });
  const entries = values.entries.split(',') as Entry[];
  if (entries.includes('bundle') && !existsSync(BUNDLE)) throw new Error('dist/fleet-device.mjs is not built: run `npm run build` first (or --entries source)');
  return {
    nodeFlags: values['node-flags'].split(/\s+/).filter(Boolean),
    sizes: values.sizes.split(',').map(Number),
    entries,
    formats: values.formats.split(',') as Format[],
    rank: Number(values.rank),
    keep: values.keep,
  };
}

/** The broker, keys and status watcher every run shares. */
interface Rig {
  work: string;
  broker: Awaited<ReturnType<typeof startBroker>>;
  keys: Awaited<ReturnType<typeof keygen>>;
  topics: Topics;
  watcher: MqttTransport;
  /** Polls the device's latest status until pred holds; throws after ms. */
  waitFor: (id: string, pred: (s: DeviceStatus) => boolean, ms: number) => Promise<DeviceStatus>;
}

async function startRig(): Promise<Rig> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-bench-device-'));
  const broker = await startBroker({ port: 0, dataDir: path.join(work, 'broker'), persistence: 'memory', log: silentLogger });
  const keys = await keygen(path.join(work, 'keys'));
  const topics = new Topics();
  const watcher = await MqttTransport.connect({ url: broker.url, clientId: `bench-device-watch-${process.pid}` }, 10_000);
  const latest = new Map<string, DeviceStatus>();
  watcher.onMessage((topic, payload) => {
    const p = topics.parse(topic);
    const s = p?.kind === 'status' ? parseStatus(payload) : null;
    if (s) latest.set(s.device, s);
  });
  await watcher.subscribe(topics.allStatuses(), 1);
  const waitFor = async (id: string, pred: (s: DeviceStatus) => boolean, ms: number): Promise<DeviceStatus> => {
    const end = Date.now() + ms;
    for (;;) {
      const s = latest.get(id);
      if (s && pred(s)) return s;
      if (Date.now() > end) throw new Error(`${id}: timed out; last status ${JSON.stringify(s ?? null)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  return { work, broker, keys, topics, watcher, waitFor };
}

/** One run's model and update: synthesized (a model of its own per run), written as base.{format}. */
async function prepareModel(rig: Rig, o: BenchOptions, size: number, format: Format, runIndex: number): Promise<{ base: Uint8Array; baseFile: string; u: { payload: Uint8Array; targetDigest: string } }> {
  const matrices = Math.round((size * 2 ** 20) / (1024 * 1024 * 4));
  process.stderr.write(`bench:device: ${size} MB ${format} model (${matrices} matrices of 1024×1024), rank ${o.rank}: building…\n`);
  // A model of its own for every run: the previous run's release (retained on the topic) is then
  // refused, wrong-base, instead of applied while the agent starts, before the measurement.
  const synth = synthesizeModel(
    1 + runIndex,
    Array.from({ length: matrices }, () => [1024, 1024] as [number, number]),
  );
  const st = synthesizeUpdate(synth, o.rank, 2);
  // The ONNX case: the same tensors in an ONNX file, the same update aimed at it.
  const base = format === 'onnx' ? onnxOf(synth) : synth;
  const baseFile = path.join(rig.work, `base-${size}.${format}`);
  await fs.writeFile(baseFile, base);
  const u = format === 'onnx' ? await onnxPayload(baseFile, st.payload) : st;
  return { base, baseFile, u };
}

/** The first start provisions the directory from --initial; its peak resident memory once at rest. */
async function provision(rig: Rig, o: BenchOptions, entry: Entry, id: string, args: string[]): Promise<number> {
  const first = await startAgent(entry, args, path.join(rig.work, `${id}.log`), o.nodeFlags);
  try {
    // At rest (the previous size's release is retained on the topic: this model refuses it, wrong-base).
    await rig.waitFor(id, (s) => ['idle', 'ok', 'rejected'].includes(s.state), 120_000);
    return memoryOf(first.child.pid!).hwm;
  } finally {
    // Stopped by its PID whatever happened: a failed run leaves no agent behind.
    await stopChild(first.child);
  }
}

async function publishPayload(rig: Rig, payload: Uint8Array): Promise<void> {
  const pub = await MqttTransport.connect({ url: rig.broker.url, clientId: `bench-device-pub-${process.pid}` }, 10_000);
  try {
    await publishUpdate({
      transport: pub,
      topics: rig.topics,
      payloads: [payload],
      keys: [await loadSigningKey(rig.keys.keyFile)],
      rolloutKeys: [await loadSigningKey(rig.keys.rolloutKeyFile)],
      model: MODEL,
      group: GROUP,
      chunkSize: 16_384,
      ttlSeconds: 3600,
      log: silentLogger,
    });
  } finally {
    await pub.close();
  }
}

type Run = Record<string, number | string>;

/** One size × format × entry: provision, restart, publish the update, wait for the ack, measure. */
async function runOne(rig: Rig, o: BenchOptions, size: number, format: Format, entry: Entry, runIndex: number): Promise<Run> {
  const { base, baseFile, u } = await prepareModel(rig, o, size, format, runIndex);
  const id = `dev-${size}-${format}-${entry}`;
  const dir = path.join(rig.work, id);
  const args = ['--id', id, '--model', MODEL, '--group', GROUP, '--dir', dir, '--trust', rig.keys.trustFile, '--broker', rig.broker.url, '--initial', baseFile];
  // The agent measured is the next start after provisioning, as a device runs every day (the model already in its directory).
  const provisionPeak = await provision(rig, o, entry, id, args);
  const agent = await startAgent(entry, args, path.join(rig.work, `${id}.log`), o.nodeFlags);
  let run: Run;
  try {
    await new Promise((r) => setTimeout(r, 2000));
    const before = memoryOf(agent.child.pid!);
    // From here VmHWM is the peak of the update alone (clear_refs 5 resets it to the current RSS; Linux ≥ 4.0).
    await fs.writeFile(`/proc/${agent.child.pid}/clear_refs`, '5').catch(() => process.stderr.write('bench:device: cannot reset the peak (not root?): it includes the start\n'));
    process.stderr.write(
      `bench:device: ${entry}: connected after ${Math.round(agent.connectedMs)} ms, idle RSS ${mb(before.rss)} MB (provisioning peaked at ${mb(provisionPeak)} MB); publishing ${u.payload.byteLength} B…\n`,
    );
    const t0 = performance.now();
    await publishPayload(rig, u.payload);
    const end = await rig.waitFor(id, (s) => s.target === u.targetDigest && ['ok', 'rolled_back', 'rejected', 'failed'].includes(s.state), 600_000);
    if (end.state !== 'ok') throw new Error(`${id} ended ${end.state}: ${end.reason} ${end.message}`);
    const seconds = (performance.now() - t0) / 1000;
    const after = memoryOf(agent.child.pid!);
    run = {
      entry,
      format,
      modelMB: mb(base.byteLength),
      updateBytes: u.payload.byteLength,
      seconds: Math.round(seconds * 100) / 100,
      connectedMs: Math.round(agent.connectedMs),
      idleRssMB: mb(before.rss),
      provisionPeakMB: mb(provisionPeak),
      peakRssMB: mb(after.hwm),
      peakOverModel: Math.round((after.hwm / base.byteLength) * 1000) / 1000,
    };
    process.stderr.write(`bench:device: ${JSON.stringify(run)}\n`);
  } finally {
    await stopChild(agent.child);
  }
  await fs.rm(baseFile, { force: true });
  await fs.rm(dir, { recursive: true, force: true });
  return run;
}

/** The JSON line's figures: per entry and format, the worst of the runs and the peak's growth with the model. */
function summaryLine(o: BenchOptions, runs: Run[]): string {
  const of = (entry: Entry, key: string, format: Format): number[] => runs.filter((r) => r.entry === entry && r.format === format).map((r) => r[key] as number);
  const summary = (entry: Entry, format: Format = 'safetensors'): Record<string, number | null> | null => {
    const peaks = of(entry, 'peakRssMB', format);
    if (peaks.length === 0) return null;
    return {
      connectedMs: Math.max(...of(entry, 'connectedMs', format)),
      idleRssMB: Math.max(...of(entry, 'idleRssMB', format)),
      peakRssMB: Math.max(...peaks),
      // Flat in the model's size: the peak of the largest model over the smallest's.
      peakGrowth: peaks.length > 1 ? Math.round((peaks[peaks.length - 1] / peaks[0]) * 1000) / 1000 : null,
    };
  };
  const bundle = summary('bundle');
  const source = summary('source');
  const ratio = (k: string): number | null => (bundle && source && bundle[k] && source[k] ? Math.round(((bundle[k] as number) / (source[k] as number)) * 1000) / 1000 : null);
  return JSON.stringify({
    bench: 'device',
    node: process.version,
    nodeFlags: o.nodeFlags,
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
    rank: o.rank,
    sizesMB: o.sizes,
    bundle,
    source,
    bundleOverSource: { idleRss: ratio('idleRssMB'), peakRss: ratio('peakRssMB'), connectedMs: ratio('connectedMs') },
    // The same, for the ONNX model of each size.
    onnx: { bundle: summary('bundle', 'onnx'), source: summary('source', 'onnx') },
    runs,
  });
}

async function main(): Promise<void> {
  const o = parseOptions();
  const rig = await startRig();
  const runs: Run[] = [];
  try {
    for (const [size, format] of o.sizes.flatMap((n) => o.formats.map((f) => [n, f] as const))) for (const entry of o.entries) runs.push(await runOne(rig, o, size, format, entry, runs.length));
  } finally {
    await rig.watcher.close();
    await rig.broker.close();
    if (!o.keep) await fs.rm(rig.work, { recursive: true, force: true });
    else process.stderr.write(`bench:device: kept ${rig.work}\n`);
  }
  process.stdout.write(`${summaryLine(o, runs)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:device: ${(e as Error).message}\n`);
  process.exit(1);
});
