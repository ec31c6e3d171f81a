import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { AgentConfig } from '../../device/agent.ts';
import { systemClock, type Clock } from '../../platform/clock.ts';
import { parseTrustFile } from '../../protocol/release.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate, type PublishOptions } from '../../publisher/publish.ts';
import { rollbackGroup } from '../../publisher/rollback.ts';
import { HOOK_EVENTS, RolloutController } from '../../rollout/controller.ts';
import { runEventCommand } from '../../rollout/hooks.ts';
import { ROLLOUT_DEFAULTS } from '../../rollout/defaults.ts';
import { loadPayloads, parsePlan, type RolloutPlan } from '../../rollout/plan.ts';
import type { RolloutEvent, RolloutStatus } from '../../rollout/status.ts';
import { silentLogger } from '../../util/log.ts';
import { CHUNK, connect, createFixture, MODEL, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';
import { until } from '../support/wait.ts';

/**
 * The staged-rollout integration helpers of rollout.test.ts, shareable: a
 * fixture (Aedes + update server) with in-process device agents in groups, a
 * controller wired like `fleet rollout start --on-event CMD`, plans.
 */

export const wave = (group: string, o: Record<string, unknown> = {}): Record<string, unknown> => ({
  group,
  successThreshold: 1,
  failureThreshold: { count: 1 },
  soakSeconds: 0,
  timeoutSeconds: 60,
  offline: 'block',
  ...o,
});

/** A plan over `update.cbor` (and `target.safetensors` as the full-model step with `full`), both written by `setup`. */
export const plan = (waves: Array<Record<string, unknown>>, o: { id?: string; full?: boolean } = {}): RolloutPlan =>
  parsePlan({ id: o.id ?? 'model-v2', model: MODEL, updates: ['update.cbor'], ...(o.full ? { full: 'target.safetensors' } : {}), chunkSize: CHUNK, waves });

/**
 * A fixture with one in-process agent per [id, group, config], each idle before
 * it returns; `stopDevice` takes one agent off the broker (it then looks offline
 * or silent, depending on whether a will says so).
 */
export async function setup(tag: string, devices: Array<[string, string, Partial<AgentConfig>?]>): Promise<{ fx: Fixture; watch: StatusWatch; stopDevice(id: string): Promise<void> }> {
  const fx = await createFixture(tag);
  await fs.writeFile(path.join(fx.dir, 'update.cbor'), encodeUpdateFile(fx.update.payload));
  await fs.writeFile(path.join(fx.dir, 'target.safetensors'), fx.update.target);
  const watch = await StatusWatch.start(fx);
  const agents = new Map<string, Awaited<ReturnType<typeof startAgent>>>();
  for (const [id, group, cfg] of devices) agents.set(id, await startAgent(fx, id, silentLogger, { group, ...cfg }));
  for (const [id] of devices) await watch.until(id, (s) => s.state === 'idle');
  return {
    fx,
    watch,
    async stopDevice(id: string) {
      const a = agents.get(id)!;
      await a.agent.stop();
      fx.agents.splice(fx.agents.indexOf(a.agent), 1);
      fx.transports.splice(fx.transports.indexOf(a.transport), 1);
      await a.transport.close();
    },
  };
}

export interface Run {
  ctl: RolloutController;
  events: RolloutEvent[];
  published: string[];
}

/** An --on-event command that appends each event it is told (its stdin, and $FLEET_EVENT) to `${file}.stdin` and `${file}.env`; `events()` reads both back. */
export function recordingHook(file: string): { command: string; events(): Promise<{ env: RolloutEvent[]; stdin: RolloutEvent[] }> } {
  const lines = async (f: string): Promise<RolloutEvent[]> =>
    (await fs.readFile(f, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as RolloutEvent);
  return {
    command: `cat >> '${file}.stdin'; echo "$FLEET_EVENT" >> '${file}.env'`,
    events: async () => ({ env: await lines(`${file}.env`), stdin: await lines(`${file}.stdin`) }),
  };
}

/** A started controller; `onEventCmd` runs for HOOK_EVENTS exactly as `fleet rollout start --on-event` does. Stop it (`ctl.stop()`) before closing the fixture. */
export async function controller(fx: Fixture, p: RolloutPlan, onEventCmd?: string, o: { rolloutKeyOnly?: boolean; clock?: Clock } = {}): Promise<Run> {
  const payloads = await loadPayloads(p, fx.dir);
  const transport = await connect(fx, `rollout-${Math.random().toString(36).slice(2)}`);
  const events: RolloutEvent[] = [];
  const published: string[] = [];
  // With rolloutKeyOnly, the controller holds no release key (as `fleet rollout start --rollout-key K --trust T`).
  const keys = o.rolloutKeyOnly ? [] : [await loadSigningKey(fx.keyFile)];
  const trust = o.rolloutKeyOnly ? parseTrustFile(await fs.readFile(fx.trustFile, 'utf8')) : undefined;
  const ctl = new RolloutController(
    { plan: p, payloads, keys, trust, rolloutKeys: [await loadSigningKey(fx.rolloutKeyFile)], settleMs: 500, tickMs: 200 },
    {
      transport,
      topics,
      clock: o.clock ?? systemClock,
      rollback: rollbackGroup,
      log: silentLogger,
      publish: (o: PublishOptions) => {
        published.push(o.group);
        return publishUpdate(o);
      },
      onEvent: async (e) => {
        events.push(e);
        if (onEventCmd && HOOK_EVENTS.includes(e.type)) await runEventCommand(onEventCmd, e, silentLogger, ROLLOUT_DEFAULTS.hookTimeoutMs);
      },
    },
  );
  await ctl.start();
  return { ctl, events, published };
}

export function untilStatus(ctl: RolloutController, pred: (s: RolloutStatus) => boolean, ms = 30_000, what = 'a rollout status'): Promise<RolloutStatus> {
  return until(() => ctl.status(), { what, timeoutMs: ms, accept: pred });
}
