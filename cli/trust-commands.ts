import { PUBLISH_DEFAULTS } from '../publisher/defaults.ts';
import { promises as fs } from 'node:fs';
import type { Command } from 'commander';
import { decodeEnvelope } from '../protocol/signed.ts';
import { signTrust, verifyTrustUpdate } from '../protocol/release.ts';
import { Topics } from '../protocol/topics.ts';
import { refreshGroup } from '../publisher/refresh.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';
import { collect, parseDuration } from './options.ts';
import { loadRoleKeys, readTrust } from './release-commands.ts';
import { loadSigningKey } from '../publisher/keys.ts';

/** `fleet refresh` (re-sign assignments before they expire) and `fleet trust sign|publish` (key rotation). */
export function registerTrustCommands(program: Command): void {
  const logLevel = (): ReturnType<typeof parseLogLevel> => parseLogLevel(program.opts().logLevel ?? process.env.FLEET_LOG);
  const topics = (): Topics => new Topics(program.opts().prefix);

  program
    .command('refresh')
    .description('re-sign the current assignment of groups before it expires: same manifest, new seq and expiry (rollout key only)')
    .requiredOption('--model <name>', 'model name')
    .requiredOption('--group <group>', 'device group (repeat for several)', collect)
    .requiredOption('--broker <url>', 'broker URL')
    .option('--rollout-key <file>', 'rollout key (repeat for k-of-n)', collect)
    .option('--key <file>', 'release key, for one-role trust files', collect)
    .option('--trust <file>', "the devices' trust file: the current release must verify against it (required without --key)")
    .option('--ttl <duration>', 'new lifetime (e.g. 30d)', parseDuration, PUBLISH_DEFAULTS.ttlSeconds)
    .action(async (o: { model: string; group: string[]; broker: string; rolloutKey?: string[]; key?: string[]; trust?: string; ttl: number }) => {
      const log = createLogger('refresh', logLevel());
      const { keys, rolloutKeys } = await loadRoleKeys(o);
      const trust = await readTrust(o.trust);
      const transport = await MqttTransport.connect({ url: o.broker, clientId: `fleet-refresh-${process.pid}` }, 30_000);
      let failed = 0;
      try {
        for (const group of o.group) {
          try {
            const r = await refreshGroup({ transport, topics: topics(), keys, rolloutKeys, trust, model: o.model, group, ttlSeconds: o.ttl, log });
            process.stdout.write(
              `refreshed ${o.model} for group ${group}: seq ${r.before.seq} -> ${r.after.seq}, expires ${new Date(r.before.expires * 1000).toISOString()} -> ${new Date(r.after.expires * 1000).toISOString()}\n`,
            );
          } catch (e) {
            failed++;
            process.stderr.write(`fleet refresh: ${group}: ${(e as Error).message}\n`);
          }
        }
      } finally {
        await transport.close();
      }
      if (failed) process.exitCode = 1;
    });

  const trust = program.command('trust').description("rotate the devices' keys: a new trust file signed by the current release threshold");
  trust
    .command('sign')
    .description("sign a new trust file with the current release keys (offline); its version must be above the devices' one")
    .requiredOption('--new <file>', 'the new trust file (JSON, with a higher version)')
    .requiredOption('--key <file>', 'a current release key (repeat up to the current threshold)', collect)
    .requiredOption('--out <file>', 'signed trust file to write')
    .option('--current <file>', 'the current trust file, to check the signatures and version before writing')
    .action(async (o: { new: string; key: string[]; out: string; current?: string }) => {
      const next = (await readTrust(o.new))!;
      const keys = await Promise.all(o.key.map(loadSigningKey));
      const signed = signTrust(next, keys);
      const current = await readTrust(o.current);
      if (current) verifyTrustUpdate(signed, current);
      await writeFileAtomic(o.out, signed);
      process.stdout.write(`wrote ${o.out}: trust file version ${next.version ?? 0}, signed by ${keys.length} key(s); publish it with fleet trust publish\n`);
    });
  trust
    .command('publish')
    .description('publish a signed trust file (retained); devices check it against their current keys and keep it')
    .argument('<file>', 'signed trust file from `fleet trust sign`')
    .requiredOption('--broker <url>', 'broker URL')
    .action(async (file: string, o: { broker: string }) => {
      const bytes = new Uint8Array(await fs.readFile(file));
      decodeEnvelope(bytes, 'malformed-trust', 'signed trust file');
      const transport = await MqttTransport.connect({ url: o.broker, clientId: `fleet-trust-${process.pid}` }, 30_000);
      try {
        await transport.publish(topics().trust(), bytes, { qos: 1, retain: true });
      } finally {
        await transport.close();
      }
      process.stdout.write(`published ${file} on ${topics().trust()}\n`);
    });
}
