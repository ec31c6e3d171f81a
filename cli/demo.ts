import type { ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startBroker } from '../nodes/broker-node.ts';
import { Topics } from '../protocol/topics.ts';
import { keygen, loadSigningKey } from '../publisher/keys.ts';
import { publishUpdate, type PublishResult } from '../publisher/publish.ts';
import { synthesizeModel, synthesizeUpdate, type SynthUpdate } from '../publisher/synth.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { watchStatuses, type StatusWatch } from '../operator/status-watch.ts';
import { DEFAULT_STOP_TIMEOUT_MS, GracefulStop } from '../util/graceful-stop.ts';
import { createLogger, type Logger } from '../util/log.ts';
import { stripControls } from '../util/text.ts';
import { createProgress } from '../util/progress.ts';
import { encodeUpdateFile } from '../protocol/update-file.ts';
import { spawnFleetLogged, stopChild } from '../platform/child-process.ts';

export interface DemoOptions {
  devices: number;
  json: boolean;
  keep: boolean;
  timeoutSeconds: number;
  rank: number;
  /** Where the demo's clean-up steps go (the command's signal handling); default: bounded steps without signal handlers. */
  stop?: GracefulStop;
}

export interface DemoResult {
  devices: number;
  acked: number;
  rejected: number;
  updateBytes: number;
  modelBytes: number;
  seconds: number;
}

/** The demo's running parts: the temporary directory, the broker, the observer and the device processes. */
interface DemoRig {
  tmp: string;
  log: Logger;
  stop: GracefulStop;
  broker: Awaited<ReturnType<typeof startBroker>>;
  observer: MqttTransport;
  children: ChildProcess[];
  /** True once the clean-up has begun (no device is started after it). */
  stopping: () => boolean;
}

/** Temporary directory, embedded broker, observer connection, each with its clean-up step. */
async function startRig(o: DemoOptions): Promise<DemoRig> {
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-demo-'));
  const log = createLogger('demo');
  const stop = o.stop ?? new GracefulStop({ timeoutMs: DEFAULT_STOP_TIMEOUT_MS, log, signals: [] });
  // Steps run last-added first: device processes, observer, broker, then the temporary directory.
  if (!o.keep) stop.add({ name: `temporary directory ${tmp}`, optional: true, run: () => fs.rm(tmp, { recursive: true, force: true }) });
  const broker = await startBroker({ port: 0, dataDir: path.join(tmp, 'broker'), log: log.child('broker') });
  stop.add({ name: 'embedded broker', run: () => broker.close() });
  const children: ChildProcess[] = [];
  let stopping = false;
  // A device stopping on its own within half the bound; SIGKILL by PID after 60 % of it, so none outlives the demo.
  const stopBoundMs = stop.timeoutMs;
  const observer = await MqttTransport.connect({ url: broker.url, clientId: `fleet-demo-observer-${process.pid}` }, 10_000);
  stop.add({ name: 'observer connection', optional: true, run: () => observer.close() });
  stop.add({
    name: 'device processes',
    run: async () => {
      stopping = true;
      await Promise.all(children.map((c) => stopChild(c, stopBoundMs * 0.6)));
    },
  });
  return { tmp, log, stop, broker, observer, children, stopping: () => stopping };
}

/** A device finished when it acked the target, rejected it or rolled back. */
function watchAcks(observer: MqttTransport, ids: readonly string[], targetDigest: string): Promise<StatusWatch> {
  return watchStatuses(observer, ids, (s) => (s.state === 'ok' && s.running === targetDigest) || s.state === 'rejected' || s.state === 'rolled_back');
}

/** One `fleet device` process per id, its output in `{tmp}/{id}.log`. */
function startDevices(rig: DemoRig, ids: readonly string[], trustFile: string, baseFile: string): void {
  for (const id of ids) {
    if (rig.stopping()) break;
    const child = spawnFleetLogged(
      [
        '--stop-timeout',
        String(Math.floor(rig.stop.timeoutMs / 2000)),
        'device',
        '--id',
        id,
        '--model',
        'demo-model',
        '--group',
        'demo',
        '--dir',
        path.join(rig.tmp, id),
        '--trust',
        trustFile,
        '--broker',
        rig.broker.url,
        '--initial',
        baseFile,
      ],
      path.join(rig.tmp, `${id}.log`),
    );
    rig.children.push(child);
  }
}

/** Uploads the update and signs its release for group demo, over a connection of its own closed after. */
async function publishDemo(rig: DemoRig, o: DemoOptions, update: SynthUpdate, keys: Awaited<ReturnType<typeof keygen>>, onPublished: () => void): Promise<PublishResult> {
  const pubTransport = await MqttTransport.connect({ url: rig.broker.url, clientId: `fleet-demo-publisher-${process.pid}` }, 10_000);
  const progress = createProgress('upload', process.stderr, o.json);
  const payloadFile = path.join(rig.tmp, 'update.cbor');
  await fs.writeFile(payloadFile, encodeUpdateFile(update.payload));
  const result = await publishUpdate({
    transport: pubTransport,
    topics: new Topics(),
    payloads: [update.payload],
    keys: [await loadSigningKey(keys.keyFile)],
    rolloutKeys: [await loadSigningKey(keys.rolloutKeyFile)],
    model: 'demo-model',
    group: 'demo',
    chunkSize: 16 * 1024,
    ttlSeconds: 86400,
    log: rig.log.child('publisher'),
    onProgress: (d, n) => progress.update(d, n),
  });
  progress.finish();
  onPublished();
  await pubTransport.close();
  return result;
}

/** One line per device and the summary. */
function report(out: (line: string) => void, ids: readonly string[], watch: StatusWatch, update: SynthUpdate, modelBytes: number, t0: number): DemoResult {
  let acked = 0;
  let rejected = 0;
  for (const id of ids) {
    const s = watch.latest.get(id);
    const ok = s?.state === 'ok' && s.running === update.targetDigest;
    if (ok) acked++;
    if (s?.state === 'rejected') rejected++;
    const t = watch.ackedAt.get(id);
    out(
      `${id}: ${s?.state ?? 'no status'}${s?.reason ? ` (${s.reason})` : ''}, running ${s?.running.slice(0, 12) ?? '?'}, received ${s?.bytes ?? 0} bytes, ${t ? `${((t - watch.publishedAt()) / 1000).toFixed(2)} s after publish` : 'no ack'}`,
    );
  }
  const seconds = (performance.now() - t0) / 1000;
  const summary: DemoResult = { devices: ids.length, acked, rejected, updateBytes: update.payload.byteLength, modelBytes, seconds: Number(seconds.toFixed(2)) };
  out(
    `${acked}/${ids.length} devices acked the update in ${seconds.toFixed(1)} s (update ${summary.updateBytes} bytes, ${((100 * summary.updateBytes) / summary.modelBytes).toFixed(2)} % of the ${summary.modelBytes}-byte model)`,
  );
  return summary;
}

/**
 * `fleet demo`: embedded broker on a free loopback port, keys, a synthetic
 * base model and low-rank update, N device agents as separate OS processes,
 * publish, wait for every ack, report, stop everything it started.
 */
export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const out = (line: string): void => {
    process.stdout.write(stripControls(line) + '\n');
  };
  const t0 = performance.now();
  const rig = await startRig(o);
  try {
    const keys = await keygen(path.join(rig.tmp, 'keys'));
    const base = synthesizeModel(1);
    const update = synthesizeUpdate(base, o.rank, 2);
    const baseFile = path.join(rig.tmp, 'base.safetensors');
    await fs.writeFile(baseFile, base);
    out(`broker ${rig.broker.url}, data in ${rig.tmp}`);
    out(
      `model ${(base.byteLength / 1e6).toFixed(2)} MB (${update.baseDigest.slice(0, 12)}), update ${(update.payload.byteLength / 1e3).toFixed(1)} kB = ${((100 * update.payload.byteLength) / base.byteLength).toFixed(2)} % of the model, target ${update.targetDigest.slice(0, 12)}`,
    );

    const ids = Array.from({ length: o.devices }, (_, k) => `demo-device-${k + 1}`);
    const watch = await watchAcks(rig.observer, ids, update.targetDigest);
    startDevices(rig, ids, keys.trustFile, baseFile);
    out(`started ${ids.length} device agents (PIDs ${rig.children.map((c) => c.pid).join(', ')})`);

    const result = await publishDemo(rig, o, update, keys, watch.published);
    out(`published release seq ${result.release.seq} for group demo (update ${result.updateId.slice(0, 12)}, ${result.release.steps[0].chunks} chunks); publisher disconnected`);
    await watch.wait(o.timeoutSeconds);

    const summary = report(out, ids, watch, update, base.byteLength, t0);
    if (o.json) out(JSON.stringify(summary));
    return summary;
  } finally {
    await rig.stop.run('demo finished');
  }
}
