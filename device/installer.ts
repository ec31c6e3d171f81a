import { DEVICE_DEFAULTS } from './defaults.ts';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { openPayload } from '../protocol/seal.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import type { Logger } from '../util/log.ts';
import { commitFile } from './apply.ts';
import type { FsPort } from '../platform/fs-port.ts';
import { describeFailure, runCommand } from './commands.ts';
import type { HealthCheck } from './health.ts';
import { ValidationRefused, type StagedValidator, type ValidationFigures } from './onnx-validate.ts';
import { attemptOf, type Journal } from './journal.ts';
import { DeviceError } from './reasons.ts';
import type { DeviceStorage } from './storage.ts';
import { PayloadFile } from '../util/payload-file.ts';

export interface InstallerConfig {
  deviceId: string;
  /** Run on the staged model before it may become current; exit 0 = fit. */
  validateCmd?: string;
  validateTimeoutMs: number;
  /** Run after the switch; exit 0 = healthy. */
  healthCmd?: string;
  healthTimeoutMs: number;
  /** Stay in the trial this long after a healthy check; a crash in it is a failed attempt (default 0). */
  healthWindowMs?: number;
  /** Attempts of a trial (a crash or a failed health command each count one) before going back (default 3). */
  maxAttempts?: number;
  /** Waits out the health window (tests pass their own). */
  sleep?: (ms: number) => Promise<void>;
  /** Told about every switch (model path and digest in its environment). */
  onSwitchCmd?: string;
  onSwitchTimeoutMs: number;
  /** Opens payloads sealed for this device's group. */
  groupKey?: Uint8Array;
  /** Checks the staged model in-process (ONNX Runtime accuracy, device/onnx-validate.ts), after validateCmd. */
  validator?: StagedValidator;
}

/** Why a trial ended on the previous version. */
export type TrialFailure = 'health-check-failed' | 'health-check-timeout' | 'crashed-while-testing';

/** How a trial ended: healthy on attempt `attempt`, or back on the previous version after it. */
export type TrialOutcome = { healthy: true; attempt: number } | { healthy: false; attempt: number; reason: TrialFailure; message: string };

/** What a start found in the journal and did about it. */
export type Recovery =
  | { action: 'discarded-staging'; journal: Journal }
  /** The trial goes on: switched (again) to the target, `journal.attempt` is the attempt now starting. */
  | { action: 'resume-trial'; journal: Journal }
  /**
   * Back on the previous version: the last attempt did not finish, or the target is gone. The
   * journal stays until the agent has recorded the verdict (`closeJournal`): a stop before that
   * switches back again on the next start, with the attempt count the journal holds.
   */
  | { action: 'rolled-back'; journal: Journal; message: string };

/**
 * A verified step: a low-rank payload checked on disk (read again tensor by tensor
 * as apply reaches each), or (full model) the file holding the plain model.
 */
type Verified = { step: ReleaseStep; payload: PayloadFile | null; plainFile: string };

/** SHA-256 of a file, read through the port 64 KiB at a time. */
async function sha256File(file: string, fsys: FsPort): Promise<string> {
  const hash = createHash('sha256');
  const h = await fsys.open(file, 'r');
  try {
    const buf = new Uint8Array(64 * 1024);
    for (let pos = 0; ;) {
      const { bytesRead } = await h.read(buf, 0, buf.byteLength, pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await h.close();
  }
  return hash.digest('hex');
}

/**
 * Everything between "all payloads are on disk" and "the new model is
 * committed or rolled back": checks, building the new version tensor by
 * tensor, validation, the journaled switch, health, rollback, and recovery
 * from a crash at any of these points.
 */
export class Installer {
  constructor(
    private readonly storage: DeviceStorage,
    private readonly cfg: InstallerConfig,
    private readonly health: HealthCheck,
    private readonly log: Logger,
  ) {}

  private get fsys(): FsPort {
    return this.storage.fsys;
  }

  private payloadFile(step: ReleaseStep): string {
    return path.join(this.storage.downloadDir(step.updateId), 'payload');
  }

  /**
   * Each payload hashes to its step (sealed bytes as they travelled); sealed
   * ones open with the group key (in memory: a secretbox opens whole; the
   * plain bytes go to disk beside it); low-rank payloads are decoded from disk
   * one tensor at a time (never whole) and name the step's digests.
   */
  async verify(steps: ReleaseStep[]): Promise<Verified[]> {
    const out: Verified[] = [];
    for (const step of steps) {
      if ((await sha256File(this.payloadFile(step), this.fsys)) !== step.sha256) throw new DeviceError('payload-hash-mismatch', `update ${step.updateId}`);
      let plainFile = this.payloadFile(step);
      if (step.sealed) {
        if (!this.cfg.groupKey) throw new DeviceError('undecryptable', 'the payload is sealed and this device has no group key');
        const bytes = openPayload(await this.fsys.readFile(plainFile), this.cfg.groupKey);
        plainFile = path.join(this.storage.downloadDir(step.updateId), 'plain');
        await this.fsys.writeFile(plainFile, bytes);
      }
      if (step.from === null) {
        out.push({ step, payload: null, plainFile });
        continue;
      }
      const payload = await PayloadFile.verify(plainFile, this.fsys);
      if (payload.base !== step.from || payload.target !== step.to) throw new DeviceError('malformed-payload', 'the payload names other digests than the release');
      out.push({ step, payload, plainFile });
    }
    return out;
  }

  /**
   * Build the target version from `running` through the verified steps,
   * checking each intermediate digest, then run the validation command on
   * it; only then is it committed to models/. Nothing here touches the
   * current model.
   */
  async stage(running: string, steps: Verified[], target: string, rollback: boolean): Promise<void> {
    const s = this.storage;
    if (await s.hasVersion(target)) {
      // Held already (an operator rollback, or a crash after staging): check it is intact.
      const digest = await s.format.digestFile(s.modelPath(target), this.fsys);
      if (digest === target) return this.validate(s.modelPath(target), target, running);
      await this.fsys.rm(s.modelPath(target), { force: true });
      if (steps.length === 0) throw new DeviceError('digest-mismatch', `the held version ${target.slice(0, 16)}… is damaged (${digest.slice(0, 16)}…)`);
    }
    if (steps.length === 0) throw new DeviceError('wrong-base', `version ${target.slice(0, 16)}… is not held here and the release has no step from ${running.slice(0, 16)}…`);
    await s.writeJournal({ phase: 'staging', target, previous: running, rollback, since: Date.now() });
    let from = s.modelPath(running);
    let at = running;
    let k = 0;
    for (const { step, payload, plainFile } of steps) {
      const out = `${s.stagedPath(step.to)}.${k++}`;
      let digest: string;
      if (payload === null) {
        await this.fsys.copyFile(plainFile, out);
        digest = await s.format.digestFile(out, this.fsys).catch((e: unknown) => {
          throw new DeviceError('malformed-model', `the full-model payload: ${(e as Error).message}`);
        });
      } else {
        if (payload.base !== at) throw new DeviceError('wrong-base', `step ${step.updateId} starts from ${payload.base.slice(0, 12)}, not ${at.slice(0, 12)}`);
        digest = await s.format.apply(from, payload, out, this.fsys);
      }
      if (digest !== step.to) {
        await this.fsys.rm(out, { force: true });
        throw new DeviceError('digest-mismatch', `step ${step.updateId} built ${digest.slice(0, 16)}…, the release names ${step.to.slice(0, 16)}…`);
      }
      if (from !== s.modelPath(running)) await this.fsys.rm(from, { force: true });
      from = out;
      at = digest;
    }
    if (at !== target) throw new DeviceError('digest-mismatch', `the steps end at ${at.slice(0, 16)}…, not the target`);
    await this.validate(from, target, running);
    await commitFile(from, s.modelPath(target), this.fsys);
  }

  private async validate(file: string, target: string, previous: string): Promise<void> {
    await this.validateInProcess(file, previous);
    if (!this.cfg.validateCmd) return;
    const r = await runCommand(this.cfg.validateCmd, this.env(file, target, previous, false), this.cfg.validateTimeoutMs);
    if (!r.ok) throw new DeviceError(r.timedOut ? 'validation-timeout' : 'validation-failed', describeFailure('the validation command', r, this.cfg.validateTimeoutMs));
  }

  /** The figures of the last in-process validation (for the status), refused or passed. */
  lastValidation: ValidationFigures | null = null;

  private async validateInProcess(file: string, previous: string): Promise<void> {
    this.lastValidation = null;
    if (!this.cfg.validator) return;
    try {
      this.lastValidation = await this.cfg.validator.validate(file, this.storage.modelPath(previous));
    } catch (e) {
      if (e instanceof ValidationRefused) this.lastValidation = e.figures;
      throw e;
    }
  }

  get maxAttempts(): number {
    return Math.max(1, this.cfg.maxAttempts ?? DEVICE_DEFAULTS.maxAttempts);
  }

  /**
   * Without a health command or a health window there is nothing in the
   * trial that a crash could be blamed on (the digest check is
   * deterministic): the switch is the commit, and a stop during it is
   * finished on the next start, however often it happens.
   */
  get switchIsCommit(): boolean {
    return !this.cfg.healthCmd && (this.cfg.healthWindowMs ?? DEVICE_DEFAULTS.healthWindowMs) <= 0;
  }

  /**
   * Attempt `attempt` of the trial begins: journal `switching` (the count is
   * durable before anything else happens), switch the pointer, journal
   * `testing`. From here a stop is a failed attempt.
   */
  async switchTo(target: string, previous: string, rollback: boolean, attempt = 1): Promise<void> {
    await this.storage.writeJournal({ phase: 'switching', target, previous, rollback, since: Date.now(), attempt });
    await this.storage.switchTo(target, previous);
    await this.storage.writeJournal({ phase: 'testing', target, previous, rollback, since: Date.now(), attempt });
    if (this.cfg.onSwitchCmd) {
      const r = await runCommand(this.cfg.onSwitchCmd, this.env(this.storage.currentPath, target, previous, rollback), this.cfg.onSwitchTimeoutMs);
      if (!r.ok) this.log.warn('the on-switch command failed', { detail: describeFailure('on-switch', r, this.cfg.onSwitchTimeoutMs) });
    }
  }

  /**
   * The trial of the switched version from attempt `first`: each attempt
   * checks that the file applications load has exactly the target digest,
   * runs the health command, then waits out the health window. A failed or
   * timed-out health command is tried again (its attempt number journaled
   * first, `onRetry` told) until `maxAttempts`; a damaged file is not (no
   * retry can mend it). Then the version is committed, or the device
   * switches back to `previous` (a pointer switch, never arithmetic).
   */
  async trial(target: string, previous: string, rollback: boolean, first: number, onRetry: (attempt: number, why: string) => Promise<void>): Promise<TrialOutcome> {
    const max = this.maxAttempts;
    for (let attempt = first; ; attempt++) {
      const r = await this.attempt(target, previous, rollback);
      if (r.healthy) {
        await this.commit(target, previous);
        return { healthy: true, attempt };
      }
      if (!r.retry || attempt >= max) {
        await this.rollBack(previous, target);
        const counted = r.retry ? ` (attempt ${attempt} of ${max})` : '';
        return { healthy: false, attempt, reason: r.reason, message: `${r.message}${counted}` };
      }
      this.log.warn('the trial failed; trying again', { target, attempt, of: max, why: r.message });
      await this.storage.writeJournal({ phase: 'testing', target, previous, rollback, since: Date.now(), attempt: attempt + 1 });
      await onRetry(attempt + 1, r.message);
    }
  }

  /** One attempt: the digest of the current file, the health command, the window. */
  private async attempt(target: string, previous: string, rollback: boolean): Promise<{ healthy: true } | { healthy: false; retry: boolean; reason: TrialFailure; message: string }> {
    const own = await this.health.check(this.storage.currentPath, target);
    if (!own.healthy) return { healthy: false, retry: false, reason: 'health-check-failed', message: own.message ?? `${this.storage.currentPath} is not the target` };
    if (this.cfg.healthCmd) {
      const r = await runCommand(this.cfg.healthCmd, this.env(this.storage.currentPath, target, previous, rollback), this.cfg.healthTimeoutMs);
      if (!r.ok) return { healthy: false, retry: true, reason: r.timedOut ? 'health-check-timeout' : 'health-check-failed', message: describeFailure('the health command', r, this.cfg.healthTimeoutMs) };
    }
    const window = this.cfg.healthWindowMs ?? DEVICE_DEFAULTS.healthWindowMs;
    // Stay in the trial for the window: a crash now is a failed attempt (the journal says "testing").
    if (window > 0) await (this.cfg.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms))))(window);
    return { healthy: true };
  }

  /** Healthy: keep exactly the current and the previous version. */
  private async commit(target: string, previous: string): Promise<void> {
    await this.storage.prune([target, previous]);
    await this.storage.clearJournal();
  }

  /** Back to the previous version: a pointer switch, never arithmetic; the journal removed unless `keepJournal`. */
  private async rollBack(to: string, from: string, keepJournal = false): Promise<void> {
    await this.storage.switchTo(to, from);
    if (!keepJournal) await this.storage.clearJournal();
    if (this.cfg.onSwitchCmd) await runCommand(this.cfg.onSwitchCmd, this.env(this.storage.currentPath, to, from, true), this.cfg.onSwitchTimeoutMs);
  }

  /** A recovery's switch back is recorded (its status saved): the journal goes. */
  async closeJournal(): Promise<void> {
    await this.storage.clearJournal();
  }

  /**
   * On start: finish or undo what a stop interrupted. `staging`: discard the
   * half-built files. `switching`/`testing`: the attempt in progress failed;
   * start the next one (switch again, journal its number first), or, after
   * the last, switch back (the journal kept until `closeJournal`). Undefined
   * when nothing was in progress.
   * docs/protocol.md §10, last paragraph ("On start the journal decides").
   */
  async recover(): Promise<Recovery | undefined> {
    const j = await this.storage.journal();
    const gone = await this.storage.removeStaging();
    if (!j) return undefined;
    if (j.phase === 'staging') {
      await this.storage.clearJournal();
      this.log.warn('an interrupted build of a new version was discarded', { target: j.target, removed: gone });
      return { action: 'discarded-staging', journal: j };
    }
    const attempt = attemptOf(j);
    const max = this.maxAttempts;
    const held = await this.storage.hasVersion(j.target);
    if (held && (this.switchIsCommit || attempt < max)) {
      const next = { ...j, attempt: attempt + 1, since: Date.now() };
      this.log.warn('the agent stopped while switching to or testing a new version; trying again', { target: j.target, attempt: next.attempt, of: this.switchIsCommit ? null : max });
      await this.switchTo(j.target, j.previous, j.rollback, next.attempt);
      return { action: 'resume-trial', journal: next };
    }
    await this.rollBack(j.previous, j.target, true);
    const why = held ? `stopped during ${attempt === 1 ? 'the only attempt' : `each of ${attempt} attempts`} of the trial` : 'the version under trial is no longer on disk';
    this.log.warn('the agent stopped while switching to or testing a new version; switched back', { target: j.target, previous: j.previous, why });
    return { action: 'rolled-back', journal: j, message: why };
  }

  private env(file: string, digest: string, previous: string, rollback: boolean): Record<string, string> {
    return {
      FLEET_MODEL_PATH: file,
      FLEET_MODEL_DIGEST: digest,
      FLEET_PREVIOUS_DIGEST: previous,
      FLEET_DEVICE_ID: this.cfg.deviceId,
      FLEET_ROLLBACK: rollback ? '1' : '0',
    };
  }
}
