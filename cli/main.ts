import { UsageError } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Option } from 'commander';
import { BROKER_DEFAULTS } from '../broker/defaults.ts';
import { keygen } from '../publisher/keys.ts';
import { synthesizeModel, synthesizeUpdate } from '../publisher/synth.ts';
import { ContentStore } from '../server/content-store.ts';
import { createLogger } from '../util/log.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import { urlWithoutLogin } from '../util/url-login.ts';
import { encodeUpdateFile } from '../protocol/update-file.ts';
import { formatGroupKeyFile, newGroupKey } from '../protocol/seal.ts';
import { registerDeviceCommands } from './device-cli.ts';
import { createProgram, logLevelOf, runProgram } from './program.ts';
import { registerBuildCommands } from './build-commands.ts';
import { registerOfflineCommands } from './offline-commands.ts';
import { registerCalibCommand } from './calib-command.ts';
import { registerTrustCommands } from './trust-commands.ts';
import { registerReleaseCommands } from './release-commands.ts';
import { registerRolloutCommands } from './rollout-commands.ts';
import { registerUserCommands } from './user-commands.ts';
import { registerOperatorCommands } from './operator-commands.ts';
import { registerGatewayCommand } from './gateway-command.ts';
import { parseIntArg, parseUnpinMode } from './options.ts';
import { commandStop } from './stopping.ts';
import { startUpdateServerNode } from '../nodes/update-server-node.ts';

const program = createProgram();

const logLevel = (): ReturnType<typeof logLevelOf> => logLevelOf(program);

program
  .command('broker')
  .description('run the MQTT broker (Aedes) with the update server in-process')
  .option('--port <port>', 'TCP port', parseIntArg(0, 65535), BROKER_DEFAULTS.port)
  .option('--host <host>', 'address to listen on', '127.0.0.1')
  .option('--data-dir <dir>', 'broker persistence and update store', './fleet-data')
  .addOption(new Option('--persistence <kind>', 'broker persistence').choices(['level', 'memory']).default('level'))
  .option('--no-update-server', 'do not run the update server in-process')
  .option(
    '--cluster <url>',
    "one node of a cluster: sessions, retained messages and fan-out in Redis (redis://HOST:PORT); each node's update server answers its own devices, from a --store every node shares (docs/cluster.md)",
  )
  .option('--store <dir>', 'the update content store (default DATA-DIR/store); in a cluster, the same shared directory on every node')
  .option('--tls-port <port>', 'also listen with TLS on this port (mqtts://)', parseIntArg(0, 65535))
  .option('--ws-port <port>', 'also listen for MQTT over WebSocket on this port (ws://), e.g. for a browser with a viewer login', parseIntArg(0, 65535))
  .option('--ws-host <host>', 'address of the WebSocket listener (default: --host)')
  .option('--tls-host <host>', 'address of the TLS listener (default: --host)')
  .option('--tls-cert <file>', "the broker's certificate (PEM)")
  .option('--tls-key <file>', 'its key (PEM)')
  .option('--tls-ca <file>', 'require client certificates signed by this CA (PEM)')
  .option('--auth <file>', 'users file (`fleet user add`): clients must log in, ACLs apply; re-read when it changes')
  .option(
    '--http <port>',
    'serve the dashboard at http://HOST:PORT/ (fed in the browser over --ws-port with a viewer login) and Prometheus metrics at /metrics (clients, bytes, messages, chunks served, devices per model/group/digest/state)',
    parseIntArg(0, 65535),
  )
  .option('--http-host <host>', 'address of the dashboard and metrics listener', '127.0.0.1')
  .option(
    '--unpin-senders [when]',
    "reset a connection this host's BBR holds at a steady trickle with bytes queued for 15 s (its policer mode, which heavy random loss sets off: docs/links.md); the device reconnects on a fresh one and resumes. auto: when this host's TCP congestion control is bbr and ss (iproute2) is installed; on (needs ss); off",
    parseUnpinMode,
    'auto',
  )
  .action(
    async ({
      http: httpPort,
      httpHost,
      wsPort,
      wsHost,
      ...o
    }: {
      port: number;
      host: string;
      dataDir: string;
      persistence: 'level' | 'memory';
      updateServer: boolean;
      cluster?: string;
      store?: string;
      auth?: string;
      tlsPort?: number;
      tlsHost?: string;
      tlsCert?: string;
      tlsKey?: string;
      tlsCa?: string;
      http?: number;
      httpHost: string;
      wsPort?: number;
      wsHost?: string;
      unpinSenders: 'auto' | 'on' | 'off' | true;
    }) => {
      const log = createLogger('broker', logLevel());
      const stop = commandStop(program, log);
      if (o.tlsPort !== undefined && (!o.tlsCert || !o.tlsKey)) throw new UsageError('bad-options', '--tls-port needs --tls-cert and --tls-key');
      const tlsOpts =
        o.tlsPort !== undefined ? { port: o.tlsPort, host: o.tlsHost, cert: await fs.readFile(o.tlsCert!), key: await fs.readFile(o.tlsKey!), ca: o.tlsCa ? await fs.readFile(o.tlsCa) : undefined } : undefined;
      // Loaded by this command only: the rest of `fleet` never pays for Aedes and LevelDB.
      const { startBroker } = await import('../nodes/broker-node.ts');
      // A bare --unpin-senders is on.
      const unpinSenders = o.unpinSenders === true || o.unpinSenders === 'on' ? true : o.unpinSenders === 'off' ? false : 'auto';
      const b = await startBroker({
        ...o,
        unpinSenders,
        tls: tlsOpts,
        http: httpPort === undefined ? undefined : { port: httpPort, host: httpHost },
        ws: wsPort === undefined ? undefined : { port: wsPort, host: wsHost },
        prefix: program.opts().prefix,
        log,
      });
      const auth = o.auth ? `auth ${path.resolve(o.auth)}` : 'UNAUTHENTICATED';
      const tlsNote = b.tlsUrl ? `, TLS on ${b.tlsUrl}${o.tlsCa ? ' with client certificates' : ''}` : '';
      const unpinNote = b.unpinning ? ', resetting connections its TCP pins (--unpin-senders)' : '';
      const metricsNote = (b.metricsUrl ? `, dashboard on ${b.metricsUrl.replace(/metrics$/, '')}${b.wsUrl ? '' : ' (needs --ws-port)'}, metrics on ${b.metricsUrl}` : '') + (b.wsUrl ? `, WebSocket on ${b.wsUrl}` : '');
      process.stdout.write(
        `fleet broker listening on ${b.url}${tlsNote}${metricsNote}${unpinNote} (persistence ${o.cluster ? `redis ${urlWithoutLogin(o.cluster)}` : o.persistence}, update server ${o.updateServer ? 'in-process' : 'off'}, data ${path.resolve(o.dataDir)}, ${auth})\n`,
      );
      stop.add({ name: 'broker (listeners, clients, update server, persistence)', run: () => b.close() });
    },
  );

program
  .command('serve')
  .description('run the update server alone, beside any MQTT 3.1.1 broker')
  .requiredOption('--broker <url>', 'broker URL, e.g. mqtt://127.0.0.1:1883')
  .requiredOption('--data-dir <dir>', 'update store directory')
  .action(async (o: { broker: string; dataDir: string }) => {
    const log = createLogger('serve', logLevel());
    const stop = commandStop(program, log);
    await startUpdateServerNode({ broker: o.broker, dataDir: o.dataDir, prefix: program.opts().prefix, log }, stop);
    process.stdout.write(`fleet update server on ${o.broker}, store ${path.resolve(o.dataDir)}\n`);
  });

program
  .command('gc')
  .description('remove stored updates that no release names any more (and uploads idle for a day)')
  .requiredOption('--data-dir <dir>', 'the data directory of `fleet broker` or `fleet serve`')
  .option('--dry-run', 'only list what would be removed')
  .action(async (o: { dataDir: string; dryRun?: boolean }) => {
    // `fleet broker` keeps its store in DIR/store; `fleet serve` uses DIR itself.
    const nested = path.join(o.dataDir, 'store');
    const dir = await fs.access(path.join(nested, 'updates')).then(
      () => nested,
      () => o.dataDir,
    );
    const store = new ContentStore(dir);
    await store.init();
    const r = await store.gc({ dryRun: o.dryRun === true });
    const verb = o.dryRun ? 'would remove' : 'removed';
    process.stdout.write(`${verb} ${r.removed.length} update(s)${r.removed.length ? `: ${r.removed.join(', ')}` : ''}; kept ${r.kept.length} named by a release; ${verb} ${r.staleUploads.length} stale upload(s)\n`);
    await store.close();
  });

program
  .command('groupkey')
  .description("make a group key for sealed (end-to-end encrypted) payloads; give it to the publisher and the group's devices")
  .requiredOption('--out <file>', 'key file to write (mode 0600)')
  .action(async (o: { out: string }) => {
    try {
      await fs.access(o.out);
      throw new UsageError('key-exists', `${o.out} exists; refusing to overwrite a key`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    await writeFileAtomic(o.out, formatGroupKeyFile(newGroupKey()), 0o600);
    process.stdout.write(`wrote ${o.out}: install it on the group's devices (--group-key) and give it to the publisher (fleet publish --group-key)\n`);
  });

program
  .command('keygen')
  .description('make an Ed25519 release key and rollout key (secret files mode 0600) and a trust file naming both roles for devices')
  .requiredOption('--out <dir>', 'output directory')
  .option('--name <name>', 'release key file name', 'release')
  .option('--rollout-name <name>', 'rollout key file name', 'rollout')
  .action(async (o: { out: string; name: string; rolloutName: string }) => {
    const r = await keygen(o.out, o.name, o.rolloutName);
    process.stdout.write(
      `release key ${r.keyFile} (id ${r.id.slice(0, 16)}…): signs manifests; keep it offline\n` +
        `rollout key ${r.rolloutKeyFile} (id ${r.rolloutId.slice(0, 16)}…): signs group assignments; for fleet publish/rollout/rollback/refresh\n` +
        `trust file ${r.trustFile}: install on devices\n`,
    );
  });

registerReleaseCommands(program);
registerTrustCommands(program);
registerRolloutCommands(program);
registerUserCommands(program);
registerOperatorCommands(program);
registerGatewayCommand(program);

registerDeviceCommands(program);

program
  .command('synth')
  .description('write a synthetic base model and a low-rank update of it (for trying things out)')
  .requiredOption('--out <dir>', 'output directory')
  .option('--rank <r>', 'rank of the update', parseIntArg(1, 1024), 4)
  .option('--seed <n>', 'seed', parseIntArg(0), 1)
  .action(async (o: { out: string; rank: number; seed: number }) => {
    await fs.mkdir(o.out, { recursive: true });
    const base = synthesizeModel(o.seed);
    const u = synthesizeUpdate(base, o.rank, o.seed + 1);
    await fs.writeFile(path.join(o.out, 'base.safetensors'), base);
    await fs.writeFile(path.join(o.out, 'update.cbor'), encodeUpdateFile(u.payload));
    await fs.writeFile(path.join(o.out, 'target.safetensors'), u.target);
    process.stdout.write(
      `base.safetensors ${base.byteLength} bytes (${u.baseDigest})\nupdate.cbor ${u.payload.byteLength} bytes (${((100 * u.payload.byteLength) / base.byteLength).toFixed(2)} %)\ntarget.safetensors (${u.targetDigest})\n`,
    );
  });

registerBuildCommands(program);
registerOfflineCommands(program);
registerCalibCommand(program);

program
  .command('demo')
  .description('end to end on the embedded broker: keys, model, update, N device processes, acks')
  .option('--devices <n>', 'device agents to start', parseIntArg(1, 200), 3)
  .option('--rank <r>', 'rank of the synthetic update', parseIntArg(1, 256), 4)
  .option('--timeout <seconds>', 'give up after', parseIntArg(1), 120)
  .option('--json', 'end with one JSON line of figures')
  .option('--keep', 'keep the temporary directory')
  .action(async (o: { devices: number; rank: number; timeout: number; json?: boolean; keep?: boolean }) => {
    const stop = commandStop(program, createLogger('demo', logLevel()));
    const { runDemo } = await import('./demo.ts');
    const r = await runDemo({ devices: o.devices, rank: o.rank, timeoutSeconds: o.timeout, json: o.json === true, keep: o.keep === true, stop });
    await stop.stop('demo finished', r.acked === r.devices ? 0 : 1);
  });

runProgram(program, process.argv);
