/**
 * `npm run demo:mnist`: the fleet demo with a real model. Trains the MNIST
 * base model (seeded, a few seconds), starts the embedded broker and three
 * device agent processes running it, trains a low-rank update on drifted
 * "field" digits, builds it with the product's PEFT LoRA import and ships it
 * through the broker and update server. Each device validates the staged
 * model on its own held-out field digits (a --validate-cmd: the staged model
 * must score at least the running model's accuracy minus 1 point) before it
 * switches and acks. Prints per device accuracy before → after and the
 * update's size as a percentage of the model; exits non-zero unless every
 * device acked.
 *
 *   npm run demo:mnist [-- --devices 3 --epochs 5 --budget 0.5 --quant int8 --json --keep]
 */
import type { ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startBroker } from '../../nodes/broker-node.ts';
import { spawnFleetLogged, stopChild } from '../../platform/child-process.ts';
import type { DeviceStatus } from '../../protocol/status.ts';
import { Topics } from '../../protocol/topics.ts';
import { keygen, loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate, type PublishResult } from '../../publisher/publish.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { watchStatuses, type StatusWatch } from '../../operator/status-watch.ts';
import { mulberry32 } from '../../util/random.ts';
import { createLogger, parseLogLevel, type Logger } from '../../util/log.ts';
import { createProgress } from '../../util/progress.ts';
import { productPath } from '../paper/adapter.ts';
import { loraConfigFor } from '../paper/compress.ts';
import { CLASSES, drift, loadAllDigits, PIXELS, splitDigits, subset } from '../paper/data.ts';
import { mlpToSafetensors } from '../paper/fleet-build.ts';
import { accuracy, initMlp, paramCount } from '../paper/mlp.ts';
import { fullTrainable, initLora, loraTrainable, train } from '../paper/train.ts';
import { digitsToBytes } from './digits-file.ts';

const VALIDATE = fileURLToPath(new URL('./validate.ts', import.meta.url));

export interface MnistDemoOptions {
  devices: number;
  seed: number;
  baseTrain: number;
  fieldTrain: number;
  /** Held-out field digits per device. */
  perDevice: number;
  epochs: number;
  loraEpochs: number;
  /** Update budget, % of the model's float32 bytes. */
  budgetPercent: number;
  quant: 'f32' | 'int8';
  timeoutSeconds: number;
  json: boolean;
  keep: boolean;
  /** Where lines go (default stdout). */
  out?: (line: string) => void;
}

export const DEMO_DEFAULTS: MnistDemoOptions = {
  devices: 3,
  seed: 1,
  baseTrain: 6000,
  fieldTrain: 2000,
  perDevice: 600,
  epochs: 5,
  loraEpochs: 20,
  budgetPercent: 0.5,
  quant: 'int8',
  timeoutSeconds: 90,
  json: false,
  keep: false,
};

export interface DeviceOutcome {
  id: string;
  state: string;
  reason?: string;
  acked: boolean;
  digits: number;
  before: number | null;
  after: number | null;
}

export interface MnistDemoResult {
  devices: DeviceOutcome[];
  acked: number;
  updateBytes: number;
  modelBytes: number;
  updatePercent: number;
  baseFieldAccuracy: number;
  updatedFieldAccuracy: number;
  trainSeconds: number;
  seconds: number;
}

/** The demo's models: the base MLP trained on original digits, and a low-rank update trained on drifted field digits. */
export function trainDemoModels(o: MnistDemoOptions) {
  const t0 = performance.now();
  const all = loadAllDigits();
  const heldOut = o.devices * o.perDevice;
  const split = splitDigits(all, { baseTrain: o.baseTrain, fieldTrain: o.fieldTrain, test: heldOut }, o.seed);
  const fieldTrain = drift(split.fieldTrain, o.seed + 1);
  const fieldHeld = drift(split.test, o.seed + 2);
  const base = initMlp(mulberry32(o.seed + 3), PIXELS, 128, CLASSES);
  train(fullTrainable(base), split.baseTrain, { epochs: o.epochs, batch: 64, lr: 2e-3, lrFloor: 0.05, seed: o.seed + 4 });
  const modelBytes = paramCount(base) * 4;
  const cfg = loraConfigFor(base, Math.floor((o.budgetPercent / 100) * modelBytes), o.quant);
  const state = initLora(base, cfg, mulberry32(o.seed + 6));
  train(loraTrainable(base, state), fieldTrain, { epochs: o.loraEpochs, batch: 64, lr: 5e-3, lrFloor: 0.1, seed: o.seed + 5 });
  return { base, state, cfg, split, fieldHeld, modelBytes, trainSeconds: (performance.now() - t0) / 1000 };
}

/** The devices' statuses; a device finished when it acked the target, rejected it, rolled back or failed. */
export function watchDevices(observer: MqttTransport, ids: readonly string[], target: string): Promise<StatusWatch> {
  return watchStatuses(observer, ids, (s) => (s.state === 'ok' && s.running === target) || s.state === 'rejected' || s.state === 'rolled_back' || s.state === 'failed');
}

/** One `fleet device` per id, each validating staged models on its own held-out field digits. */
async function startDevices(
  o: MnistDemoOptions,
  tmp: string,
  ids: readonly string[],
  fieldHeld: Parameters<typeof subset>[0],
  trustFile: string,
  brokerUrl: string,
  baseFile: string,
  children: ChildProcess[],
): Promise<void> {
  for (const [k, id] of ids.entries()) {
    const dir = path.join(tmp, id);
    const digitsFile = path.join(tmp, `${id}-field-digits.safetensors`);
    const idx = Array.from({ length: o.perDevice }, (_, i) => k * o.perDevice + i);
    await fs.writeFile(digitsFile, digitsToBytes(subset(fieldHeld, idx)));
    const validate = [process.execPath, '--import', 'tsx', VALIDATE, '--digits', digitsFile, '--running', path.join(dir, 'current.safetensors'), '--tolerance', '1', '--report', path.join(tmp, `${id}-validation.json`)]
      .map((a) => `'${a.replace(/'/g, `'\\''`)}'`)
      .join(' ');
    const child = spawnFleetLogged(
      ['device', '--id', id, '--model', 'mnist-mlp', '--group', 'line-1', '--dir', dir, '--trust', trustFile, '--broker', brokerUrl, '--initial', baseFile, '--validate-cmd', validate, '--validate-timeout', '60s'],
      path.join(tmp, `${id}.log`),
    );
    children.push(child);
  }
}

/** Uploads the update and publishes its release of `model` to line-1 over a connection of its own (demo:mnist, demo:onnx); a progress bar on stderr if `progress`. */
export async function publishDemoUpdate(name: string, model: string, brokerUrl: string, payload: Uint8Array, keys: Awaited<ReturnType<typeof keygen>>, log: Logger, progress: boolean): Promise<PublishResult> {
  const pub = await MqttTransport.connect({ url: brokerUrl, clientId: `fleet-demo-${name}-publisher-${process.pid}` }, 10_000);
  const bar = createProgress('upload', process.stderr, !progress);
  try {
    const result = await publishUpdate({
      transport: pub,
      topics: new Topics(),
      payloads: [payload],
      keys: [await loadSigningKey(keys.keyFile)],
      rolloutKeys: [await loadSigningKey(keys.rolloutKeyFile)],
      model,
      group: 'line-1',
      chunkSize: 1024,
      ttlSeconds: 3600,
      log: log.child('publisher'),
      onProgress: (d, n) => bar.update(d, n),
    });
    bar.finish();
    return result;
  } finally {
    await pub.close();
  }
}

/** Each device's end state and validation report, one line each. */
async function deviceOutcomes(tmp: string, ids: readonly string[], latest: Map<string, DeviceStatus>, target: string, out: (line: string) => void): Promise<DeviceOutcome[]> {
  const outcomes: DeviceOutcome[] = [];
  for (const id of ids) {
    const s = latest.get(id);
    const report = await fs
      .readFile(path.join(tmp, `${id}-validation.json`), 'utf8')
      .then((t) => JSON.parse(t) as { before: number; after: number; digits: number })
      .catch(() => undefined);
    const acked = s?.state === 'ok' && s.running === target;
    outcomes.push({ id, state: s?.state ?? 'no status', reason: s?.reason ?? undefined, acked, digits: report?.digits ?? 0, before: report?.before ?? null, after: report?.after ?? null });
    const acc = report ? `field accuracy ${(100 * report.before).toFixed(1)} % → ${(100 * report.after).toFixed(1)} % on its ${report.digits} held-out digits` : 'no validation report';
    out(`${id}: ${acked ? 'acked' : (s?.state ?? 'no status')}${s?.reason ? ` (${s.reason})` : ''}, ${acc}`);
  }
  return outcomes;
}

export async function runMnistDemo(opts: Partial<MnistDemoOptions> = {}): Promise<MnistDemoResult> {
  const o: MnistDemoOptions = { ...DEMO_DEFAULTS, ...opts };
  const out = o.out ?? ((line: string): void => void process.stdout.write(line + '\n'));
  const t0 = performance.now();
  // Quiet by default (FLEET_LOG=info to see the broker and the publisher).
  const log = createLogger('demo-mnist', parseLogLevel(process.env.FLEET_LOG, 'error'));
  const { base, state, cfg, split, fieldHeld, trainSeconds } = trainDemoModels(o);

  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-demo-mnist-'));
  const product = await productPath(base);
  const children: ChildProcess[] = [];
  let broker: Awaited<ReturnType<typeof startBroker>> | undefined;
  let observer: MqttTransport | undefined;
  try {
    const built = await product.build(state, o.quant, path.join(tmp, 'adapter'));
    const baseFile = path.join(tmp, 'base.safetensors');
    await fs.writeFile(baseFile, mlpToSafetensors(base));
    const fileBytes = (await fs.stat(baseFile)).size;
    const baseFieldAccuracy = accuracy(base, fieldHeld);
    const updatedFieldAccuracy = accuracy(built.model, fieldHeld);
    out(
      `base model: MLP 784-128-10 trained ${o.epochs} epochs on ${o.baseTrain} digits (${trainSeconds.toFixed(1)} s with the update's training); ` +
        `original test digits ${(100 * accuracy(base, split.test)).toFixed(1)} %, drifted field digits ${(100 * baseFieldAccuracy).toFixed(1)} %`,
    );
    out(
      `update: low-rank trained on ${o.fieldTrain} field digits (r1=${cfg.r1} r2=${cfg.r2}${cfg.b1 ? ' +b1' : ''}${cfg.b2 ? ' +b2' : ''}, ${o.quant}), ` +
        `built by the PEFT LoRA import: ${built.payload.byteLength} bytes = ${((100 * built.payload.byteLength) / fileBytes).toFixed(2)} % of the ${fileBytes}-byte model file`,
    );

    broker = await startBroker({ port: 0, dataDir: path.join(tmp, 'broker'), log: log.child('broker') });
    observer = await MqttTransport.connect({ url: broker.url, clientId: `fleet-demo-mnist-observer-${process.pid}` }, 10_000);
    const keys = await keygen(path.join(tmp, 'keys'));
    const ids = Array.from({ length: o.devices }, (_, k) => `mnist-device-${k + 1}`);
    const watch = await watchDevices(observer, ids, built.target);
    await startDevices(o, tmp, ids, fieldHeld, keys.trustFile, broker.url, baseFile, children);
    out(`broker ${broker.url}; ${ids.length} device agents (PIDs ${children.map((c) => c.pid).join(', ')}), each validating staged models on its own ${o.perDevice} held-out field digits`);

    const result = await publishDemoUpdate('mnist', 'mnist-mlp', broker.url, built.payload, keys, log, !(o.json || o.out !== undefined));
    const publishedAt = performance.now();
    out(`published release seq ${result.release.seq} (update ${result.updateId.slice(0, 12)}, ${result.release.steps[0].chunks} chunks); waiting for the devices`);
    watch.published();
    await watch.wait(o.timeoutSeconds);
    const waited = (performance.now() - publishedAt) / 1000;

    const outcomes = await deviceOutcomes(tmp, ids, watch.latest, built.target, out);
    const acked = outcomes.filter((d) => d.acked).length;
    const seconds = (performance.now() - t0) / 1000;
    const summary: MnistDemoResult = {
      devices: outcomes,
      acked,
      updateBytes: built.payload.byteLength,
      modelBytes: fileBytes,
      updatePercent: Number(((100 * built.payload.byteLength) / fileBytes).toFixed(3)),
      baseFieldAccuracy,
      updatedFieldAccuracy,
      trainSeconds: Number(trainSeconds.toFixed(2)),
      seconds: Number(seconds.toFixed(2)),
    };
    out(`${acked}/${ids.length} devices acked ${waited.toFixed(1)} s after publishing; update ${summary.updateBytes} bytes = ${summary.updatePercent.toFixed(2)} % of the model; ${seconds.toFixed(1)} s in all`);
    if (o.json) out(JSON.stringify(summary));
    return summary;
  } finally {
    await Promise.all(children.map((c) => stopChild(c)));
    await observer?.close();
    await broker?.close();
    await product.close();
    if (!o.keep) await fs.rm(tmp, { recursive: true, force: true });
    else out(`kept ${tmp}`);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      devices: { type: 'string' },
      seed: { type: 'string' },
      epochs: { type: 'string' },
      budget: { type: 'string' },
      quant: { type: 'string' },
      timeout: { type: 'string' },
      json: { type: 'boolean' },
      keep: { type: 'boolean' },
    },
  });
  const num = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!(n > 0)) throw new Error(`--${name} ${v}: expected a positive number`);
    return n;
  };
  if (values.quant !== undefined && values.quant !== 'f32' && values.quant !== 'int8') throw new Error('--quant must be f32 or int8');
  const opts: Partial<MnistDemoOptions> = { json: values.json === true, keep: values.keep === true };
  const set = <K extends keyof MnistDemoOptions>(k: K, v: MnistDemoOptions[K] | undefined): void => {
    if (v !== undefined) opts[k] = v;
  };
  set('devices', num(values.devices, 'devices'));
  set('seed', num(values.seed, 'seed'));
  set('epochs', num(values.epochs, 'epochs'));
  set('budgetPercent', num(values.budget, 'budget'));
  set('timeoutSeconds', num(values.timeout, 'timeout'));
  set('quant', values.quant as 'f32' | 'int8' | undefined);
  const r = await runMnistDemo(opts);
  process.exitCode = r.acked === r.devices.length ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`demo:mnist: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(1);
  });
}
