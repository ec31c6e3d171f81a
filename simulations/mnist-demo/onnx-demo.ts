/**
 * `npm run demo:onnx`: demo:mnist with ONNX models end to end. The MNIST MLP of
 * sim:paper (trained here, seeded) is exported as ONNX (Gemm + Relu + Gemm, as
 * PyTorch exports nn.Linear); the drifted-digits update is trained as in demo:mnist,
 * merged into a second ONNX file, and built from the two ONNX files by the product's
 * builder. Three device processes run base.onnx (DIR/current.onnx) and validate the
 * staged model with ONNX Runtime on their own held-out drifted digits
 * (`--validate-onnx`, refusing a drop of more than 1 point) before they switch and ack.
 * Prints per device the accuracy before → after from the device's own status, and our
 * own MLP's accuracy on the same digits from the very file the device now runs: ONNX
 * Runtime and our MLP must agree. Exits non-zero unless every device acked.
 *
 *   npm run demo:onnx [-- --devices 3 --json --keep]
 */
import type { ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startBroker } from '../../nodes/broker-node.ts';
import { spawnFleetLogged, stopChild } from '../../platform/child-process.ts';
import { decodePayload } from '../../protocol/lowrank.ts';
import { writeSafetensors } from '../../protocol/safetensors.ts';
import type { DeviceStatus } from '../../protocol/status.ts';
import { buildUpdate } from '../../publisher/build.ts';
import { twoModelSource } from '../../publisher/delta-source.ts';
import { keygen } from '../../publisher/keys.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { createLogger, parseLogLevel } from '../../util/log.ts';
import { digestOnnxFile } from '../../util/onnx-file.ts';
import { quantizeLora } from '../paper/compress.ts';
import { mergeLora } from '../paper/train.ts';
import { PIXELS, subset, type Dataset } from '../paper/data.ts';
import { accuracy } from '../paper/mlp.ts';
import { DEMO_DEFAULTS, publishDemoUpdate, trainDemoModels, watchDevices, type MnistDemoOptions } from './demo.ts';
import { mlpFromOnnx, mlpToOnnx } from './onnx-mlp.ts';

export interface OnnxDeviceOutcome {
  id: string;
  state: string;
  reason: string | null;
  acked: boolean;
  digits: number;
  /** ONNX Runtime on the device (its status). */
  ortBefore: number | null;
  ortAfter: number | null;
  /** Our own MLP on the same digits, from base.onnx and from the device's DIR/current.onnx. */
  mlpBefore: number;
  mlpAfter: number | null;
}

export interface OnnxDemoResult {
  devices: OnnxDeviceOutcome[];
  acked: number;
  /** Every device: ONNX Runtime's accuracy equals our MLP's, before and after. */
  ortEqualsMlp: boolean;
  updateBytes: number;
  modelBytes: number;
  updatePercent: number;
  seconds: number;
}

/** A device's held-out digits as --validate-onnx samples: inputs F32 [n, 784], labels U8 [n]. */
function samplesFile(ds: Dataset): Uint8Array {
  return writeSafetensors([
    { name: 'inputs', dtype: 'F32', shape: [ds.n, PIXELS], data: new Uint8Array(ds.x.buffer.slice(ds.x.byteOffset, ds.x.byteOffset + ds.x.byteLength)) },
    { name: 'labels', dtype: 'U8', shape: [ds.n], data: ds.y.slice() },
  ]);
}

const pct = (x: number | null): string => (x === null ? '?' : `${(100 * x).toFixed(1)} %`);

type Mlp = ReturnType<typeof trainDemoModels>['base'];

/** base.onnx and target.onnx in tmp, and the update the product's builder makes of the two. */
async function buildOnnxUpdate(
  o: MnistDemoOptions,
  tmp: string,
  base: Mlp,
  target: Mlp,
  trainSeconds: number,
  out: (line: string) => void,
): Promise<{ baseFile: string; modelBytes: number; payload: Uint8Array; targetDigest: string }> {
  const baseFile = path.join(tmp, 'base.onnx');
  const targetFile = path.join(tmp, 'target.onnx');
  await fs.writeFile(baseFile, mlpToOnnx(base));
  await fs.writeFile(targetFile, mlpToOnnx(target));
  const modelBytes = (await fs.stat(baseFile)).size;
  // The product's builder on the two ONNX files (what `fleet build --base base.onnx --target target.onnx --energy 0.9999` runs).
  const source = await twoModelSource(baseFile, targetFile);
  const built = await buildUpdate({ source, mode: { kind: 'energy', fraction: 0.9999 }, quant: o.quant === 'int8' ? 'int8' : 'f32', method: 'lowrank' }).finally(() => source.close());
  const payload = built.payload;
  const targetDigest = decodePayload(payload).target;
  out(
    `base.onnx: MLP 784-128-10 (Gemm, Relu, Gemm) trained on ${o.baseTrain} digits, ${modelBytes} bytes, digest ${(await digestOnnxFile(baseFile)).slice(0, 16)}…; ` +
      `target.onnx: + a low-rank update trained on ${o.fieldTrain} drifted digits (${trainSeconds.toFixed(1)} s of training)`,
  );
  out(
    `update built from the two ONNX files: ${payload.byteLength} bytes = ${((100 * payload.byteLength) / modelBytes).toFixed(2)} % of the model (${built.report.tensors.map((t) => `${t.name} ${t.kind === 'low-rank' ? `r${t.rank}` : t.kind}`).join(', ')})`,
  );
  return { baseFile, modelBytes, payload, targetDigest };
}

/** One `fleet device` per id running base.onnx, each validating with ONNX Runtime on its own digits. */
async function startOnnxDevices(tmp: string, ids: readonly string[], digits: readonly Dataset[], trustFile: string, brokerUrl: string, baseFile: string, children: ChildProcess[]): Promise<void> {
  for (const [k, id] of ids.entries()) {
    const samples = path.join(tmp, `${id}-digits.safetensors`);
    await fs.writeFile(samples, samplesFile(digits[k]));
    const args = ['device', '--id', id, '--model', 'mnist-onnx', '--group', 'line-1', '--dir', path.join(tmp, id), '--trust', trustFile, '--broker', brokerUrl, '--initial', baseFile];
    children.push(spawnFleetLogged([...args, '--validate-onnx', samples, '--max-drop', '1'], path.join(tmp, `${id}.log`)));
  }
}

/** Each device's end state: ONNX Runtime's accuracy from its status beside our MLP's on the same digits, one line each. */
async function onnxOutcomes(
  tmp: string,
  ids: readonly string[],
  digits: readonly Dataset[],
  base: Mlp,
  latest: Map<string, DeviceStatus>,
  targetDigest: string,
  out: (line: string) => void,
): Promise<OnnxDeviceOutcome[]> {
  const devices: OnnxDeviceOutcome[] = [];
  for (const [k, id] of ids.entries()) {
    const s = latest.get(id);
    const acked = s?.state === 'ok' && s.running === targetDigest;
    const current = path.join(tmp, id, 'current.onnx');
    const mlpAfter = acked ? accuracy(mlpFromOnnx(new Uint8Array(await fs.readFile(current))), digits[k]) : null;
    const d: OnnxDeviceOutcome = {
      id,
      state: s?.state ?? 'no status',
      reason: s?.reason ?? null,
      acked,
      digits: digits[k].n,
      ortBefore: s?.validation?.runningAccuracy ?? null,
      ortAfter: s?.validation?.accuracy ?? null,
      mlpBefore: accuracy(base, digits[k]),
      mlpAfter,
    };
    devices.push(d);
    out(
      `${id}: ${acked ? 'acked' : d.state}${d.reason ? ` (${d.reason})` : ''}; ONNX Runtime on its ${d.digits} digits ${pct(d.ortBefore)} → ${pct(d.ortAfter)}; ` +
        `our MLP on the same digits ${pct(d.mlpBefore)} → ${pct(d.mlpAfter)}${d.ortBefore === d.mlpBefore && d.ortAfter === d.mlpAfter ? ' (equal)' : ' (DIFFERENT)'}`,
    );
  }
  return devices;
}

export async function runOnnxDemo(opts: Partial<MnistDemoOptions> = {}): Promise<OnnxDemoResult> {
  const o: MnistDemoOptions = { ...DEMO_DEFAULTS, ...opts };
  const out = o.out ?? ((line: string): void => void process.stdout.write(line + '\n'));
  const t0 = performance.now();
  const log = createLogger('demo-onnx', parseLogLevel(process.env.FLEET_LOG, 'error'));
  const { base, state, fieldHeld, trainSeconds } = trainDemoModels(o);
  const target = mergeLora(base, quantizeLora(base, state, o.quant));

  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-demo-onnx-'));
  const children: ChildProcess[] = [];
  let broker: Awaited<ReturnType<typeof startBroker>> | undefined;
  let observer: MqttTransport | undefined;
  try {
    const { baseFile, modelBytes, payload, targetDigest } = await buildOnnxUpdate(o, tmp, base, target, trainSeconds, out);
    broker = await startBroker({ port: 0, dataDir: path.join(tmp, 'broker'), log: log.child('broker') });
    observer = await MqttTransport.connect({ url: broker.url, clientId: `fleet-demo-onnx-observer-${process.pid}` }, 10_000);
    const keys = await keygen(path.join(tmp, 'keys'));
    const ids = Array.from({ length: o.devices }, (_, k) => `onnx-device-${k + 1}`);
    const digits = ids.map((_, k) =>
      subset(
        fieldHeld,
        Array.from({ length: o.perDevice }, (_, i) => k * o.perDevice + i),
      ),
    );
    const watch = await watchDevices(observer, ids, targetDigest);
    await startOnnxDevices(tmp, ids, digits, keys.trustFile, broker.url, baseFile, children);
    out(
      `broker ${broker.url}; ${ids.length} device processes (PIDs ${children.map((c) => c.pid).join(', ')}) running DIR/current.onnx, each validating with ONNX Runtime on its own ${o.perDevice} held-out drifted digits`,
    );
    await publishDemoUpdate('onnx', 'mnist-onnx', broker.url, payload, keys, log, false);
    watch.published();
    await watch.wait(o.timeoutSeconds);

    const devices = await onnxOutcomes(tmp, ids, digits, base, watch.latest, targetDigest, out);
    const acked = devices.filter((d) => d.acked).length;
    const result: OnnxDemoResult = {
      devices,
      acked,
      ortEqualsMlp: devices.every((d) => d.ortBefore === d.mlpBefore && d.ortAfter === d.mlpAfter),
      updateBytes: payload.byteLength,
      modelBytes,
      updatePercent: Number(((100 * payload.byteLength) / modelBytes).toFixed(3)),
      seconds: Number(((performance.now() - t0) / 1000).toFixed(2)),
    };
    out(`${acked}/${ids.length} devices acked; ONNX Runtime's accuracy ${result.ortEqualsMlp ? 'equals' : 'does NOT equal'} our MLP's on every device; ${result.seconds.toFixed(1)} s in all`);
    if (o.json) out(JSON.stringify(result));
    return result;
  } finally {
    await Promise.all(children.map((c) => stopChild(c)));
    await observer?.close();
    await broker?.close();
    if (!o.keep) await fs.rm(tmp, { recursive: true, force: true });
    else out(`kept ${tmp}`);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { devices: { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean' }, keep: { type: 'boolean' } } });
  const devices = values.devices === undefined ? undefined : Number(values.devices);
  const seed = values.seed === undefined ? undefined : Number(values.seed);
  if ((devices !== undefined && !(Number.isInteger(devices) && devices >= 1 && devices <= 20)) || (seed !== undefined && !Number.isInteger(seed))) {
    throw new Error('--devices takes 1 to 20, --seed an integer');
  }
  const r = await runOnnxDemo({ json: values.json === true, keep: values.keep === true, ...(devices ? { devices } : {}), ...(seed !== undefined ? { seed } : {}) });
  process.exitCode = r.acked === r.devices.length && r.ortEqualsMlp ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`demo:onnx: ${(e as Error)?.message ?? String(e)}\n`);
    process.exit(1);
  });
}
