import type { ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startBroker } from '../nodes/broker-node.ts';
import { parseStatus, type DeviceStatus } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import { keygen, loadSigningKey } from '../publisher/keys.ts';
import { publishUpdate } from '../publisher/publish.ts';
import { synthesizeModel, synthesizeUpdate } from '../publisher/synth.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { DEFAULT_STOP_TIMEOUT_MS, GracefulStop } from '../util/graceful-stop.ts';
import { createLogger } from '../util/log.ts';
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
  try {
    const keys = await keygen(path.join(tmp, 'keys'));
    const base = synthesizeModel(1);
    const update = synthesizeUpdate(base, o.rank, 2);
    const baseFile = path.join(tmp, 'base.safetensors');
    await fs.writeFile(baseFile, base);
    out(`broker ${broker.url}, data in ${tmp}`);
    out(
      `model ${(base.byteLength / 1e6).toFixed(2)} MB (${update.baseDigest.slice(0, 12)}), update ${(update.payload.byteLength / 1e3).toFixed(1)} kB = ${((100 * update.payload.byteLength) / base.byteLength).toFixed(2)} % of the model, target ${update.targetDigest.slice(0, 12)}`,
    );

    const topics = new Topics();
    const ids = Array.from({ length: o.devices }, (_, k) => `demo-device-${k + 1}`);
    const latest = new Map<string, DeviceStatus>();
    const ackedAt = new Map<string, number>();
    let publishedAt = 0;
    let resolveDone: () => void = () => undefined;
    const done = new Promise<void>((r) => (resolveDone = r));
    const finished = (s: DeviceStatus): boolean => (s.state === 'ok' && s.running === update.targetDigest) || s.state === 'rejected' || s.state === 'rolled_back';
    observer.onMessage((topic, payload) => {
      const p = topics.parse(topic);
      if (p?.kind !== 'status' || !ids.includes(p.deviceId)) return;
      const s = parseStatus(payload);
      if (!s) return;
      latest.set(s.device, s);
      if (publishedAt && finished(s) && !ackedAt.has(s.device)) {
        ackedAt.set(s.device, performance.now());
        if (ackedAt.size === ids.length) resolveDone();
      }
    });
    await observer.subscribe(topics.allStatuses(), 1);

    for (const id of ids) {
      if (stopping) break;
      const child = spawnFleetLogged(
        [
          '--stop-timeout',
          String(Math.floor(stopBoundMs / 2000)),
          'device',
          '--id',
          id,
          '--model',
          'demo-model',
          '--group',
          'demo',
          '--dir',
          path.join(tmp, id),
          '--trust',
          keys.trustFile,
          '--broker',
          broker.url,
          '--initial',
          baseFile,
        ],
        path.join(tmp, `${id}.log`),
      );
      children.push(child);
    }
    out(`started ${ids.length} device agents (PIDs ${children.map((c) => c.pid).join(', ')})`);

    const pubTransport = await MqttTransport.connect({ url: broker.url, clientId: `fleet-demo-publisher-${process.pid}` }, 10_000);
    const progress = createProgress('upload', process.stderr, o.json);
    const payloadFile = path.join(tmp, 'update.cbor');
    await fs.writeFile(payloadFile, encodeUpdateFile(update.payload));
    const result = await publishUpdate({
      transport: pubTransport,
      topics,
      payloads: [update.payload],
      keys: [await loadSigningKey(keys.keyFile)],
      rolloutKeys: [await loadSigningKey(keys.rolloutKeyFile)],
      model: 'demo-model',
      group: 'demo',
      chunkSize: 16 * 1024,
      ttlSeconds: 86400,
      log: log.child('publisher'),
      onProgress: (d, n) => progress.update(d, n),
    });
    progress.finish();
    publishedAt = performance.now();
    await pubTransport.close();
    out(`published release seq ${result.release.seq} for group demo (update ${result.updateId.slice(0, 12)}, ${result.release.steps[0].chunks} chunks); publisher disconnected`);
    for (const s of latest.values()) if (finished(s) && !ackedAt.has(s.device)) ackedAt.set(s.device, performance.now());
    if (ackedAt.size === ids.length) resolveDone();

    const timer = setTimeout(resolveDone, o.timeoutSeconds * 1000);
    await done;
    clearTimeout(timer);

    let acked = 0;
    let rejected = 0;
    for (const id of ids) {
      const s = latest.get(id);
      const ok = s?.state === 'ok' && s.running === update.targetDigest;
      if (ok) acked++;
      if (s?.state === 'rejected') rejected++;
      const t = ackedAt.get(id);
      out(
        `${id}: ${s?.state ?? 'no status'}${s?.reason ? ` (${s.reason})` : ''}, running ${s?.running.slice(0, 12) ?? '?'}, received ${s?.bytes ?? 0} bytes, ${t ? `${((t - publishedAt) / 1000).toFixed(2)} s after publish` : 'no ack'}`,
      );
    }
    const seconds = (performance.now() - t0) / 1000;
    const summary: DemoResult = { devices: ids.length, acked, rejected, updateBytes: update.payload.byteLength, modelBytes: base.byteLength, seconds: Number(seconds.toFixed(2)) };
    out(
      `${acked}/${ids.length} devices acked the update in ${seconds.toFixed(1)} s (update ${summary.updateBytes} bytes, ${((100 * summary.updateBytes) / summary.modelBytes).toFixed(2)} % of the ${summary.modelBytes}-byte model)`,
    );
    if (o.json) out(JSON.stringify(summary));
    return summary;
  } finally {
    await stop.run('demo finished');
  }
}
