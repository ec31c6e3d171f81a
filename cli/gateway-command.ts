import { UsageError } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { GATEWAY_DEFAULTS } from '../gateway/defaults.ts';
import { parseBudget, parseWindow } from '../gateway/policy.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';
import { urlWithoutLogin } from '../util/url-login.ts';
import { collect, parseIntArg } from './options.ts';
import { commandStop } from './stopping.ts';

interface GatewayCliOptions {
  upstream: string;
  listen: number;
  host: string;
  dataDir: string;
  site: string;
  budget?: string;
  window?: string;
  group: string[];
  model: string[];
  learnGroups?: number;
  idleMs: number;
  maxWindow: number;
  tickMs: number;
  auth?: string;
  tlsPort?: number;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

/** `fleet gateway`: one download per site (gateway/). */
export function registerGatewayCommand(program: Command): void {
  program
    .command('gateway')
    .description("run a site gateway: a broker for the site's devices that fetches each update once from upstream, serves it locally and relays statuses up")
    .requiredOption('--upstream <url>', 'the central broker, e.g. mqtt://user:pass@broker.example:1883 (a user with role gateway when it has --auth)')
    .requiredOption('--listen <port>', 'port of the site broker the devices connect to', parseIntArg(0, 65535))
    .option('--host <host>', 'address the site broker listens on', '0.0.0.0')
    .requiredOption('--data-dir <dir>', 'site broker, site store, partial downloads, status queue, budget ledger')
    .requiredOption('--site <site>', 'site name (its status: fleet/gateways/SITE/status)')
    .option('--budget <MB>', 'upstream data budget per calendar month, megabytes (10^6 bytes); downloads pause past it')
    .option('--window <HH:MM-HH:MM>', 'daily download window, local time (e.g. 01:00-05:00, or 22:00-06:00 across midnight)')
    .option('--group <group>', "mirror this group's releases (repeatable)", collect, [])
    .option('--model <model>', 'only these models (repeatable)', collect, [])
    .option(
      '--learn-groups <n>',
      "also mirror at most N group/model pairs learned from the site's devices (with --auth: from their logins, no cap unless given; without: from what they say, only with this option)",
      parseIntArg(0, 10_000),
    )
    .option('--idle-ms <ms>', 'upstream transfer: re-ask for outstanding chunks after at least this much silence', parseIntArg(100), GATEWAY_DEFAULTS.idleMs)
    .option('--max-window <n>', 'upstream transfer: most chunks in flight', parseIntArg(1, 1024), GATEWAY_DEFAULTS.maxWindow)
    .option('--auth <file>', "the site broker's users file (`fleet user add … --auth FILE`): the site's devices log in, per-device ACLs apply")
    .option('--tls-port <port>', "also serve the site's devices with TLS on this port (mqtts://)", parseIntArg(0, 65535))
    .option('--tls-cert <file>', "the site broker's certificate (PEM)")
    .option('--tls-key <file>', 'its private key (PEM)')
    .option('--tls-ca <file>', 'require client certificates signed by this CA')
    .option('--tick-ms <ms>', 'how often the window and budget are checked and DIR/status.json is refreshed', parseIntArg(50, 60_000), GATEWAY_DEFAULTS.tickMs)
    .action(async (o: GatewayCliOptions) => {
      const log = createLogger('gateway', parseLogLevel(program.opts().logLevel ?? process.env.FLEET_LOG));
      const stop = commandStop(program, log);
      if (o.tlsPort !== undefined && (!o.tlsCert || !o.tlsKey)) throw new UsageError('bad-options', '--tls-port needs --tls-cert and --tls-key');
      const tls = o.tlsPort !== undefined ? { port: o.tlsPort, host: o.host, cert: await fs.readFile(o.tlsCert!), key: await fs.readFile(o.tlsKey!), ca: o.tlsCa ? await fs.readFile(o.tlsCa) : undefined } : undefined;
      const { gatewayNode } = await import('../nodes/gateway-node.ts');
      const gw = gatewayNode({
        auth: o.auth,
        tls,
        upstream: o.upstream,
        listen: o.listen,
        host: o.host,
        dataDir: o.dataDir,
        site: o.site,
        budgetBytes: o.budget === undefined ? undefined : parseBudget(o.budget),
        window: o.window === undefined ? undefined : parseWindow(o.window),
        groups: o.group,
        models: o.model,
        learnGroups: o.learnGroups,
        prefix: program.opts().prefix,
        idleMs: o.idleMs,
        maxWindow: o.maxWindow,
        tickMs: o.tickMs,
        log,
      });
      stop.add({ name: 'gateway (queue, ledger, upstream, site broker)', run: () => gw.close() });
      await gw.start();
      process.stdout.write(
        `fleet gateway for site ${o.site} listening on ${gw.url} (upstream ${urlWithoutLogin(o.upstream)}, data ${path.resolve(o.dataDir)}${o.budget ? `, budget ${o.budget} MB/month` : ''}${o.window ? `, window ${o.window}` : ''})\n`,
      );
    });
}
