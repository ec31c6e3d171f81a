import { UsageError } from '../platform/errors.ts';
import { PUBLISH_DEFAULTS } from '../publisher/defaults.ts';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { applyUpdateFile } from '../device/apply.ts';
import { DirLock } from '../util/dir-lock.ts';
import { DeviceAgent } from '../device/agent.ts';
import { installBundle } from '../device/offline-install.ts';
import { DeviceStorage } from '../device/storage.ts';
import { parseTrustFile } from '../protocol/release.ts';
import { makeBundle } from '../publisher/bundle.ts';
import { readBundle } from '../protocol/bundle.ts';
import { loadSigningKey } from '../publisher/keys.ts';
import { createLogger } from '../util/log.ts';
import { modelFormatOf } from '../util/model-format.ts';
import { checkUpdateFile, readUpdateFile } from '../util/update-file.ts';
import { collect, parseAccuracy, parseDuration, parsePoints } from './options.ts';
import { onnxValidatorFor, type OnnxValidationFlags } from '../nodes/onnx-options.ts';
import { describeValidation, type StagedValidator, type ValidationFigures } from '../device/onnx-validate.ts';

/** A validator that remembers its last figures, to print them after an install. */
function reportValidation(v: StagedValidator | undefined): void {
  const last = (v as { last?: ValidationFigures } | undefined)?.last;
  if (last) process.stdout.write(`${describeValidation(last)}\n`);
}

/** `fleet bundle` and `fleet apply`: updates for sites reached by a memory stick. */
export function registerOfflineCommands(program: Command): void {
  program
    .command('bundle')
    .description('write a signed single-file bundle (release + payloads) for an offline install')
    .requiredOption('--update <file>', 'update payload (repeat for a chain)', collect, [])
    .option('--full <file>', 'the target model, for devices on no chain')
    .requiredOption('--key <file>', 'release key (repeat for k-of-n)', collect)
    .option('--rollout-key <file>', 'rollout key: signs the assignment (default: the release keys, for one-role trust files)', collect)
    .requiredOption('--model <name>', 'model name')
    .requiredOption('--group <group>', 'device group')
    .option('--ttl <duration>', 'release lifetime', parseDuration, PUBLISH_DEFAULTS.ttlSeconds)
    .requiredOption('--out <file>', 'bundle file to write')
    .action(async (o: { update: string[]; full?: string; key: string[]; rolloutKey?: string[]; model: string; group: string; ttl: number; out: string }) => {
      const payloads = await Promise.all(o.update.map(readUpdateFile));
      const fullModel = o.full ? new Uint8Array(await fs.readFile(o.full)) : undefined;
      const keys = await Promise.all(o.key.map(loadSigningKey));
      const rolloutKeys = o.rolloutKey ? await Promise.all(o.rolloutKey.map(loadSigningKey)) : undefined;
      const { bytes, release } = makeBundle({ payloads, fullModel, keys, rolloutKeys, model: o.model, group: o.group, ttlSeconds: o.ttl });
      const tmp = `${o.out}.tmp-${process.pid}`;
      await fs.writeFile(tmp, bytes);
      await fs.rename(tmp, o.out);
      process.stdout.write(`wrote ${o.out} (${bytes.byteLength} bytes): ${o.model}/${o.group} seq ${release.seq}, ${release.steps.length} step(s) to ${release.target}\n`);
    });

  program
    .command('apply')
    .description('apply an update offline, exactly as a device does: an update file to a model file, or a signed bundle to a model file or a device directory')
    .option('--model <file>', 'the model to update (.safetensors or .onnx)')
    .option('--update <file>', 'an update file (unsigned: checks base and result digests)')
    .option('--out <file>', 'the updated model to write (with --model)')
    .option('--bundle <file>', 'a signed bundle from `fleet bundle`')
    .option('--trust <file>', 'trust file (with --bundle)')
    .option('--dir <dir>', 'a device directory to install the bundle into (journaled, as the agent does)')
    .option('--device-model <name>', "the model name this device runs (default: the release's)")
    .option('--device-group <group>', "the group this device is in (default: the release's)")
    .option('--validate-onnx <samples>', 'run the updated ONNX model with ONNX Runtime on this labelled sample file before anything is written or switched (docs/onnx.md)')
    .option('--min-accuracy <x>', 'with --validate-onnx: refuse below this accuracy (0.9 or 90%)', parseAccuracy)
    .option('--max-drop <points>', 'with --validate-onnx: refuse when accuracy falls more than this many points below the model given', parsePoints)
    .action(async (o: { model?: string; update?: string; out?: string; bundle?: string; trust?: string; dir?: string; deviceModel?: string; deviceGroup?: string } & OnnxValidationFlags) => {
      if (o.bundle) {
        if (!o.trust) throw new UsageError('bad-options', '--bundle needs --trust TRUST_FILE');
        if (!o.dir === !(o.model && o.out)) throw new UsageError('bad-options', 'with --bundle give either --dir DEVICE_DIR or --model FILE --out FILE');
        const bundle = readBundle(new Uint8Array(await fs.readFile(o.bundle)));
        const trust = parseTrustFile(await fs.readFile(o.trust, 'utf8'));
        const log = createLogger('apply');
        if (o.dir) {
          // Not beside a running agent: it would see its directory change under it.
          const lock = await DirLock.acquire(o.dir, 'fleet apply --bundle');
          const storage = new DeviceStorage(o.dir);
          await storage.init();
          const validator = await onnxValidatorFor(o, storage);
          const r = await installBundle({ bundle, trust, storage, model: o.deviceModel, group: o.deviceGroup, now: Date.now(), log, validator });
          reportValidation(validator);
          await lock.release();
          process.stdout.write(
            r.steps === 0 && r.from === r.to ? `${o.dir} already runs ${r.to}\n` : `${o.dir}: ${r.from.slice(0, 16)}… -> ${r.to} (${r.steps} step(s)); ${path.basename(storage.currentPath)} switched\n`,
          );
          return;
        }
        // A model file: install into a throwaway device directory, then copy the result out.
        const tmpDir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-apply-'));
        try {
          const storage = new DeviceStorage(tmpDir, undefined, modelFormatOf(o.model!));
          await DeviceAgent.provision(storage, o.model!, (f, fsys) => storage.format.digestFile(f, fsys));
          const validator = await onnxValidatorFor(o, storage);
          const r = await installBundle({ bundle, trust, storage, model: o.deviceModel, group: o.deviceGroup, now: Date.now(), log, validator });
          reportValidation(validator);
          await fs.copyFile(storage.modelPath(r.to), `${o.out}.tmp-${process.pid}`);
          await fs.rename(`${o.out}.tmp-${process.pid}`, o.out!);
          process.stdout.write(`wrote ${o.out}: ${r.to}\n`);
        } finally {
          await fs.rm(tmpDir, { recursive: true, force: true });
        }
        return;
      }
      if (!o.model || !o.update || !o.out) throw new UsageError('bad-options', 'give --model, --update and --out (or --bundle with --trust)');
      const format = modelFormatOf(o.model);
      const payloadStart = await checkUpdateFile(o.update);
      const validator = await onnxValidatorFor(o, new DeviceStorage(path.dirname(path.resolve(o.model)), undefined, format));
      if (!validator) {
        const target = await applyUpdateFile(o.model, o.update, o.out, undefined, payloadStart, format);
        process.stdout.write(`wrote ${o.out}: ${target}\n`);
        return;
      }
      // Staged beside --out, validated against --model, and only then renamed into place.
      const staged = `${o.out}.staged-${process.pid}`;
      try {
        const target = await applyUpdateFile(o.model, o.update, staged, undefined, payloadStart, format);
        const figures = await validator.validate(staged, o.model);
        await fs.rename(staged, o.out);
        process.stdout.write(`${describeValidation(figures)}\nwrote ${o.out}: ${target}\n`);
      } finally {
        await fs.rm(staged, { force: true });
      }
    });
}
