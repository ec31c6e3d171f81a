import { Command } from 'commander';
import { DEFAULT_PREFIX } from '../protocol/topics.ts';
import { parseLogLevel } from '../util/log.ts';
import { signalStopInProgress } from '../util/graceful-stop.ts';
import { VERSION } from '../util/version.ts';
import { describeFsError } from '../util/fs-errors.ts';
import { parseDuration } from './options.ts';

/**
 * The `fleet` program with its global options, and nothing else: cli/main.ts
 * adds every command, cli/device-main.ts (the device bundle) only the device's.
 */
export function createProgram(): Command {
  const program = new Command();
  program
    .name('fleet')
    .description('Signed low-rank model updates for edge fleets over MQTT')
    .version(VERSION)
    .option('--log-level <level>', 'debug, info, warn, error or silent (default warn; env FLEET_LOG)')
    .option('--prefix <prefix>', 'topic prefix', DEFAULT_PREFIX)
    .option('--ca <file>', 'for mqtts:// brokers: the CA certificate (PEM) that signed the broker (env FLEET_TLS_CA)')
    .option('--client-cert <file>', "for mqtts:// brokers that ask for one: this client's certificate (PEM) (env FLEET_TLS_CERT)")
    .option('--client-key <file>', 'the key (PEM) of --client-cert (env FLEET_TLS_KEY)')
    .option(
      '--broker-password-file <file>',
      'the broker password for URLs that name a user but no password (mqtt://NAME@host:port), so it stays out of `ps` (env FLEET_PASSWORD_FILE, or the password itself in FLEET_PASSWORD)',
    )
    .option('--stop-timeout <duration>', 'long-running commands: bound of the graceful stop after SIGINT/SIGTERM (what is left is abandoned and logged; a second signal exits at once)', parseDuration, 5)
    .showHelpAfterError()
    .hook('preAction', () => {
      // Every command's MQTT connections read these (transport/mqtt.ts).
      const g = program.opts() as { ca?: string; clientCert?: string; clientKey?: string; brokerPasswordFile?: string };
      if (g.brokerPasswordFile) process.env.FLEET_PASSWORD_FILE = g.brokerPasswordFile;
      if (g.ca) process.env.FLEET_TLS_CA = g.ca;
      if (g.clientCert) process.env.FLEET_TLS_CERT = g.clientCert;
      if (g.clientKey) process.env.FLEET_TLS_KEY = g.clientKey;
    });
  return program;
}

/** The log level from --log-level or FLEET_LOG. */
export function logLevelOf(program: Command): ReturnType<typeof parseLogLevel> {
  return parseLogLevel((program.opts() as { logLevel?: string }).logLevel ?? process.env.FLEET_LOG);
}

/**
 * Runs the program to its end: an error is one line on stderr and a non-zero
 * exit (its `exitCode` when it names one, e.g. EX_CONFIG for a conflict that a
 * service manager must not restart into).
 */
export function runProgram(program: Command, argv: string[]): void {
  // `fleet device install-service …`: commander cannot give a command with options a
  // subcommand of its own, so this one is registered as `device-install-service`.
  const args = argv.slice();
  const i = args.indexOf('device');
  if (i >= 2 && args[i + 1] === 'install-service') args.splice(i, 2, 'device-install-service');
  program.parseAsync(args).catch((e: unknown) => {
    // Failed while a signal's stop takes the command down: the stop exits, with its own code.
    if (signalStopInProgress()) return;
    process.stderr.write(`fleet: ${describeError(e)}\n`);
    const code = (e as { exitCode?: unknown }).exitCode;
    process.exit(typeof code === 'number' && code > 0 ? code : 1);
  });
}

/**
 * One line for an error: a file-system error names the user's own path (not
 * the temporary file an atomic write was using) and what to do; any other
 * error is its message.
 */
export function describeError(e: unknown): string {
  return describeFsError(e) ?? (e as Error | undefined)?.message ?? String(e);
}
