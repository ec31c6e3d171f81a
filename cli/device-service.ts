import { UsageError } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import type { DeviceNodeOptions } from '../nodes/device-node.ts';
import { renderEnvFile, renderServiceUnit, unitName } from './service-unit.ts';

export interface ServiceContext {
  prefix: string;
  logLevel?: string;
  stopTimeoutSeconds: number;
  ca?: string;
  clientCert?: string;
  clientKey?: string;
  /** The node binary and the fleet entry point the unit runs. */
  node: string;
  entry: string;
  /** The broker login's password (into the environment file only). */
  password?: string;
}

export interface ServiceOptions extends DeviceNodeOptions {
  unitDir: string;
  /** `--environment-file` (not --env-file: Node 20 reads that one from any position of its argv). */
  environmentFile?: string;
  user?: string;
  readWrite?: string[];
  dryRun?: boolean;
}

/** The device options again, as `fleet device` arguments with absolute paths and no secret. */
function deviceArgs(o: DeviceNodeOptions, brokers: string): string[] {
  const abs = (p: string): string => path.resolve(p);
  const args: Array<[string, string | number | undefined]> = [
    ['--id', o.id],
    ['--model', o.model],
    ['--group', o.group],
    ['--dir', abs(o.dir)],
    ['--trust', abs(o.trust)],
    ['--broker', brokers],
    ['--initial', o.initial && abs(o.initial)],
    ['--window', o.window],
    ['--idle-ms', o.idleMs],
    ['--stall-timeout', `${o.stallTimeout}s`],
    ['--retry', `${o.retry}s`],
    ['--watchdog', `${o.watchdog}s`],
    ['--validate-cmd', o.validateCmd],
    ['--validate-timeout', `${o.validateTimeout}s`],
    ['--health-cmd', o.healthCmd],
    ['--health-timeout', `${o.healthTimeout}s`],
    ['--health-window', `${o.healthWindow}s`],
    ['--max-attempts', o.maxAttempts],
    ['--group-key', o.groupKey && abs(o.groupKey)],
    ['--max-payload', o.maxPayload],
    ['--max-chunks', o.maxChunks],
    ['--max-chunk', o.maxChunk],
    ['--validate-onnx', o.validateOnnx && abs(o.validateOnnx)],
    ['--min-accuracy', o.minAccuracy],
    ['--max-drop', o.maxDrop],
    ['--on-switch', o.onSwitch],
    ['--keepalive', o.keepalive],
    ['--connect-timeout', o.connectTimeout],
    ['--reconnect-max', o.reconnectMax],
  ];
  return args.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [k, String(v)]);
}

/**
 * `fleet device install-service`: checks what the unit will need (the files
 * exist, the password is not left in the URL), then writes the unit and the
 * environment file (0600). Returns what it wrote (or, with --dry-run, would).
 */
export async function installService(o: ServiceOptions, c: ServiceContext): Promise<{ unitFile: string; unitName: string; unitText: string; envFile: string; envText: string }> {
  for (const [flag, file] of [
    ['--trust', o.trust],
    ['--initial', o.initial],
    ['--group-key', o.groupKey],
    ['the entry point', c.entry],
    ['the node binary', c.node],
  ] as const) {
    if (file !== undefined)
      await fs.access(file).catch(() => {
        throw new UsageError('missing-file', `${flag}: ${file} does not exist; the service could never start`);
      });
  }
  // A password in a broker URL would sit in the unit, readable by every user: it moves to the environment file.
  let password = c.password;
  const brokers = o.broker
    .split(',')
    .map((raw) => {
      const u = new URL(raw.trim());
      if (u.password) {
        if (password !== undefined && password !== decodeURIComponent(u.password)) throw new UsageError('bad-options', 'the broker URLs and --password-file give different passwords');
        password = decodeURIComponent(u.password);
        u.password = '';
      }
      return u.toString().replace(/\/$/, '');
    })
    .join(',');
  const name = unitName(o.id);
  const envFile = path.resolve(o.environmentFile ?? `/etc/fleet/device-${o.id}.env`);
  const env: Record<string, string> = {};
  if (password !== undefined) env.FLEET_PASSWORD = password;
  if (c.logLevel) env.FLEET_LOG = c.logLevel;
  if (c.ca) env.FLEET_TLS_CA = path.resolve(c.ca);
  if (c.clientCert) env.FLEET_TLS_CERT = path.resolve(c.clientCert);
  if (c.clientKey) env.FLEET_TLS_KEY = path.resolve(c.clientKey);
  const args = ['--prefix', c.prefix, '--stop-timeout', `${c.stopTimeoutSeconds}s`];
  const unitText = renderServiceUnit({
    id: o.id,
    model: o.model,
    group: o.group,
    dir: path.resolve(o.dir),
    node: c.node,
    entry: c.entry,
    args: [...args, ...deviceArgs(o, brokers)].slice(0),
    envFile,
    user: o.user,
    readWrite: o.readWrite?.map((p) => path.resolve(p)),
    stopTimeoutSeconds: c.stopTimeoutSeconds + 10,
  });
  const envText = renderEnvFile(env);
  const unitFile = path.join(path.resolve(o.unitDir), name);
  if (!o.dryRun) {
    await fs.mkdir(path.dirname(envFile), { recursive: true, mode: 0o755 });
    await writeFileAtomic(envFile, envText, 0o600);
    await fs.chmod(envFile, 0o600);
    await fs.mkdir(path.resolve(o.dir), { recursive: true });
    await fs.mkdir(path.dirname(unitFile), { recursive: true });
    await writeFileAtomic(unitFile, unitText, 0o644);
  }
  return { unitFile, unitName: name, unitText, envFile, envText };
}
