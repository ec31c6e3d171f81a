import { errorFields, ignoreBecause, UsageError } from '../platform/errors.ts';
import { decodeFrame } from '../protocol/frames.ts';
import { encodePresence, encodeStatus, type DeviceState, type DeviceStatus } from '../protocol/status.ts';
import type { AgentConfig, AgentPorts } from './agent-config.ts';
import { resolveAgentConfig, type ResolvedAgentConfig } from './defaults.ts';
import { checkSpace, fetcherFor, type Fetcher } from './fetcher.ts';
import { InstallFlow } from './install-flow.ts';
import type { Recovery } from './installer.ts';
import { nextState, type DeviceEvent } from './machine.ts';
import { ReleaseIntake } from './release-intake.ts';
import { toReason } from './reasons.ts';
import type { ActiveRelease, AgentMemory, DeviceStorage } from './storage.ts';
import type { FsPort } from '../platform/fs-port.ts';
import { composeStatus, restoredStatus, type StatusFields } from './status-report.ts';
import { AgentTimers } from './agent-timers.ts';
import { newIdentity, SessionGuard, type AgentIdentity } from './session-guard.ts';

export type { AgentConfig, AgentPorts } from './agent-config.ts';

/**
 * The device agent: follows its group's release and drives one install at a
 * time through the transition table in machine.ts, publishing its status
 * (retained) at every transition. The installed model changes only by an
 * atomic, journaled switch to a version whose digest a verified release names.
 */
export class DeviceAgent {
  state: DeviceState = 'idle';
  running = '';
  /** What the agent remembers across restarts (storage.memory()), loaded by DeviceAgent.open before construction. */
  private memory: AgentMemory;
  private fields: StatusFields = { target: null, seq: null, updateId: null, reason: null, message: null, rollback: false, attempt: null, maxAttempts: null };
  private fetcher: Fetcher | undefined;
  /** The fetch the status reports on (kept after it ends, so the ack shows what was received). */
  private shown: Fetcher | undefined;
  private readonly flow: InstallFlow;
  private readonly intake: ReleaseIntake;
  private work: Promise<void> = Promise.resolve();
  private lastStatusAt = 0;
  private lastProgress = 0;
  private readonly timers: AgentTimers;
  private stopped = false;
  private readonly listeners: Array<(s: DeviceStatus) => void> = [];
  private readonly identity: AgentIdentity;
  private readonly guard: SessionGuard;

  /** The config it runs with: every default from DEVICE_DEFAULTS (device/defaults.ts). */
  private readonly cfg: ResolvedAgentConfig;

  /** The agent over its storage, with the memory it holds (its directory prepared first). */
  static async open(given: AgentConfig, io: AgentPorts): Promise<DeviceAgent> {
    await io.storage.init();
    return new DeviceAgent(given, io, await io.storage.memory());
  }

  /** `memory` is `io.storage.memory()` read after `io.storage.init()`: DeviceAgent.open does both. */
  constructor(
    given: AgentConfig,
    private readonly io: AgentPorts,
    memory: AgentMemory,
  ) {
    this.memory = memory;
    const cfg = (this.cfg = resolveAgentConfig(given));
    this.timers = new AgentTimers(io.clock, cfg.retryMs);
    this.identity = newIdentity(io.clock.now());
    this.guard = new SessionGuard({
      deviceId: cfg.deviceId,
      transport: io.transport,
      topics: io.topics,
      clock: io.clock,
      log: io.log,
      identity: this.identity,
      onGiveUp: (message) => {
        io.log.error(message);
        void this.stop().then(() => io.onFatal?.(message));
      },
    });
    this.flow = new InstallFlow(cfg, io, {
      verifying: () => this.state === 'verifying',
      running: () => this.running,
      setRunning: (digest) => (this.running = digest),
      memory: () => this.memory,
      lastSeq: () => this.fields.seq,
      transition: (event, fields) => this.transition(event, fields),
      reasonOf: (e) => this.reasonOf(e),
      succeeded: () => this.timers.succeeded(),
    });
    this.intake = new ReleaseIntake(cfg, io, {
      memory: () => this.memory,
      running: () => this.running,
      downloading: () => this.state === 'downloading',
      stopped: () => this.stopped,
      transition: (event, fields) => this.transition(event, fields),
      reasonOf: (e) => this.reasonOf(e),
      enqueue: (fn) => this.enqueue(fn),
      endFetch: () => this.endFetch(),
      beginFetch: (a) => this.beginFetch(a, 'release-accepted'),
      install: (a) => this.flow.install(a),
      forgetShown: () => (this.shown = undefined),
    });
  }

  /** Provision an empty directory with its first model (copied and digested from disk, never whole in memory). */
  static async provision(storage: DeviceStorage, initialModel: string, digestOf: (file: string, fsys: FsPort) => Promise<string>): Promise<string> {
    await storage.init();
    const have = await storage.pointer();
    if (have) return have.digest;
    const digest = await storage.installVersionFromFile(initialModel, digestOf);
    await storage.switchTo(digest, null);
    return digest;
  }

  onStatus(fn: (s: DeviceStatus) => void): void {
    this.listeners.push(fn);
  }

  async start(): Promise<void> {
    const { storage, transport: t, topics } = this.io;
    const last = this.memory.lastStatus;
    if (last) ({ state: this.state, fields: this.fields } = restoredStatus(last));
    const recovered = await this.flow.recover();
    const pointer = await storage.pointer();
    if (!pointer) throw new UsageError('no-model', `${storage.dir} holds no model yet: start once with --initial MODEL_FILE`);
    this.running = pointer.digest;
    await this.intake.trust.load();
    t.onMessage((topic, payload) => this.onMessage(topic, payload));
    // A connection that opens while the agent starts is looked at once, by the start-up's own look
    // below (the handler ran for it too: `online`, the status guard and a status were sent twice).
    let starting = true;
    t.onConnect(() => {
      if (!starting) this.onConnected();
    });
    // A trial a stop interrupted is ended or continued first, before any release is looked at:
    // the status remembered (`testing`, published again on connect) is replaced at once.
    const trial = this.trialAfterRestart(recovered);
    if (trial) this.enqueue(trial);
    // The group's retained release comes while we still subscribe: it waits until the frames
    // subscription is in place, so its fetch asks on a connection that will get the answers, and
    // the first look at the connection below finds no fetch to ask again for (it asked again, and a
    // device whose chunk list had not come yet asked for the list and the first window twice).
    let subscribed = (): void => undefined;
    const ready = new Promise<void>((r) => (subscribed = r));
    this.enqueue(() => ready);
    await t.subscribe([topics.release(this.cfg.group, this.cfg.model), topics.trust()], 1).catch((e: unknown) => {
      this.io.log.warn('subscribe failed; will retry on reconnect', { error: String(e) });
    });
    // Frames at QoS 0 (protocol.md §1): TCP already delivers them in order, a clean session drops
    // what was in flight at a disconnect either way, and the device asks again for what is missing;
    // QoS 1 would only add a PUBACK per chunk on the uplink.
    await t.subscribe(topics.framesFor(this.cfg.model, this.cfg.deviceId), 0).catch((e: unknown) => {
      this.io.log.warn('subscribe failed; will retry on reconnect', { error: String(e) });
    });
    subscribed();
    if (!trial) {
      const note = recovered?.action === 'discarded-staging' ? `recovered: an interrupted build of ${recovered.journal.target.slice(0, 16)}… was discarded; building it again` : null;
      this.enqueue(() => this.resumeActive(note));
    }
    starting = false;
    if (t.connected) this.onConnected();
  }

  /**
   * What ends or continues a trial a stop interrupted: the switch back a start made after the
   * last attempt, the next attempt, or (no journal, `testing` remembered) the verdict the stop
   * kept from being recorded (InstallFlow.settleTrial). Undefined when no trial was under way.
   */
  private trialAfterRestart(recovered: Recovery | undefined): (() => Promise<void>) | undefined {
    if (recovered?.action === 'rolled-back') return () => this.flow.crashRollback(recovered);
    if (recovered?.action === 'resume-trial') return () => this.flow.resumeTrial(recovered.journal);
    if (recovered || this.state !== 'testing') return undefined;
    const { target, attempt, maxAttempts } = this.fields;
    return () => this.flow.settleTrial({ target, attempt, maxAttempts });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.timers.clear();
    this.intake.stop();
    const f = this.fetcher;
    this.fetcher = undefined;
    await f?.close();
    await this.work;
  }

  /** Resolves when queued work is done (tests). */
  async idle(): Promise<void> {
    let w;
    do {
      w = this.work;
      await w;
    } while (w !== this.work);
  }

  /** Counters of the current (or last) fetch. */
  get stats(): { badChunks: number; duplicateChunks: number; requests: number } {
    const f = this.shown;
    return { badChunks: f?.badChunks ?? 0, duplicateChunks: f?.duplicateChunks ?? 0, requests: f?.requestsSent ?? 0 };
  }

  private onConnected(): void {
    const { transport: t, topics } = this.io;
    void t.publish(topics.presence(this.cfg.deviceId), encodePresence('online', this.io.clock.now()), { qos: 1, retain: true }).catch(ignoreBecause('presence is published again on the next connect', this.io.log));
    // Ask again only once the frames subscription is in place on this connection: the client restores
    // it after any QoS 1 publishes queued while offline, and a request that reached the server first
    // had its answer dropped by the broker (no subscriber yet), leaving the download silent until a timeout.
    if (this.fetcher) {
      const resend = (): void => this.fetcher?.resend();
      // `resend`: the client counts the filter as held and would answer at once, without the broker.
      void t.subscribe(topics.framesFor(this.cfg.model, this.cfg.deviceId), 0, { resend: true }).then(resend, resend);
    }
    // A reconnect of our own (a silent connection while the link was up): nobody took the session, and
    // the status has not changed (an unacknowledged one is sent again by the transport).
    if (t.reconnectedQuickly === true) return;
    // Read the retained status before replacing it: another agent's, there, means a shared --id.
    void this.guard.check().then(() => {
      if (!this.stopped) this.publishStatus();
    });
    // A download that failed (no space, stalled, storage) is tried again on reconnect.
    if (this.state === 'failed' && this.memory.active && !this.fetcher && this.fields.reason !== 'corrupt-source') this.enqueue(() => this.resumeActive());
  }

  private onMessage(topic: string, payload: Uint8Array): void {
    if (this.stopped) return;
    const p = this.io.topics.parse(topic);
    if (!p) return;
    if (p.kind === 'release') {
      const copy = new Uint8Array(payload);
      this.enqueue(() => this.intake.onRelease(copy));
    } else if (p.kind === 'trust' && payload.byteLength > 0) {
      const copy = new Uint8Array(payload);
      this.enqueue(() => this.intake.onTrust(copy));
    } else if (p.kind === 'frames' && this.fetcher) {
      try {
        this.fetcher.onFrame(decodeFrame(payload));
      } catch (e) {
        this.io.log.warn('dropped a malformed frame', { error: (e as Error).message });
      }
    }
  }

  private enqueue(fn: () => Promise<void>): void {
    this.work = this.work.then(fn).catch((e: unknown) => {
      this.io.log.error('agent step failed', { error: (e as Error)?.stack ?? String(e) });
    });
  }

  // --- transitions and status ----------------------------------------------

  /** Take one row of the table; remember the new status on disk, then publish it. */
  private async transition(event: DeviceEvent, fields: Partial<StatusFields> = {}): Promise<void> {
    const to = nextState(this.state, event);
    this.io.log.info('transition', { from: this.state, event, to });
    this.state = to;
    this.fields = { ...this.fields, attempt: null, maxAttempts: null, ...fields };
    if (event !== 'download-progress') {
      this.memory.lastStatus = this.status();
      await this.io.storage.saveMemory(this.memory);
    }
    this.publishStatus();
  }

  private status(): DeviceStatus {
    return composeStatus({
      device: this.cfg.deviceId,
      group: this.cfg.group,
      model: this.cfg.model,
      state: this.state,
      running: this.running,
      fields: this.fields,
      shown: this.shown,
      active: this.fetcher,
      wire: this.io.transport.stats?.() ?? null,
      now: this.io.clock.now(),
      identity: this.identity,
    });
  }

  private publishStatus(): DeviceStatus {
    const s = this.status();
    this.lastStatusAt = this.io.clock.now();
    for (const l of this.listeners) l(s);
    void this.io.transport
      .publish(this.io.topics.status(this.cfg.deviceId), encodeStatus(s), { qos: 1, retain: true })
      .then(() => this.guard.acked(), ignoreBecause('the status is published again at the next transition and on reconnect', this.io.log));
    return s;
  }

  /** toReason, and a bug's stack in the log: an internal error is reported as one, never as bad input or storage. */
  private reasonOf(e: unknown): ReturnType<typeof toReason> {
    const r = toReason(e);
    if (r.code === 'internal-error') this.io.log.error('internal error (a bug)', errorFields(e));
    return r;
  }

  /** After a restart or a failure: continue the accepted release from what is on disk. */
  private async resumeActive(note: string | null = null): Promise<void> {
    const a = this.memory.active;
    // A fetch under way is already fetching the active release: at start-up the group's retained
    // release can be taken (and its fetch begun) before this runs, and a second Download beside the
    // first asked for the list and the first window again, and re-asked on its own timers for frames
    // that all went to the other (each device of sim:gateway's direct phase got 1.2–1.6 payloads).
    if (!a || this.fetcher) return;
    if (this.running === a.target) {
      // Stopped after committing, before the ack was recorded: it is done.
      this.memory.active = null;
      await this.transition(this.state === 'testing' ? 'health-passed' : 'release-current', { reason: null, message: null });
      return;
    }
    if (a.steps.length === 0 || (a.steps[0].from !== null && a.steps[0].from !== this.running)) {
      if (a.steps.length === 0 && (await this.io.storage.hasVersion(a.target))) {
        await this.transition('resume', { message: note });
        await this.transition('download-complete');
        return this.flow.install(a);
      }
      this.memory.active = null;
      await this.io.storage.saveMemory(this.memory);
      return;
    }
    await this.beginFetch(a, 'resume', note);
  }

  private async endFetch(): Promise<void> {
    const f = this.fetcher;
    this.fetcher = undefined;
    this.timers.stopWatch();
    await f?.close().catch((e: unknown) => this.io.log.warn('closing a download failed', { error: String(e) }));
  }

  // --- fetching ------------------------------------------------------------

  private async beginFetch(a: ActiveRelease, event: 'release-accepted' | 'resume', note: string | null = null): Promise<void> {
    const fields = { target: a.target, seq: a.seq, updateId: a.steps[0]?.updateId ?? null, reason: null, message: note, rollback: a.rollback };
    try {
      await checkSpace(this.io.storage, a.steps, this.io.storage.modelPath(this.running));
      const f: Fetcher = fetcherFor(a.steps, this.cfg, this.io, {
        onProgress: () => this.onProgress(f),
        onComplete: () => this.enqueue(() => this.fetched(f, a)),
        onFail: (e) => this.enqueue(() => this.fetchFailed(f, e)),
      });
      this.fetcher = f;
      this.shown = f;
      this.lastProgress = 0;
      await this.transition(event, fields);
      this.armWatchdog(f);
      await f.start();
    } catch (e) {
      const { code, message } = this.reasonOf(e);
      if (this.state !== 'downloading') await this.transition(event, fields);
      await this.endFetch();
      await this.transition('download-failed', { reason: code, message });
      this.scheduleRetry(code);
    }
  }

  private onProgress(f: Fetcher): void {
    const now = this.io.clock.now();
    // Statuses cost uplink bytes (a cellular uplink is often a quarter of the downlink, and a
    // status is ~650 B): one per progressStep of the download (half); the watchdog adds one
    // whenever none went out for watchdogMs (30 s, with the rate), so a slow download still reports.
    if (f.progress - this.lastProgress < this.cfg.progressStep) return;
    this.lastStatusAt = now;
    this.lastProgress = f.progress;
    this.enqueue(() => (this.fetcher === f && this.state === 'downloading' ? this.transition('download-progress', { updateId: f.updateId, message: null }) : Promise.resolve()));
  }

  private async fetchFailed(f: Fetcher, e: unknown): Promise<void> {
    if (this.fetcher !== f) return;
    await this.endFetch();
    const { code, message } = this.reasonOf(e);
    await this.transition('download-failed', { reason: code, message });
    this.scheduleRetry(code);
  }

  /** A failed download is tried again later (what was received stays on disk), except from a corrupt source. */
  private scheduleRetry(code: string): void {
    if (code === 'corrupt-source' || this.stopped) return;
    const delay = this.timers.retryLater(() => {
      if (this.state === 'failed' && !this.fetcher) this.enqueue(() => this.resumeActive());
    });
    this.io.log.info('download will be tried again', { inMs: delay });
  }

  /** While downloading, a status at least every watchdogMs: the rate, or how long nothing has come. */
  private armWatchdog(f: Fetcher): void {
    const every = this.cfg.watchdogMs;
    this.timers.watch(every, () => {
      if (this.fetcher !== f || this.stopped) return false;
      if (this.io.clock.now() - this.lastStatusAt >= every) {
        const silence = f.silenceMs();
        const message = silence >= every ? `no chunk for ${Math.round(silence / 1000)} s` : `receiving ${f.bytesPerSecond(this.io.clock.now())} B/s`;
        this.lastStatusAt = this.io.clock.now();
        this.enqueue(() => (this.fetcher === f && this.state === 'downloading' ? this.transition('download-progress', { message }) : Promise.resolve()));
      }
      return true;
    });
  }

  private async fetched(f: Fetcher, a: ActiveRelease): Promise<void> {
    if (this.fetcher !== f) return;
    await this.endFetch();
    await this.transition('download-complete');
    await this.flow.install(a);
  }
}
