/**
 * One set of defaults: each process's defaults live in one table
 * (device/defaults.ts, gateway/defaults.ts, …), the commands' help shows the
 * table's values, and no core file keeps an inline `?? <number>` default.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Command } from 'commander';
import { DEVICE_DEFAULTS, resolveAgentConfig } from '../../device/defaults.ts';
import { GATEWAY_DEFAULTS } from '../../gateway/defaults.ts';
import { OPERATOR_DEFAULTS } from '../../operator/defaults.ts';
import { PUBLISH_DEFAULTS } from '../../publisher/defaults.ts';
import { ROLLOUT_DEFAULTS } from '../../rollout/defaults.ts';
import { registerDeviceCommands } from '../../cli/device-cli.ts';
import { registerGatewayCommand } from '../../cli/gateway-command.ts';
import { registerOperatorCommands } from '../../cli/operator-commands.ts';
import { registerReleaseCommands } from '../../cli/release-commands.ts';
import { registerRolloutCommands } from '../../cli/rollout-commands.ts';
import { createProgram } from '../../cli/program.ts';
import { signingKeyFromSeed, trustOf } from '../../protocol/release.ts';

/** The help of `name` (a subcommand path), whitespace collapsed so that wrapping does not matter. */
function help(register: (p: Command) => void, ...name: string[]): string {
  const program = createProgram();
  register(program);
  let c: Command = program;
  for (const n of name) {
    const next = c.commands.find((x) => x.name() === n);
    if (!next) throw new Error(`no command ${name.join(' ')}`);
    c = next;
  }
  return c.helpInformation().replace(/\s+/g, ' ');
}

/** What the help says about one option: from its flags to the next option. */
function optionText(h: string, flags: string): string {
  const at = h.indexOf(` ${flags} `);
  expect(at, `${flags} in the help`).toBeGreaterThanOrEqual(0);
  const end = h.indexOf(' --', at + flags.length + 2);
  return h.slice(at, end < 0 ? undefined : end);
}

const MiB = 1024 * 1024;

describe('the help shows the defaults table', () => {
  it('fleet device: every default from DEVICE_DEFAULTS', () => {
    const h = help(registerDeviceCommands, 'device');
    const D = DEVICE_DEFAULTS;
    const shown: Array<[string, string]> = [
      ['--window <n>', `(default: ${D.window})`],
      ['--idle-ms <ms>', `(default: ${D.idleMs})`],
      ['--stall-timeout <duration>', `(default: ${D.stallMs / 1000})`],
      ['--retry <duration>', `(default: ${D.retryMs / 1000})`],
      ['--watchdog <duration>', `(default: ${D.watchdogMs / 1000})`],
      ['--validate-timeout <duration>', `(default: ${D.validateTimeoutMs / 1000})`],
      ['--health-timeout <duration>', `(default: ${D.healthTimeoutMs / 1000})`],
      ['--health-window <duration>', `(default: ${D.healthWindowMs / 1000})`],
      ['--max-attempts <n>', `(default: ${D.maxAttempts})`],
      ['--max-payload <bytes>', `(default ${D.maxPayloadBytes / MiB} MiB)`],
      ['--max-chunks <n>', `(default ${D.maxChunks})`],
      ['--max-chunk <bytes>', `(default ${D.maxChunkBytes / MiB} MiB)`],
      ['--keepalive <seconds>', `(default: ${D.keepaliveSeconds})`],
      ['--connect-timeout <seconds>', `(default: ${D.connectTimeoutSeconds})`],
      ['--reconnect-max <seconds>', `(default: ${D.reconnectMaxSeconds})`],
    ];
    for (const [flags, text] of shown) expect(optionText(h, flags)).toContain(text);
    // The figures a reader would check against the docs.
    expect(optionText(h, '--window <n>')).toContain('(default: 32)');
    expect(optionText(h, '--max-payload <bytes>')).toContain('(default 256 MiB)');
  });

  it('fleet gateway, dashboard, rollout start and publish: their tables', () => {
    const g = help(registerGatewayCommand, 'gateway');
    expect(optionText(g, '--idle-ms <ms>')).toContain(`(default: ${GATEWAY_DEFAULTS.idleMs})`);
    expect(optionText(g, '--max-window <n>')).toContain(`(default: ${GATEWAY_DEFAULTS.maxWindow})`);
    expect(optionText(g, '--tick-ms <ms>')).toContain(`(default: ${GATEWAY_DEFAULTS.tickMs})`);
    expect(optionText(help(registerOperatorCommands, 'dashboard'), '--port <port>')).toContain(`(default: ${OPERATOR_DEFAULTS.dashboardPort})`);
    expect(optionText(help(registerRolloutCommands, 'rollout', 'start'), '--settle <ms>')).toContain(`(default: ${ROLLOUT_DEFAULTS.settleMs})`);
    expect(optionText(help(registerReleaseCommands, 'publish'), '--ttl <duration>')).toContain(`(default: ${PUBLISH_DEFAULTS.ttlSeconds})`);
  });

  it("the agent runs with the table's values for what it is not given, and with what it is given", () => {
    const trust = trustOf([signingKeyFromSeed(new Uint8Array(32).fill(1))]);
    const r = resolveAgentConfig({ deviceId: 'd', model: 'm', group: 'g', trust, window: 7 });
    expect(r.window).toBe(7);
    expect(r.retryMs).toBe(DEVICE_DEFAULTS.retryMs);
    expect(r.maxPayloadBytes).toBe(DEVICE_DEFAULTS.maxPayloadBytes);
    expect(r.healthWindowMs).toBe(DEVICE_DEFAULTS.healthWindowMs);
  });
});

/** Core code (everything a process runs, not the command line, tests, benchmarks or simulations). */
const CORE = ['platform', 'protocol', 'transport', 'publisher', 'server', 'broker', 'device', 'rollout', 'operator', 'gateway', 'util', 'nodes'];

/**
 * `?? N` for a neutral value (0 for a count or a sum, -1 for "none yet" in a maximum) is not a
 * setting; every other inline number is a default that belongs in a table, except these.
 */
const ALLOWED = [
  { file: 'transport/mqtt.ts', text: 'opts.qos ?? 1', why: "QoS 1 is the protocol's (docs/protocol.md §1), not a setting" },
  { file: 'publisher/synth.ts', text: 't.shape[0] ?? 1', why: 'the length of a 0-D tensor, not a setting' },
  { file: 'platform/child-process.ts', text: 'graceMs = 5000', why: 'a shared helper (tests, demo, simulations): its callers pass their own bound' },
  { file: 'util/event-command.ts', text: 'timeoutMs = 60_000', why: "a shared helper: its callers (rollout/hooks.ts, operator/alerts.ts) pass their table's value" },
];

/** An inline default: `?? N`, or a parameter `name = N` / `name: number = N` with N of three digits or more. */
const INLINE = [/\?\?\s*(-?[0-9][0-9_]*(?:\.[0-9]+)?)/g, /(?:\(|, )\w+(?:: number)? = ([0-9][0-9_]{2,})(?=[,)])/g];

async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  let entries;
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return out;
    throw e;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await tsFiles(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

describe('no inline numeric defaults in core code', () => {
  it('no `?? <number>` and no numeric parameter default outside the defaults tables (neutral 0 and -1 aside, and the allow-list)', async () => {
    const root = path.resolve(import.meta.dirname, '../..');
    const found: string[] = [];
    let files = 0;
    for (const dir of CORE) {
      for (const file of await tsFiles(path.join(root, dir))) {
        files++;
        const rel = path.relative(root, file).split(path.sep).join('/');
        const lines = (await fs.readFile(file, 'utf8')).split('\n');
        lines.forEach((line, i) => {
          for (const re of INLINE) {
            for (const m of line.matchAll(re)) {
              if (m[1] === '0' || m[1] === '-1') continue;
              if (ALLOWED.some((a) => a.file === rel && line.includes(a.text))) continue;
              found.push(`${rel}:${i + 1}: ${line.trim()}`);
            }
          }
        });
      }
    }
    expect(files).toBeGreaterThan(100);
    expect(found).toEqual([]);
  });
});
