/**
 * A systemd unit for `fleet device`: restarted on failure (never after a
 * conflict it cannot resolve by itself), logging to the journal, and in a
 * sandbox where the device directory is the only writable path. Pure: text in,
 * text out; cli/device-service.ts writes the files.
 */

import { UsageError } from '../platform/errors.ts';
import { EXIT_CONFLICT } from '../util/exit-codes.ts';

export interface ServiceUnitOptions {
  id: string;
  model: string;
  group: string;
  /** Absolute path of the device directory: the one writable path. */
  dir: string;
  /** Absolute paths of the node binary and of the fleet entry point. */
  node: string;
  entry: string;
  /** The device options after `fleet device`, as they would be typed (already absolute paths). */
  args: string[];
  /** The environment file (broker password, TLS files): read by systemd, mode 0600. */
  envFile: string;
  /** Run as this user (default: root, which the sandbox still confines). */
  user?: string;
  /** More writable paths (e.g. what a health command writes). */
  readWrite?: string[];
  /** Seconds systemd waits for a stop before SIGKILL (the agent bounds its own stop below this). */
  stopTimeoutSeconds?: number;
}

/** Quotes one argument for an ExecStart line (systemd.service(5), "Command lines"). */
export function systemdQuote(arg: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg.replace(/%/g, '%%');
  return `"${arg.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/%/g, '%%').replace(/\$/g, '$$$$')}"`;
}

export function unitName(id: string): string {
  return `fleet-device-${id}.service`;
}

export function renderServiceUnit(o: ServiceUnitOptions): string {
  for (const p of [o.dir, o.node, o.entry, o.envFile, ...(o.readWrite ?? [])]) {
    if (!p.startsWith('/')) throw new UsageError('bad-unit', `${p}: the unit needs absolute paths`);
    if (/[\s"'\\]/.test(p)) throw new UsageError('bad-unit', `${p}: a path in a unit may not hold spaces, quotes or backslashes; move it`);
  }
  const exec = [o.node, o.entry, 'device', ...o.args].map(systemdQuote).join(' ');
  const lines = [
    '# Written by `fleet device install-service`; re-run it to change the options.',
    '[Unit]',
    `Description=fleet device agent ${o.id} (model ${o.model}, group ${o.group})`,
    'Wants=network-online.target',
    'After=network-online.target',
    // Keep trying however often it fails: a device at a remote site has no one to restart it.
    'StartLimitIntervalSec=0',
    '',
    '[Service]',
    'Type=simple',
    `ExecStart=${exec}`,
    `EnvironmentFile=-${o.envFile}`,
    'Restart=on-failure',
    'RestartSec=10',
    // Another agent holds the directory or the device id: restarting would only fight it.
    `RestartPreventExitStatus=${EXIT_CONFLICT}`,
    'KillSignal=SIGTERM',
    `TimeoutStopSec=${o.stopTimeoutSeconds ?? 30}`,
    ...(o.user ? [`User=${o.user}`] : []),
    'StandardOutput=journal',
    'StandardError=journal',
    `SyslogIdentifier=fleet-device-${o.id}`,
    // The sandbox: everything read-only but the device directory.
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'ProtectHome=read-only',
    'PrivateTmp=yes',
    'PrivateDevices=yes',
    `ReadWritePaths=${[o.dir, ...(o.readWrite ?? [])].join(' ')}`,
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    'RestrictSUIDSGID=yes',
    'RestrictRealtime=yes',
    'RestrictNamespaces=yes',
    'LockPersonality=yes',
    'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX',
    'SystemCallArchitectures=native',
    'CapabilityBoundingSet=',
    'UMask=0077',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ];
  return lines.join('\n');
}

/** The environment file: the broker password (if any) and nothing else secret in the unit itself. */
export function renderEnvFile(env: Record<string, string>): string {
  const lines = ["# Read by systemd for the fleet device agent (mode 0600). FLEET_PASSWORD: the broker login's password."];
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Z_][A-Z0-9_]*$/.test(k)) throw new UsageError('bad-unit', `${k}: not an environment variable name`);
    if (/[\n\r\0]/.test(v)) throw new UsageError('bad-unit', `${k}: a value may not hold line breaks`);
    lines.push(`${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\$/g, '\\$')}"`);
  }
  return `${lines.join('\n')}\n`;
}
