/**
 * The trial's end is two writes: the journal is removed (right after the commit or the switch
 * back), then the verdict is recorded with the status. An agent killed between the two leaves no
 * journal and a remembered `testing`; the next start must still publish the verdict the model on
 * disk says, never keep `testing` as the retained status. (crash.slow once saw exactly this: the
 * restarted agent republished `testing` running the old model and then stopped on an illegal
 * transition, `resume` from `testing`, publishing nothing more.)
 *
 * Real agents, real MQTT client and Aedes broker, the real disk; a kill is modelled by a storage
 * that, from the chosen instant on, never completes another write (nor does the killed agent's
 * connection send anything more), and a restart is a new agent on the same directory.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceAgent, type AgentConfig } from '../../device/agent.ts';
import { digestHealthCheck } from '../../device/health.ts';
import type { Journal } from '../../device/journal.ts';
import { DeviceStorage, type AgentMemory } from '../../device/storage.ts';
import { systemClock } from '../../platform/clock.ts';
import { synthesizeUpdate } from '../../publisher/synth.ts';
import { parseTrustFile } from '../../protocol/release.ts';
import { parseStatus, type DeviceStatus } from '../../protocol/status.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { createLogger, silentLogger } from '../../util/log.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { promises as fs } from 'node:fs';
import { createFixture, GROUP, MODEL, publish, readRetained, StatusWatch, topics, type Fixture } from '../support/harness.ts';

let f: Fixture | undefined;
afterEach(async () => {
  await f?.close();
  f = undefined;
});

const never = (): Promise<never> => new Promise<never>(() => undefined);

type Write = { op: 'switch'; digest: string } | { op: 'journal'; journal: Journal } | { op: 'clear-journal' } | { op: 'memory' } | { op: 'prune' } | { op: 'remove-download' };

/** The k-th write (0: the write itself) from the first one `from` picks. */
interface KillAt {
  from: (w: Write) => boolean;
  then: number;
}

/** The device directory of a process killed after the write `at` names: no write after it completes, nothing more is sent. */
class KilledStorage extends DeviceStorage {
  private dead = false;
  private counting: number | undefined;
  constructor(
    dir: string,
    private readonly at: KillAt,
    private readonly onKill: () => void,
  ) {
    super(dir);
  }
  private async write(w: Write, run: () => Promise<void>): Promise<void> {
    if (this.dead) await never();
    await run();
    if (this.counting === undefined && this.at.from(w)) this.counting = 0;
    else if (this.counting !== undefined) this.counting++;
    if (this.counting !== this.at.then) return;
    this.dead = true;
    this.onKill();
    await never();
  }
  override switchTo(digest: string, previous: string | null): Promise<void> {
    return this.write({ op: 'switch', digest }, () => super.switchTo(digest, previous));
  }
  override writeJournal(j: Journal): Promise<void> {
    return this.write({ op: 'journal', journal: j }, () => super.writeJournal(j));
  }
  override clearJournal(): Promise<void> {
    return this.write({ op: 'clear-journal' }, () => super.clearJournal());
  }
  override saveMemory(m: AgentMemory): Promise<void> {
    return this.write({ op: 'memory' }, () => super.saveMemory(m));
  }
  override prune(keep: string[]): Promise<void> {
    return this.write({ op: 'prune' }, () => super.prune(keep));
  }
  override removeDownload(updateId: string): Promise<void> {
    return this.write({ op: 'remove-download' }, () => super.removeDownload(updateId));
  }
}

describe('a kill between the end of the trial and its recorded verdict', () => {
  const id = 'tv';
  let config: AgentConfig;

  async function setUp(extra: Partial<AgentConfig>): Promise<{ fx: Fixture; watch: StatusWatch; dir: string }> {
    const fx = (f = await createFixture('trial-verdict'));
    const watch = await StatusWatch.start(fx);
    const dir = path.join(fx.dir, id);
    await DeviceAgent.provision(new DeviceStorage(dir), fx.baseFile, digestModelFile);
    config = { deviceId: id, model: MODEL, group: GROUP, trust: parseTrustFile(await fs.readFile(fx.trustFile, 'utf8')), idleMs: 1000, ...extra };
    return { fx, watch, dir };
  }

  /** An agent process on `dir` that is killed at `killAt` (never stopped: a killed process is not). */
  async function killedAgent(fx: Fixture, dir: string, killAt: KillAt): Promise<{ killed: Promise<void> }> {
    const transport = MqttTransport.start({ url: fx.url, clientId: `fleet-device-${id}` });
    const held: { agent?: DeviceAgent } = {};
    let killed: () => void = () => undefined;
    const done = new Promise<void>((r) => (killed = r));
    const storage = new KilledStorage(dir, killAt, () => {
      // The process is gone: nothing more reaches the broker, no timer of it fires.
      void transport.close(0);
      void held.agent?.stop();
      killed();
    });
    held.agent = await DeviceAgent.open(config, { transport, storage, clock: systemClock, health: digestHealthCheck, topics, log: silentLogger });
    void held.agent.start();
    return { killed: done };
  }

  /** The restart: an agent on the same directory; its queued work done, with the errors it logged. */
  async function restart(fx: Fixture, dir: string): Promise<{ errors: string[] }> {
    const lines: string[] = [];
    const transport = MqttTransport.start({ url: fx.url, clientId: `fleet-device-${id}` });
    fx.transports.push(transport);
    const agent = await DeviceAgent.open(config, { transport, storage: new DeviceStorage(dir), clock: systemClock, health: digestHealthCheck, topics, log: createLogger(id, 'info', (l) => lines.push(l)) });
    fx.agents.push(agent);
    await agent.start();
    await agent.idle();
    return { errors: lines.filter((l) => (JSON.parse(l) as { level: string }).level === 'error') };
  }

  /** The switch back to `base` (a failed trial's end, or a start's after the last attempt). */
  const switchBack =
    (base: string) =>
    (w: Write): boolean =>
      w.op === 'switch' && w.digest === base;

  /** Every state a kill can leave: the restarted agent's queued work is done and the retained status is the verdict. */
  async function expectVerdict(fx: Fixture, watch: StatusWatch, dir: string, want: Partial<DeviceStatus>, what: string): Promise<void> {
    const { errors } = await restart(fx, dir);
    expect(errors, what).toEqual([]);
    const s = await watch
      .until(id, (s) => s.state === want.state && s.running === want.running, 10_000)
      .catch((e: unknown) => {
        throw new Error(`${what}: ${(e as Error).message}`);
      });
    expect(s, what).toMatchObject(want);
    expect(await retainedStatus(fx), what).toMatchObject({ state: want.state, running: want.running });
    expect(await new DeviceStorage(dir).journal(), what).toBeUndefined();
    expect(await digestModelFile(path.join(dir, 'current.safetensors')), what).toBe(want.running);
  }

  async function retainedStatus(fx: Fixture): Promise<DeviceStatus | null> {
    const bytes = await readRetained(fx, topics.status(id), 5000);
    return bytes ? parseStatus(bytes) : null;
  }

  // The trial's own end after 3 failed health commands: switch back, journal removed, verdict saved.
  it.each([0, 1, 2])(
    'a failed trial, killed at write %i of its switch back: the restart publishes rolled_back, attempt 3 of 3',
    async (k) => {
      const { fx, watch, dir } = await setUp({ healthCmd: 'exit 1' });
      const { killed } = await killedAgent(fx, dir, { from: switchBack(fx.update.baseDigest), then: k });
      await watch.until(id, (s) => s.state === 'idle');
      await publish(fx);
      await killed;
      const want = { state: 'rolled_back', running: fx.update.baseDigest, target: fx.update.targetDigest, attempt: 3, maxAttempts: 3 } as const;
      await expectVerdict(fx, watch, dir, want, `killed at write ${k}`);
    },
    60_000,
  );

  // Killed as attempt 3 began; the start after it switches back; that start killed at each of its writes from there.
  it.each([0, 1, 2])(
    'killed in attempt 3, the recovery killed at write %i of its switch back: the next restart publishes rolled_back, attempt 3 of 3',
    async (k) => {
      const { fx, watch, dir } = await setUp({ healthCmd: 'exit 1' });
      const first = await killedAgent(fx, dir, { from: (w) => w.op === 'journal' && w.journal.phase === 'testing' && w.journal.attempt === 3, then: 0 });
      await watch.until(id, (s) => s.state === 'idle');
      await publish(fx);
      await first.killed;
      const second = await killedAgent(fx, dir, { from: switchBack(fx.update.baseDigest), then: k });
      await second.killed;
      const want = { state: 'rolled_back', running: fx.update.baseDigest, target: fx.update.targetDigest, reason: 'crashed-while-testing', attempt: 3, maxAttempts: 3 } as const;
      await expectVerdict(fx, watch, dir, want, `recovery killed at write ${k}`);
    },
    60_000,
  );

  // A healthy trial's end: prune, journal removed, downloads removed, verdict saved.
  it.each([0, 1, 2, 3])(
    'a healthy trial, killed at write %i of its commit: the restart publishes ok on the new model',
    async (k) => {
      const { fx, watch, dir } = await setUp({ healthCmd: 'true' });
      const { killed } = await killedAgent(fx, dir, { from: (w) => w.op === 'prune', then: k });
      await watch.until(id, (s) => s.state === 'idle');
      await publish(fx);
      await killed;
      await expectVerdict(fx, watch, dir, { state: 'ok', running: fx.update.targetDigest, target: fx.update.targetDigest }, `killed at write ${k}`);
    },
    60_000,
  );

  // The start settles the trial before it looks at any release: a new release retained while the
  // agent was down waited behind it, and was taken while `testing` was still remembered (no row of
  // the table: the step failed, and the trial's end then forgot the release for good).
  it('a release published while the agent was down mid-trial is fetched once the resumed trial ends', async () => {
    const { fx, watch, dir } = await setUp({ healthCmd: 'true' });
    const { killed } = await killedAgent(fx, dir, { from: (w) => w.op === 'journal' && w.journal.phase === 'testing' && w.journal.attempt === 1, then: 0 });
    await watch.until(id, (s) => s.state === 'idle');
    await publish(fx);
    await killed;
    const next = synthesizeUpdate(fx.update.target, 3, 9);
    await publish(fx, next.payload);
    const { errors } = await restart(fx, dir);
    expect(errors).toEqual([]);
    const s = await watch.until(id, (s) => s.state === 'ok' && s.running === next.targetDigest, 20_000);
    expect(s.target).toBe(next.targetDigest);
    expect(await digestModelFile(path.join(dir, 'current.safetensors'))).toBe(next.targetDigest);
  }, 60_000);
});
