import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { DEVICE_DEFAULTS } from '../device/defaults.ts';
import { runDevice, type DeviceNodeOptions } from '../nodes/device-node.ts';
import { installService } from './device-service.ts';
import { parseAccuracy, parseDuration, parseIntArg, parsePoints } from './options.ts';
import { stopTimeoutMs } from './stopping.ts';

/** The options of `fleet device`, exactly as typed (for the service's ExecStart line too). */
const D = DEVICE_DEFAULTS;
const MiB = 1024 * 1024;

/** `fleet device`'s options; every default (and so the help) comes from DEVICE_DEFAULTS (device/defaults.ts). */
function addDeviceOptions(c: Command): Command {
  return c
    .requiredOption('--id <id>', 'device id')
    .requiredOption('--model <name>', 'model name')
    .requiredOption('--group <group>', 'device group')
    .requiredOption('--dir <dir>', 'model directory (current model at DIR/current.safetensors, or DIR/current.onnx for an ONNX model)')
    .requiredOption('--trust <file>', 'trust file from `fleet keygen`')
    .requiredOption('--broker <url>', 'broker URL; or several, comma-separated (nodes of one cluster): a lost connection moves to the next')
    .option('--initial <file>', 'first model, to provision an empty directory')
    .option('--window <n>', 'most chunks in flight (the window adapts below this to the link)', parseIntArg(1, 1024), D.window)
    .option('--idle-ms <ms>', 're-ask for outstanding chunks after at least this much silence on the socket (grows with the round trip and doubles while nothing comes)', parseIntArg(100), D.idleMs)
    .option('--stall-timeout <duration>', 'fail `download-stalled` after no chunk for this long, and retry later', parseDuration, D.stallMs / 1000)
    .option('--retry <duration>', 'first delay before a failed download is tried again (doubles up to 30m)', parseDuration, D.retryMs / 1000)
    .option('--watchdog <duration>', 'publish a status at least this often while downloading (rate, or silence)', parseDuration, D.watchdogMs / 1000)
    .option('--validate-cmd <cmd>', 'run on the staged model before the switch (FLEET_MODEL_PATH, FLEET_MODEL_DIGEST); exit 0 = fit')
    .option('--validate-timeout <duration>', 'stop the validation command after this long (refused)', parseDuration, D.validateTimeoutMs / 1000)
    .option('--validate-onnx <samples>', 'run the staged ONNX model with ONNX Runtime on this labelled sample file (safetensors: inputs, labels; docs/onnx.md) before the switch')
    .option('--min-accuracy <x>', 'with --validate-onnx: refuse (validation-failed) below this accuracy (0.9 or 90%)', parseAccuracy)
    .option('--max-drop <points>', "with --validate-onnx: refuse when accuracy falls more than this many percentage points below the running model's", parsePoints)
    .option('--health-cmd <cmd>', 'run after the switch (FLEET_MODEL_PATH = DIR/current.safetensors or .onnx); exit 0 = healthy, else roll back')
    .option('--health-timeout <duration>', 'stop the health command after this long (rolled back)', parseDuration, D.healthTimeoutMs / 1000)
    .option('--health-window <duration>', 'stay testing this long after a healthy check; a crash in it is a failed attempt', parseDuration, D.healthWindowMs / 1000)
    .option('--max-attempts <n>', 'attempts of the trial after a switch (a crash or a failed health command each counts one) before switching back', parseIntArg(1, 100), D.maxAttempts)
    .option('--group-key <file>', 'group key file (`fleet groupkey`) that opens sealed payloads')
    .option('--max-payload <bytes>', `refuse manifests that allow payloads over this size (default ${D.maxPayloadBytes / MiB} MiB)`, parseIntArg(1))
    .option('--max-chunks <n>', `refuse manifests that allow more chunks per payload (default ${D.maxChunks})`, parseIntArg(1))
    .option('--max-chunk <bytes>', `refuse manifests that allow larger chunks (default ${D.maxChunkBytes / MiB} MiB)`, parseIntArg(1))
    .option('--on-switch <cmd>', 'tell the application about every switch (FLEET_MODEL_PATH, FLEET_MODEL_DIGEST, FLEET_PREVIOUS_DIGEST, FLEET_ROLLBACK)')
    .option('--keepalive <seconds>', 'MQTT keepalive', parseIntArg(5, 65535), D.keepaliveSeconds)
    .option('--connect-timeout <seconds>', 'give up one connection attempt after this long', parseIntArg(1, 3600), D.connectTimeoutSeconds)
    .option('--reconnect-max <seconds>', 'cap of the exponential reconnect backoff (with jitter)', parseIntArg(1, 3600), D.reconnectMaxSeconds);
}

/** `fleet device` and `fleet device install-service`: all a device's own machine needs. */
export function registerDeviceCommands(program: Command): void {
  addDeviceOptions(program.command('device').description('run a device agent (`fleet device install-service …` writes a systemd unit for it)')).action(async (o: DeviceNodeOptions) => {
    const g = program.opts() as { prefix: string; logLevel?: string };
    await runDevice({ ...o, prefix: g.prefix, logLevel: g.logLevel, stopTimeoutMs: stopTimeoutMs(program) });
  });

  addDeviceOptions(program.command('device-install-service', { hidden: true }).description('write a systemd unit (and an environment file) that runs this device agent'))
    .option('--unit-dir <dir>', 'where the unit goes', '/etc/systemd/system')
    .option('--environment-file <file>', 'the environment file the unit reads (broker password), mode 0600 (default /etc/fleet/device-ID.env)')
    .option('--user <name>', 'run the agent as this user (it must own --dir)')
    .option('--read-write <path>', 'another path the agent may write (e.g. what --health-cmd writes); repeatable', (v: string, acc: string[] = []) => [...acc, v])
    .option('--password-file <file>', "the broker login's password, copied into the environment file (never into the unit)")
    .option('--entry <file>', 'the fleet entry point ExecStart runs (default: this one)')
    .option('--dry-run', 'print the unit and the environment file instead of writing them')
    .action(async (o: DeviceNodeOptions & { unitDir: string; environmentFile?: string; user?: string; readWrite?: string[]; passwordFile?: string; entry?: string; dryRun?: boolean }) => {
      const g = program.opts() as { prefix: string; logLevel?: string; stopTimeout?: number; ca?: string; clientCert?: string; clientKey?: string };
      const r = await installService(o, {
        prefix: g.prefix,
        logLevel: g.logLevel,
        stopTimeoutSeconds: g.stopTimeout ?? 5,
        ca: g.ca,
        clientCert: g.clientCert,
        clientKey: g.clientKey,
        entry: path.resolve(o.entry ?? process.argv[1]),
        node: process.execPath,
        password: o.passwordFile ? (await fs.readFile(o.passwordFile, 'utf8')).replace(/\r?\n$/, '') : undefined,
      });
      process.stdout.write(o.dryRun ? `${r.unitText}\n# ${r.envFile}\n${r.envText}` : `wrote ${r.unitFile} and ${r.envFile} (mode 0600); now: systemctl daemon-reload && systemctl enable --now ${r.unitName}\n`);
    });
}
