import { ignoreBecause, UsageError } from '../platform/errors.ts';
import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import { ROLLOUT_DEFAULTS, resolveRolloutConfig } from '../rollout/defaults.ts';
import { systemClock } from '../platform/clock.ts';
import { Topics } from '../protocol/topics.ts';
import { loadRoleKeys, readTrust } from './release-commands.ts';
import { publishUpdate } from '../publisher/publish.ts';
import { rollbackGroup } from '../publisher/rollback.ts';
import { HOOK_EVENTS, RolloutController } from '../rollout/controller.ts';
import { runEventCommand } from '../rollout/hooks.ts';
import { isTerminal } from '../rollout/machine.ts';
import { collectInventory, formatInventory, inventoryRow, malformedNote, type DeviceRecord } from '../rollout/inventory.ts';
import { loadPayloads, loadPlanFile } from '../rollout/plan.ts';
import { formatRolloutStatus, parseRolloutStatus, rolloutControlTopic, type ControlCommand, type ControlMessage, type RolloutStatus } from '../rollout/status.ts';
import type { Transport } from '../transport/types.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';
import { stripControls, stripControlsDeep } from '../util/text.ts';
import { collect, parseDuration, parseIntArg } from './options.ts';
import { commandStop } from './stopping.ts';

/** Exit codes of `fleet rollout start`: completed 0, halted 2, aborted 3. */
const EXIT: Record<string, number> = { completed: 0, halted: 2, aborted: 3 };

/** The retained rollout status, or null when none arrives within `waitMs`. */
async function readRolloutStatus(t: Transport, topics: Topics, id: string, waitMs: number): Promise<RolloutStatus | null> {
  const topic = topics.rolloutStatus(id);
  let got: RolloutStatus | null = null;
  let wake: (() => void) | undefined;
  const off = t.onMessage((tp, payload) => {
    if (tp !== topic) return;
    got = parseRolloutStatus(payload);
    wake?.();
  });
  await t.subscribe(topic, 1);
  if (!got)
    await new Promise<void>((r) => {
      const timer = setTimeout(r, waitMs);
      wake = () => {
        clearTimeout(timer);
        r();
      };
    });
  off();
  await t.unsubscribe(topic).catch(ignoreBecause('the session ends the subscription anyway'));
  return got;
}

/** `fleet devices` and `fleet rollout start|status|pause|resume|abort`. */
export function registerRolloutCommands(program: Command): void {
  const logLevel = (): ReturnType<typeof parseLogLevel> => parseLogLevel(program.opts().logLevel ?? process.env.FLEET_LOG);
  const topics = (): Topics => new Topics(program.opts().prefix);
  const connect = (url: string, role: string): Promise<MqttTransport> => MqttTransport.connect({ url, clientId: `fleet-cli-${role}-${process.pid}-${randomUUID().slice(0, 8)}` }, 30_000); // not fleet-rollout-…: reserved to the rollout role (broker/client-ids.ts)

  /** The devices to forget: those named (that the broker knows), and with --stale those offline and silent for that long. */
  const forgettable = (records: DeviceRecord[], named: string[], staleSeconds: number | undefined, now: number): string[] => {
    const known = new Set(records.map((r) => r.device));
    const unknown = named.filter((id) => !known.has(id));
    if (unknown.length) throw new UsageError('unknown-device', `the broker holds no status or presence of ${unknown.join(', ')}; check the device id (fleet devices lists them)`);
    const stale =
      staleSeconds === undefined
        ? []
        : records
            .filter((r) => {
              const t = Date.parse(r.status?.time ?? '');
              return r.presence !== 'online' && (!Number.isFinite(t) || now - t > staleSeconds * 1000);
            })
            .map((r) => r.device);
    return [...new Set([...named, ...stale])].sort();
  };

  program
    .command('devices')
    .description('the fleet as the broker knows it: every retained device status and presence')
    .requiredOption('--broker <url>', 'broker URL')
    .option('--wait <ms>', 'how long to collect retained messages', parseIntArg(0, 600_000), 1500)
    .option('--json', 'one JSON array')
    .option('--forget <id>', 'clear the retained status and presence of a device that is gone (repeatable; an operator may do this with --auth)', collect)
    .option('--stale <duration>', 'forget every device that is not online and whose last status is older than this (e.g. 30d)', parseDuration)
    .action(async (o: { broker: string; wait: number; json?: boolean; forget?: string[]; stale?: number }) => {
      const t = await connect(o.broker, 'devices');
      try {
        const { records, malformed } = await collectInventory(t, topics(), o.wait);
        if (o.forget || o.stale !== undefined) {
          const gone = forgettable(records, o.forget ?? [], o.stale, Date.now());
          for (const id of gone) {
            // Empty and retained: the broker drops its copies (docs/protocol.md §2).
            await t.publish(topics().status(id), new Uint8Array(0), { qos: 1, retain: true });
            await t.publish(topics().presence(id), new Uint8Array(0), { qos: 1, retain: true });
          }
          process.stdout.write(`forgot ${gone.length} device(s)${gone.length ? `: ${gone.join(', ')}` : ''}\n`);
          return;
        }
        process.stdout.write(o.json ? `${JSON.stringify(records.map(inventoryRow))}\n` : `${formatInventory(records, malformed)}\n`);
        // --json keeps its array; the skipped statuses are said on stderr.
        if (o.json && malformed.length) process.stderr.write(`${malformedNote(malformed)}\n`);
      } finally {
        await t.close();
      }
    });

  const rollout = program.command('rollout').description('staged rollouts: wave by wave with success and failure thresholds');

  rollout
    .command('start')
    .description('run a rollout plan (JSON) until it completes, halts or is aborted; restart it with the same plan to continue')
    .argument('<plan>', 'plan file (JSON)')
    .option('--rollout-key <file>', 'rollout key: signs the group assignments and rollbacks (repeat for k-of-n)', collect)
    .option('--key <file>', "release key: signs the plan's manifest when none is retained yet (omit it when the release engineer published it with fleet publish --manifest-only)", collect)
    .requiredOption('--broker <url>', 'broker URL')
    .option('--trust <file>', "the devices' trust file: releases and manifests on the broker are checked against it (required without --key)")
    .option('--on-event <cmd>', `run on ${HOOK_EVENTS.join(', ')} with the event JSON in FLEET_EVENT and on stdin`)
    .option('--settle <ms>', 'how long retained statuses are collected at start', parseIntArg(0, 600_000), ROLLOUT_DEFAULTS.settleMs)
    .option('--json', 'print each event as one JSON line')
    .action(async (file: string, o: { key?: string[]; rolloutKey?: string[]; broker: string; trust?: string; onEvent?: string; settle: number; json?: boolean }) => {
      const log = createLogger('rollout', logLevel());
      const stop = commandStop(program, log, {
        signalExitCode: 130,
        onSignal: () => process.stderr.write('stopping; the rollout stays where it is (run the same start command to continue)\n'),
      });
      const { plan, dir } = await loadPlanFile(file);
      const payloads = await loadPayloads(plan, dir);
      const { keys, rolloutKeys } = await loadRoleKeys(o);
      const trust = await readTrust(o.trust);
      const transport = await MqttTransport.connect({ url: o.broker, clientId: `fleet-rollout-${plan.id}-${process.pid}` }, 30_000);
      stop.add({ name: 'MQTT disconnect', optional: true, run: () => transport.close() });
      const config = resolveRolloutConfig({ plan, payloads, keys, rolloutKeys, trust, settleMs: o.settle });
      const controller = new RolloutController(config, {
        transport,
        topics: topics(),
        clock: systemClock,
        publish: publishUpdate,
        rollback: rollbackGroup,
        log,
        onEvent: async (e) => {
          process.stdout.write(o.json ? `${JSON.stringify(stripControlsDeep(e))}\n` : `${stripControls(`${e.time} ${e.type}${e.device ? ` ${e.device}` : ''}: ${e.reason}`)}\n`);
          if (o.onEvent && HOOK_EVENTS.includes(e.type)) await runEventCommand(o.onEvent, e, log, config.hookTimeoutMs);
        },
      });
      // Abandoned, the rollout stays where its retained status says; the same start command continues it.
      stop.add({ name: 'rollout controller (step in progress, event hooks)', run: () => controller.stop() });
      const first = await controller.start();
      if (isTerminal(first.state)) process.stdout.write(`rollout ${plan.id} already ended (${first.state}); nothing to do (a new rollout needs a new id)\n`);
      if (!o.json) process.stdout.write(`${formatRolloutStatus(first)}\n`);
      const end = await controller.done();
      if (!o.json && !isTerminal(first.state)) process.stdout.write(`${formatRolloutStatus(end)}\n`);
      await stop.stop(`rollout ${end.state}`, EXIT[end.state] ?? 1);
    });

  rollout
    .command('status')
    .description("a rollout's retained status")
    .argument('<id>', 'rollout id')
    .requiredOption('--broker <url>', 'broker URL')
    .option('--wait <ms>', 'how long to wait for the retained status', parseIntArg(0, 600_000), 2000)
    .option('--json', 'the status JSON')
    .action(async (id: string, o: { broker: string; wait: number; json?: boolean }) => {
      const t = await connect(o.broker, 'rollout-status');
      try {
        const s = await readRolloutStatus(t, topics(), id, o.wait);
        if (!s) throw new UsageError('unknown-rollout', `no status for rollout ${id} on ${o.broker}`);
        process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : `${formatRolloutStatus(s)}\n`);
      } finally {
        await t.close();
      }
    });

  for (const command of ['pause', 'resume', 'abort'] as ControlCommand[]) {
    rollout
      .command(command)
      .description(`${command} a rollout (a retained command: applied when its controller runs)`)
      .argument('<id>', 'rollout id')
      .requiredOption('--broker <url>', 'broker URL')
      .option('--reason <text>', 'why (shown in the rollout status)')
      .option('--wait <ms>', "how long to wait for the controller's acknowledgement", parseIntArg(0, 600_000), 5000)
      .action(async (id: string, o: { broker: string; reason?: string; wait: number }) => {
        const tp = topics();
        const t = await connect(o.broker, `rollout-${command}`);
        try {
          const msg: ControlMessage = { v: 1, id: randomUUID(), command, time: new Date().toISOString(), ...(o.reason ? { reason: o.reason } : {}) };
          const statusTopic = tp.rolloutStatus(id);
          let acked: RolloutStatus | null = null;
          let wake: (() => void) | undefined;
          t.onMessage((topic, payload) => {
            const s = topic === statusTopic ? parseRolloutStatus(payload) : null;
            if (s?.lastCommand === msg.id) {
              acked = s;
              wake?.();
            }
          });
          await t.subscribe(statusTopic, 1);
          await t.publish(rolloutControlTopic(tp, id), JSON.stringify(msg), { qos: 1, retain: true });
          await new Promise<void>((r) => {
            const timer = setTimeout(r, o.wait);
            wake = () => {
              clearTimeout(timer);
              r();
            };
          });
          const s = acked as RolloutStatus | null;
          if (s) process.stdout.write(`${command}: rollout ${id} is ${s.state}${s.reason ? ` (${s.reason})` : ''}\n`);
          else process.stdout.write(`${command} sent; no controller acknowledged it within ${o.wait} ms: it is retained and applied when the controller of ${id} runs\n`);
        } finally {
          await t.close();
        }
      });
  }
}
