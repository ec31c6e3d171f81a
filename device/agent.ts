import { promises as fs } from 'node:fs';
import { sha256Hex } from '../protocol/chunks.ts';
import { decodeFrame } from '../protocol/frames.ts';
import { decodePayload } from '../protocol/lowrank.ts';
import { checkRelease, stepFrom, verifyRelease, type ReleaseBody, type ReleaseStep, type TrustFile } from '../protocol/release.ts';
import { encodeStatus, PRESENCE_ONLINE, type DeviceState, type DeviceStatus } from '../protocol/status.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import { VERSION } from '../util/version.ts';
import { applyToFile, commitFile } from './apply.ts';
import type { Clock } from './clock.ts';
import { Download } from './download.ts';
import type { HealthCheck } from './health.ts';
import { nextState, type DeviceEvent } from './machine.ts';
import { DeviceError, toReason } from './reasons.ts';
import type { AgentMemory, DeviceStorage } from './storage.ts';

export interface AgentConfig {
  deviceId: string;
  model: string;
  group: string;
  trust: TrustFile;
  /** Chunks in flight at most (default 32); the window adapts below this to the link. */
  window?: number;
  /** Re-ask for outstanding chunks after at least this long without a byte on the socket (default 10 s; grows with the round trip). */
  idleMs?: number;
  /** A download with no new chunk for this long fails `download-stalled` and is retried later (default 120 s). */
  stallMs?: number;
  /** Bad copies of one chunk before the source is declared corrupt (default 3). */
  maxBadCopies?: number;
  /** First delay before a failed download is tried again; doubles up to 30 min (default 30 s). */
  retryMs?: number;
  /** Publish a status at least this often while downloading, even when nothing arrives (default 10 s). */
  watchdogMs?: number;
  /** Allowed clock skew for issue times in the future (default 300 s). */
  skewSeconds?: number;
  /** Largest payload accepted (default 256 MiB). */
  maxPayloadBytes?: number;
}

export interface AgentPorts {
  transport: Transport;
  storage: DeviceStorage;
  clock: Clock;
  health: HealthCheck;
  topics: Topics;
  log: Logger;
}

type StatusFields = Pick<DeviceStatus, 'target' | 'seq' | 'updateId' | 'reason' | 'message'>;

/**
 * The device agent: follows its group's release and drives one update at a
 * time through the transition table in machine.ts, publishing its status
 * (retained) at every transition. The installed model changes only by an
 * atomic switch to a version whose digest the verified release names.
 */
export class DeviceAgent {
  state: DeviceState = 'idle';
  running = '';
  private memory!: AgentMemory;
  private fields: StatusFields = { target: null, seq: null, updateId: null, reason: null, message: null };
  private download: Download | undefined;
  /** The download the status reports on (kept after it ends, so the ack shows what was received). */
  private shown: Download | undefined;
  private work: Promise<void> = Promise.resolve();
  private lastProgressAt = 0;
  private lastProgress = 0;
  private retryTimer: unknown;
  private retries = 0;
  private watchdog: unknown;
  private stopped = false;
  private readonly listeners: Array<(s: DeviceStatus) => void> = [];

  constructor(private readonly cfg: AgentConfig, private readonly io: AgentPorts) {}

  /** Provision an empty directory with its first model. */
  static async provision(storage: DeviceStorage, initialModel: string, digestOf: (file: string) => Promise<string>): Promise<string> {
    await storage.init();
    const have = await storage.pointer();
    if (have) return have.digest;
    const digest = await digestOf(initialModel);
    await storage.installVersion(digest, new Uint8Array(await fs.readFile(initialModel)));
    await storage.switchTo(digest, null);
    return digest;
  }

  onStatus(fn: (s: DeviceStatus) => void): void {
    this.listeners.push(fn);
  }

  async start(): Promise<void> {
    const { storage, transport: t, topics } = this.io;
    await storage.init();
    const pointer = await storage.pointer();
    if (!pointer) throw new Error(`${storage.dir} holds no model yet: start once with --initial MODEL_FILE`);
    this.running = pointer.digest;
    this.memory = await storage.memory();
    const last = this.memory.lastStatus;
    if (last) {
      this.state = last.state;
      this.fields = { target: last.target, seq: last.seq, updateId: last.updateId, reason: last.reason, message: last.message };
    }
    t.onMessage((topic, payload) => this.onMessage(topic, payload));
    t.onConnect(() => this.onConnected());
    await t.subscribe([topics.release(this.cfg.group, this.cfg.model), topics.framesFor(this.cfg.model, this.cfg.deviceId)], 1).catch((e: unknown) => {
      this.io.log.warn('subscribe failed; will retry on reconnect', { error: String(e) });
    });
    this.enqueue(() => this.resumeActive());
    if (t.connected) this.onConnected();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer) this.io.clock.clearTimeout(this.retryTimer);
    if (this.watchdog) this.io.clock.clearTimeout(this.watchdog);
    this.download?.stop();
    await this.work;
    await this.download?.close();
  }

  /** Resolves when queued work is done (tests). */
  async idle(): Promise<void> {
    let w;
    do {
      w = this.work;
      await w;
    } while (w !== this.work);
  }

  /** Counters of the current (or last) download. */
  get stats(): { badChunks: number; duplicateChunks: number; requests: number } {
    const d = this.shown;
    return { badChunks: d?.badChunks ?? 0, duplicateChunks: d?.duplicateChunks ?? 0, requests: d?.requestsSent ?? 0 };
  }

  private onConnected(): void {
    const { transport: t, topics } = this.io;
    void t.publish(topics.presence(this.cfg.deviceId), PRESENCE_ONLINE, { qos: 1, retain: true }).catch(() => undefined);
    this.publishStatus();
    this.download?.resend();
    // A download that failed (no space, stalled, storage) is tried again on reconnect.
    if (this.state === 'failed' && this.memory?.active && !this.download && this.fields.reason !== 'corrupt-source') this.enqueue(() => this.resumeActive());
  }

  private onMessage(topic: string, payload: Uint8Array): void {
    if (this.stopped) return;
    const p = this.io.topics.parse(topic);
    if (!p) return;
    if (p.kind === 'release') {
      const copy = new Uint8Array(payload);
      this.enqueue(() => this.onRelease(copy));
    } else if (p.kind === 'frames' && this.download) {
      try {
        this.download.onFrame(decodeFrame(payload));
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

  // --- transitions -----------------------------------------------------------

  /** Take one row of the table; remember the new status on disk, then publish it. */
  private async transition(event: DeviceEvent, fields: Partial<StatusFields> = {}): Promise<void> {
    const to = nextState(this.state, event);
    this.io.log.info('transition', { from: this.state, event, to });
    this.state = to;
    this.fields = { ...this.fields, ...fields };
    if (event !== 'download-progress') {
      this.memory.lastStatus = this.status();
      await this.io.storage.saveMemory(this.memory);
    }
    this.publishStatus();
  }

  private status(): DeviceStatus {
    const d = this.shown;
    const total = d?.step.size ?? 0;
    const bytes = d?.receivedBytes ?? 0;
    return {
      device: this.cfg.deviceId,
      group: this.cfg.group,
      model: this.cfg.model,
      state: this.state,
      running: this.running,
      ...this.fields,
      progress: d ? d.receivedChunks / d.step.chunks : this.state === 'ok' ? 1 : 0,
      rateBps: this.download ? this.download.link.bytesPerSecond(this.io.clock.now()) : 0,
      wire: this.io.transport.stats?.() ?? null,
      bytes,
      totalBytes: total,
      badChunks: d?.badChunks ?? 0,
      agent: VERSION,
      time: new Date(this.io.clock.now()).toISOString(),
    };
  }

  private publishStatus(): DeviceStatus {
    const s = this.status();
    for (const l of this.listeners) l(s);
    void this.io.transport.publish(this.io.topics.status(this.cfg.deviceId), encodeStatus(s), { qos: 1, retain: true }).catch(() => undefined);
    return s;
  }

  // --- releases --------------------------------------------------------------

  private async onRelease(bytes: Uint8Array): Promise<void> {
    if (bytes.byteLength === 0) {
      if (this.state === 'downloading') {
        this.endDownload();
        this.memory.active = null;
        await this.transition('release-withdrawn', { reason: null, message: 'release withdrawn' });
      }
      return;
    }
    const hash = sha256Hex(bytes);
    const m = this.memory;
    if (m.refused.includes(hash) || m.handled === hash || m.active?.releaseHash === hash) {
      this.io.log.info('release seen before; not processed again', { release: hash.slice(0, 16), refused: m.refused.includes(hash) });
      return;
    }
    let body: ReleaseBody;
    try {
      body = verifyRelease(bytes, this.cfg.trust);
      checkRelease(body, {
        model: this.cfg.model,
        group: this.cfg.group,
        now: Math.floor(this.io.clock.now() / 1000),
        clockFloor: m.clockFloor,
        highestSeq: m.highestSeq,
        skewSeconds: this.cfg.skewSeconds ?? 300,
      });
    } catch (e) {
      return this.refuse(hash, e);
    }
    if (body.target === this.running) {
      this.accept(hash, body, null);
      this.endDownload();
      this.shown = undefined;
      await this.transition('release-current', { target: body.target, seq: body.seq, updateId: null, reason: null, message: null });
      return;
    }
    const step = stepFrom(body, this.running);
    if (!step) return this.refuse(hash, new DeviceError('wrong-base', `running ${this.running.slice(0, 16)}…`));
    const max = this.cfg.maxPayloadBytes ?? 256 * 1024 * 1024;
    if (step.size > max) return this.refuse(hash, new DeviceError('payload-too-large', `${step.size} bytes > ${max}`));
    this.accept(hash, body, step);
    await this.io.storage.saveMemory(m);
    await this.beginDownload(step, body.seq, 'release-accepted');
  }

  private accept(hash: string, body: ReleaseBody, step: ReleaseStep | null): void {
    const m = this.memory;
    m.highestSeq = body.seq;
    m.clockFloor = Math.max(m.clockFloor, body.issued);
    m.handled = hash;
    m.active = step ? { releaseHash: hash, seq: body.seq, step } : null;
  }

  private async refuse(hash: string, e: unknown): Promise<void> {
    const { code, message } = toReason(e);
    this.io.log.warn('release refused', { reason: code, message });
    this.memory.refused.push(hash);
    this.endDownload();
    await this.transition('release-refused', { reason: code, message });
  }

  /** After a restart: finish what the last run was doing. */
  private async resumeActive(): Promise<void> {
    const a = this.memory.active;
    if (!a) return;
    if (this.running === a.step.to && this.state === 'testing') {
      // Crashed after the switch, before the health check finished: check now.
      return this.checkHealth(a.step);
    }
    if (this.running !== a.step.from) {
      this.memory.active = null;
      await this.io.storage.saveMemory(this.memory);
      return;
    }
    await this.beginDownload(a.step, a.seq, 'resume');
  }

  private endDownload(): void {
    const d = this.download;
    this.download = undefined;
    if (d) void d.close().catch((e: unknown) => this.io.log.warn('closing a download failed', { error: String(e) }));
  }

  private async beginDownload(step: ReleaseStep, seq: number, event: 'release-accepted' | 'resume'): Promise<void> {
    this.endDownload();
    const fields = { target: step.to, seq, updateId: step.updateId, reason: null, message: null };
    try {
      const modelSize = (await fs.stat(this.io.storage.modelPath(this.running))).size;
      const need = step.size + modelSize;
      const free = await this.io.storage.freeBytes();
      if (free < need) throw new DeviceError('no-space', `${free} bytes free, ${need} needed`);
      const files = await this.io.storage.openDownload(step);
      const d = new Download({
        step,
        files,
        transport: this.io.transport,
        topics: this.io.topics,
        model: this.cfg.model,
        deviceId: this.cfg.deviceId,
        clock: this.io.clock,
        log: this.io.log,
        maxWindow: this.cfg.window ?? 32,
        idleMs: this.cfg.idleMs ?? 10_000,
        stallMs: this.cfg.stallMs ?? 120_000,
        maxBadCopies: this.cfg.maxBadCopies ?? 3,
        wireBytesIn: this.io.transport.stats ? () => this.io.transport.stats!().bytesIn : undefined,
        onProgress: () => this.onProgress(),
        onComplete: () => this.enqueue(() => this.completeUpdate(d)),
        onFail: (e) => this.enqueue(() => this.failDownload(d, e)),
      });
      this.download = d;
      this.shown = d;
      await this.transition(event, fields);
      this.armWatchdog(d);
      await d.start();
    } catch (e) {
      const { code, message } = toReason(e);
      if (this.state !== 'downloading') await this.transition(event, fields);
      this.endDownload();
      await this.transition('download-failed', { reason: code, message });
    }
  }

  private onProgress(): void {
    const d = this.download;
    if (!d) return;
    const progress = d.receivedChunks / d.step.chunks;
    const now = this.io.clock.now();
    if (now - this.lastProgressAt < 1000 && progress - this.lastProgress < 0.05) return;
    this.lastProgressAt = now;
    this.lastProgress = progress;
    this.enqueue(() => (this.download === d && this.state === 'downloading' ? this.transition('download-progress', { message: null }) : Promise.resolve()));
  }

  private async failDownload(d: Download, e: DeviceError): Promise<void> {
    if (this.download !== d) return;
    this.endDownload();
    await this.transition('download-failed', { reason: e.code, message: e.message });
    this.scheduleRetry(e.code);
  }

  /** A failed download is tried again later (what was received stays on disk), except from a corrupt source. */
  private scheduleRetry(code: string): void {
    if (code === 'corrupt-source' || this.stopped) return;
    const delay = Math.min(30 * 60_000, (this.cfg.retryMs ?? 30_000) * 2 ** this.retries++);
    if (this.retryTimer) this.io.clock.clearTimeout(this.retryTimer);
    this.retryTimer = this.io.clock.setTimeout(() => {
      if (this.state === 'failed' && !this.download) this.enqueue(() => this.resumeActive());
    }, delay);
    this.io.log.info('download will be tried again', { inMs: delay });
  }

  /** While downloading, a status at least every watchdogMs: the rate, or how long nothing has come. */
  private armWatchdog(d: Download): void {
    const every = this.cfg.watchdogMs ?? 10_000;
    const tick = (): void => {
      if (this.download !== d || this.stopped) return;
      if (this.io.clock.now() - this.lastProgressAt >= every) {
        const silence = d.silenceMs();
        const rate = d.link.bytesPerSecond(this.io.clock.now());
        const message = silence >= every ? `no chunk for ${Math.round(silence / 1000)} s` : `receiving ${rate} B/s`;
        this.lastProgressAt = this.io.clock.now();
        this.enqueue(() => (this.download === d && this.state === 'downloading' ? this.transition('download-progress', { message }) : Promise.resolve()));
      }
      this.watchdog = this.io.clock.setTimeout(tick, every);
    };
    if (this.watchdog) this.io.clock.clearTimeout(this.watchdog);
    this.watchdog = this.io.clock.setTimeout(tick, every);
  }

  // --- verify, apply, switch, health -----------------------------------------

  private async completeUpdate(d: Download): Promise<void> {
    if (this.download !== d) return;
    const step = d.step;
    await this.transition('download-complete');
    let payload;
    try {
      const bytes = await d.readPayload();
      await d.close();
      if (sha256Hex(bytes) !== step.sha256) throw new DeviceError('payload-hash-mismatch');
      payload = decodePayload(bytes);
      if (payload.base !== step.from || payload.target !== step.to) {
        throw new DeviceError('malformed-payload', 'the payload names other digests than the release');
      }
    } catch (e) {
      return this.endUpdate('verify-failed', e, step);
    }
    await this.transition('verify-passed');
    const storage = this.io.storage;
    const finalPath = storage.modelPath(step.to);
    const tmp = `${finalPath}.tmp-${process.pid}`;
    try {
      const digest = await applyToFile(storage.modelPath(this.running), payload, tmp);
      if (digest !== step.to) throw new DeviceError('digest-mismatch', `built ${digest.slice(0, 16)}…`);
      await commitFile(tmp, finalPath);
    } catch (e) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      const { code } = toReason(e);
      return this.endUpdate(code === 'storage-error' ? 'storage-failed' : 'apply-failed', e, step);
    }
    const previous = this.running;
    await storage.switchTo(step.to, previous);
    this.running = step.to;
    await this.transition('apply-done');
    await this.checkHealth(step);
  }

  private async checkHealth(step: ReleaseStep): Promise<void> {
    const storage = this.io.storage;
    const result = await this.io.health.check(storage.currentPath, step.to);
    const pointer = await storage.pointer();
    if (result.healthy) {
      await storage.prune([step.to, pointer?.previous ?? step.from]);
      this.endDownload();
      await storage.removeDownload(step.updateId);
      this.memory.active = null;
      this.retries = 0;
      await this.transition('health-passed', { reason: null, message: null });
      return;
    }
    await storage.switchTo(step.from, null);
    this.running = step.from;
    this.endDownload();
    this.memory.active = null;
    await this.transition('health-failed', { reason: 'health-check-failed', message: result.message ?? null });
  }

  private async endUpdate(event: DeviceEvent, e: unknown, step: ReleaseStep): Promise<void> {
    const { code, message } = toReason(e);
    this.endDownload();
    this.memory.active = null;
    await this.io.storage.removeDownload(step.updateId);
    await this.transition(event, { reason: code, message });
  }
}
