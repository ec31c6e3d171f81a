import { DEVICE_DEFAULTS } from './defaults.ts';
import { UsageError } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { chunkList, sha256Hex } from '../protocol/chunks.ts';
import { capsOf } from './agent-config.ts';
import { checkRelease, pathFrom, verifyRelease, type TrustFile } from '../protocol/release.ts';
import type { Bundle } from '../protocol/bundle.ts';
import type { Logger } from '../util/log.ts';
import { digestHealthCheck } from './health.ts';
import { Installer } from './installer.ts';
import { DeviceError } from './reasons.ts';
import type { DeviceStorage } from './storage.ts';
import type { StagedValidator } from './onnx-validate.ts';

export interface OfflineInstallOptions {
  bundle: Bundle;
  trust: TrustFile;
  storage: DeviceStorage;
  /** The model and group this device runs; default: those the release names. */
  model?: string;
  group?: string;
  now: number;
  skewSeconds?: number;
  log: Logger;
  /** Checks the staged model before the switch (`fleet apply --validate-onnx`). */
  validator?: StagedValidator;
}

/**
 * Install a bundle into a device directory exactly as the agent would: the
 * release verified against the trust file and checked for freshness and
 * replay against the directory's memory, the path from the running digest,
 * every payload checked against its step (SHA-256 and chunk list), then the
 * journaled build, validation-free switch and health check.
 */
export async function installBundle(o: OfflineInstallOptions): Promise<{ from: string; to: string; steps: number }> {
  const s = o.storage;
  await s.init();
  const pointer = await s.pointer();
  if (!pointer) throw new UsageError('no-model', `${s.dir} holds no model`);
  const memory = await s.memory();
  const body = verifyRelease(o.bundle.release, o.trust);
  checkRelease(body, {
    model: o.model ?? body.model,
    group: o.group ?? body.group,
    now: Math.floor(o.now / 1000),
    clockFloor: memory.clockFloor,
    highestSeq: memory.highestSeq,
    skewSeconds: o.skewSeconds ?? DEVICE_DEFAULTS.skewSeconds,
    caps: capsOf({}),
  });
  if (body.target === pointer.digest) return { from: pointer.digest, to: body.target, steps: 0 };
  const held = await s.hasVersion(body.target);
  const steps = held ? [] : pathFrom(body, pointer.digest);
  if (!steps) throw new DeviceError('wrong-base', `the bundle has no step from ${pointer.digest.slice(0, 16)}…`);
  for (const step of steps) {
    const payload = o.bundle.payloads.get(step.updateId);
    if (!payload) throw new DeviceError('unknown-update', `the bundle does not carry update ${step.updateId}`);
    if (sha256Hex(payload) !== step.sha256) throw new DeviceError('payload-hash-mismatch', `update ${step.updateId}`);
    if (sha256Hex(chunkList(payload, step.chunkSize)) !== step.listSha256) throw new DeviceError('chunk-list-mismatch', `update ${step.updateId}`);
    const dir = s.downloadDir(step.updateId);
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(path.join(dir, 'payload'), payload);
  }
  const installer = new Installer(s, { deviceId: 'offline', validateTimeoutMs: 0, healthTimeoutMs: 0, onSwitchTimeoutMs: 0, validator: o.validator }, digestHealthCheck, o.log);
  await installer.recover();
  const verified = await installer.verify(steps);
  await installer.stage(pointer.digest, verified, body.target, body.rollback);
  await installer.switchTo(body.target, pointer.digest, body.rollback);
  const health = await installer.trial(body.target, pointer.digest, body.rollback, 1, async () => undefined);
  if (!health.healthy) throw new DeviceError(health.reason, health.message);
  for (const step of steps) await s.removeDownload(step.updateId);
  memory.highestSeq = body.seq;
  memory.clockFloor = Math.max(memory.clockFloor, body.issued);
  memory.handled = sha256Hex(o.bundle.release);
  await s.saveMemory(memory);
  return { from: pointer.digest, to: body.target, steps: steps.length };
}
