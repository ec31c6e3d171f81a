import { IoError, RefusalError, UsageError } from '../platform/errors.ts';
import { PUBLISH_DEFAULTS } from '../publisher/defaults.ts';
import { promises as fs } from 'node:fs';
import type { Command } from 'commander';
import { DEFAULT_CHUNK_SIZE } from '../protocol/chunks.ts';
import { parseTrustFile, type SigningKey, type TrustFile } from '../protocol/release.ts';
import { parseGroupKeyFile } from '../protocol/seal.ts';
import { Topics } from '../protocol/topics.ts';
import { loadSigningKey } from '../publisher/keys.ts';
import { publishManifestOnly, publishUpdate } from '../publisher/publish.ts';
import { checkUpdatesOnBase } from '../publisher/base-check.ts';
import { rollbackGroup } from '../publisher/rollback.ts';
import { collectInventory } from '../rollout/inventory.ts';
import { signerProblem, trustBesideKeys } from '../publisher/signer-check.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { createLogger, parseLogLevel, type Logger } from '../util/log.ts';
import { createProgress } from '../util/progress.ts';
import { readUpdateFile } from '../util/update-file.ts';
import { collect, parseDuration, parseIntArg } from './options.ts';

const short = (d: string | null): string => (d === null ? 'any' : d.slice(0, 12));

async function readInput(file: string, what: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await fs.readFile(file));
  } catch (e) {
    throw new IoError('unreadable-file', `cannot read ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
  }
}

export async function readTrust(file: string | undefined): Promise<TrustFile | undefined> {
  if (file === undefined) return undefined;
  const text = await fs.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new IoError('unreadable-file', `cannot read trust file ${file}: ${e.code ?? e.message}`);
  });
  return parseTrustFile(text);
}

interface PublishCli {
  update: string[];
  full?: string;
  key?: string[];
  rolloutKey?: string[];
  model: string;
  group?: string;
  broker: string;
  chunkSize: number;
  ttl: number;
  seq?: number;
  trust?: string;
  groupKey?: string;
  manifestOnly?: boolean;
  yes?: boolean;
  base?: string;
}

interface RollbackCli {
  full?: string;
  key?: string[];
  rolloutKey?: string[];
  model: string;
  group: string;
  broker: string;
  chunkSize: number;
  ttl: number;
  seq?: number;
  trust?: string;
}

/** Release keys and rollout keys from the command line; at least one of them. */
export async function loadRoleKeys(o: { key?: string[]; rolloutKey?: string[] }): Promise<{ keys: SigningKey[]; rolloutKeys: SigningKey[] | undefined }> {
  const keys = await Promise.all((o.key ?? []).map(loadSigningKey));
  const rolloutKeys = o.rolloutKey?.length ? await Promise.all(o.rolloutKey.map(loadSigningKey)) : undefined;
  if (keys.length === 0 && !rolloutKeys) throw new UsageError('bad-options', 'give a release key (--key) and/or a rollout key (--rollout-key)');
  return { keys, rolloutKeys };
}

/**
 * Refuses a group and model that no device has reported (retained statuses,
 * collected for 1.5 s), naming what the broker does know. A broker that does
 * not let this login read statuses cannot say: then nothing is refused.
 */
async function checkAudience(t: MqttTransport, topics: Topics, group: string, model: string, log: Logger): Promise<void> {
  let records;
  try {
    ({ records } = await collectInventory(t, topics, 1500));
  } catch (e) {
    log.info('cannot read device statuses to check the group and model (not allowed for this login?)', { error: String(e) });
    return;
  }
  const statuses = records.flatMap((r) => (r.status ? [r.status] : []));
  if (statuses.some((s) => s.group === group && s.model === model)) return;
  const list = (xs: string[]): string => (xs.length === 0 ? 'none' : [...new Set(xs)].sort().slice(0, 8).join(', ') + (new Set(xs).size > 8 ? ', …' : ''));
  const groups = list(statuses.filter((s) => s.model === model).map((s) => s.group));
  throw new UsageError(
    'unknown-group',
    `no device has reported group ${group} for model ${model} (groups with devices on ${model}: ${groups}; models: ${list(statuses.map((s) => s.model))}); check the names, or give --yes to publish for devices yet to come`,
  );
}

/** `fleet publish` and `fleet rollback`. */
export function registerReleaseCommands(program: Command): void {
  const logLevel = (): ReturnType<typeof parseLogLevel> => parseLogLevel(program.opts().logLevel ?? process.env.FLEET_LOG);
  const topics = (): Topics => new Topics(program.opts().prefix);

  program
    .command('publish')
    .description('upload updates to the update server, sign their manifest (release keys) and assign it to a group (rollout key)')
    .requiredOption('--update <file>', 'update payload (CBOR), e.g. from `fleet synth`; repeat for a chain (v1->v2, v2->v3, any order)', collect)
    .option('--full <model>', 'the target model (safetensors), for devices on no chain')
    .option('--key <file>', 'release key: signs the manifest (repeat for k-of-n); without it, a manifest already retained with these steps is assigned', collect)
    .option('--rollout-key <file>', 'rollout key: signs the group assignment (default: the release keys, for one-role trust files)', collect)
    .option('--manifest-only', 'upload and publish only the signed manifest (release keys); a rollout key assigns it later')
    .option('--yes', 'publish even when no device has reported this group and model yet (a new group, devices yet to come)')
    .option('--base <model>', "the model the devices run: the update is applied to it first (as a device would) and must give the release's target digest")
    .requiredOption('--model <name>', 'model name')
    .option('--group <group>', 'device group (required unless --manifest-only)')
    .requiredOption('--broker <url>', 'broker URL')
    .option('--chunk-size <bytes>', 'chunk size', parseIntArg(1024, 1 << 20), DEFAULT_CHUNK_SIZE)
    .option('--ttl <duration>', 'release lifetime (e.g. 30d)', parseDuration, PUBLISH_DEFAULTS.ttlSeconds)
    .option('--seq <n>', 'sequence number (default: above the current one)', parseIntArg(0))
    .option(
      '--trust <file>',
      "the fleet's trust file: the keys, the current release and retained manifests are checked against it before anything is uploaded (default: trust.json beside the keys, else the keys themselves)",
    )
    .option('--group-key <file>', 'seal the payloads with this group key (`fleet groupkey`): the broker and update server never see the weights')
    .action(async (o: PublishCli) => {
      const log = createLogger('publish', logLevel());
      const payloads = await Promise.all(o.update.map(readUpdateFile));
      const fullModel = o.full === undefined ? undefined : await readInput(o.full, 'full model');
      const { keys, rolloutKeys } = await loadRoleKeys(o);
      if (!o.manifestOnly && o.group === undefined) throw new UsageError('bad-options', '--group is required (or --manifest-only)');
      // The fleet's trust file: given, or the one `fleet keygen` wrote beside the keys.
      const trustFile = o.trust ?? trustBesideKeys([...(o.key ?? []), ...(o.rolloutKey ?? [])]);
      const trust = await readTrust(trustFile);
      // Checked before anything is uploaded: what the devices would refuse is not sent at all.
      const problem = trust && signerProblem(trust, keys, rolloutKeys, !o.manifestOnly, keys.length > 0);
      if (problem) throw new RefusalError('invalid-release', `${problem} (checked against ${trustFile})`);
      // The device's own apply on the model they run: a wrong base or a wrong result is refused before a byte is uploaded.
      if (o.base !== undefined) await checkUpdatesOnBase(o.base, payloads);
      const groupKey = o.groupKey ? parseGroupKeyFile(await fs.readFile(o.groupKey, 'utf8')) : undefined;
      const transport = await MqttTransport.connect({ url: o.broker, clientId: `fleet-publisher-${process.pid}` }, 30_000);
      const progress = createProgress('upload');
      try {
        // A typo in a group or model name would retain a release no device ever receives.
        if (!o.manifestOnly && !o.yes) await checkAudience(transport, topics(), o.group!, o.model, log);
        if (o.manifestOnly) {
          const m = await publishManifestOnly({
            transport,
            topics: topics(),
            payloads,
            fullModel,
            keys,
            model: o.model,
            groupKey,
            chunkSize: o.chunkSize,
            log,
            onProgress: (d, n) => progress.update(d, n),
          });
          progress.finish('uploaded');
          process.stdout.write(
            `published manifest ${m.manifest} for ${o.model}: target ${short(m.target)}, ${m.steps.length} step(s); assign it with a rollout key (fleet publish --rollout-key … without --key, or a rollout)\n`,
          );
          return;
        }
        const r = await publishUpdate({
          transport,
          topics: topics(),
          payloads,
          fullModel,
          keys,
          rolloutKeys,
          model: o.model,
          group: o.group!,
          trust,
          groupKey,
          chunkSize: o.chunkSize,
          ttlSeconds: o.ttl,
          seq: o.seq,
          log,
          onProgress: (d, n) => progress.update(d, n),
        });
        progress.finish(r.alreadyStored ? 'already on the update server' : `${r.uploadedChunks} chunks sent`);
        const b = r.release;
        const bytes = r.uploads.reduce((a, u) => a + u.size, 0);
        process.stdout.write(
          `published ${o.model} for group ${o.group}: manifest ${short(b.manifest)}, seq ${b.seq}, target ${short(b.target)}, ${b.steps.length} step(s), ${bytes} bytes, previous ${b.previous === null ? 'none' : short(b.previous)}, expires ${new Date(b.expires * 1000).toISOString()}\n`,
        );
        for (const s of b.steps) {
          process.stdout.write(`  ${s.from === null ? 'full model' : `${short(s.from)} -> ${short(s.to)}`}: update ${s.updateId}, ${s.size} bytes, ${s.chunks} chunks\n`);
        }
      } finally {
        await transport.close();
      }
    });

  program
    .command('rollback')
    .description('take a group back to the version it ran before the current release (an assignment with rollback: true)')
    .option('--rollout-key <file>', "rollout key: signs the assignment of the earlier version's retained manifest", collect)
    .option('--key <file>', 'release key (repeat for k-of-n): needed only with --full, or when no manifest of the earlier version is retained', collect)
    .requiredOption('--model <name>', 'model name')
    .requiredOption('--group <group>', 'device group')
    .requiredOption('--broker <url>', 'broker URL')
    .option('--full <model>', 'the previous model (safetensors), for devices that no longer hold it')
    .option('--chunk-size <bytes>', 'chunk size of the full model upload', parseIntArg(1024, 1 << 20), DEFAULT_CHUNK_SIZE)
    .option('--ttl <duration>', 'release lifetime (e.g. 30d)', parseDuration, PUBLISH_DEFAULTS.ttlSeconds)
    .option('--seq <n>', 'sequence number (default: above the current one)', parseIntArg(0))
    .option('--trust <file>', 'trust file the current release must verify against (default: the keys)')
    .action(async (o: RollbackCli) => {
      const log = createLogger('rollback', logLevel());
      const fullModel = o.full === undefined ? undefined : await readInput(o.full, 'full model');
      const { keys, rolloutKeys } = await loadRoleKeys(o);
      const trust = await readTrust(o.trust);
      const transport = await MqttTransport.connect({ url: o.broker, clientId: `fleet-rollback-${process.pid}` }, 30_000);
      const progress = createProgress('upload');
      try {
        const r = await rollbackGroup({
          transport,
          topics: topics(),
          keys,
          rolloutKeys,
          model: o.model,
          group: o.group,
          fullModel,
          trust,
          chunkSize: o.chunkSize,
          ttlSeconds: o.ttl,
          seq: o.seq,
          log,
          onProgress: (d, n) => progress.update(d, n),
        });
        if (r.upload) progress.finish(r.upload.alreadyStored ? 'already on the update server' : `${r.upload.uploadedChunks} chunks sent`);
        const how = r.upload ? `with the full model (update ${r.upload.updateId}, ${r.upload.size} bytes)` : 'without a full model (devices that no longer hold it refuse with wrong-base)';
        process.stdout.write(
          `rolled back ${o.model} for group ${o.group}: ${short(r.from)} -> ${short(r.to)}, seq ${r.replacedSeq} -> ${r.release.seq}, ${how}, expires ${new Date(r.release.expires * 1000).toISOString()}\n`,
        );
      } finally {
        await transport.close();
      }
    });

  program
    .command('withdraw')
    .description("take a group's release back (an empty retained release): devices keep the model they run, and a download in progress stops")
    .requiredOption('--model <name>', 'model name')
    .requiredOption('--group <group>', 'device group')
    .requiredOption('--broker <url>', 'broker URL')
    .action(async (o: { model: string; group: string; broker: string }) => {
      const t = topics();
      const topic = t.release(o.group, o.model);
      const transport = await MqttTransport.connect({ url: o.broker, clientId: `fleet-withdraw-${process.pid}` }, 30_000);
      try {
        // Retained and empty: the broker drops its copy, and every subscriber (devices, the update server, a gateway) is told (docs/protocol.md §2).
        await transport.publish(topic, new Uint8Array(0), { qos: 1, retain: true });
        process.stdout.write(`withdrew the release of ${o.model} for group ${o.group} (${topic}); devices keep the model they run\n`);
      } finally {
        await transport.close();
      }
    });
}
