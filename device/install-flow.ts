import { ignoreBecause } from '../platform/errors.ts';
import type { Logger } from '../util/log.ts';
import type { AgentPorts } from './agent-config.ts';
import { DEVICE_DEFAULTS, type ResolvedAgentConfig } from './defaults.ts';
import { Installer, type Recovery } from './installer.ts';
import { attemptOf, type Journal } from './journal.ts';
import type { DeviceEvent } from './machine.ts';
import { DEVICE_REASONS, toReason } from './reasons.ts';
import type { StatusFields } from './status-report.ts';
import type { ActiveRelease, AgentMemory, DeviceStorage } from './storage.ts';

/** What the install flow needs of the agent: its transition table, its memory and the model it runs. */
export interface InstallHost {
  /** Whether the agent is in `verifying` (an install after a download) rather than switching back. */
  verifying(): boolean;
  /** The digest the device runs; the flow moves it at the switch and at the switch back. */
  running(): string;
  setRunning(digest: string): void;
  memory(): AgentMemory;
  /** The seq of the last status: a resumed trial whose release the memory no longer holds reports it. */
  lastSeq(): number | null;
  /** Take one row of the table (device/machine.ts) and publish the status. */
  transition(event: DeviceEvent, fields?: Partial<StatusFields>): Promise<void>;
  /** toReason, with a bug's stack logged. */
  reasonOf(e: unknown): { code: string; message: string };
  /** The install ended healthy: the retry back-off starts over. */
  succeeded(): void;
}

/**
 * From a complete download to the verdict (docs/safety.md): verify the chunks and the release's
 * digests, build and validate the staged model, switch to it (journaled), run the trial of up to
 * `--max-attempts` attempts, then ack or switch back. Each step is a row of the agent's table.
 */
export class InstallFlow {
  private readonly installer: Installer;
  private readonly storage: DeviceStorage;
  private readonly log: Logger;

  constructor(
    cfg: ResolvedAgentConfig,
    io: Pick<AgentPorts, 'storage' | 'health' | 'log'>,
    private readonly host: InstallHost,
  ) {
    this.storage = io.storage;
    this.log = io.log;
    this.installer = new Installer(
      io.storage,
      {
        deviceId: cfg.deviceId,
        validateCmd: cfg.validateCmd,
        validateTimeoutMs: cfg.validateTimeoutMs,
        healthCmd: cfg.healthCmd,
        healthTimeoutMs: cfg.healthTimeoutMs,
        healthWindowMs: cfg.healthWindowMs,
        maxAttempts: cfg.maxAttempts,
        onSwitchCmd: cfg.onSwitchCmd,
        onSwitchTimeoutMs: DEVICE_DEFAULTS.onSwitchTimeoutMs,
        groupKey: cfg.groupKey,
        validator: cfg.validator,
      },
      io.health,
      io.log,
    );
  }

  get maxAttempts(): number {
    return this.installer.maxAttempts;
  }

  /** At start: finish or undo what a stop interrupted (Installer.recover). */
  recover(): Promise<Recovery | undefined> {
    return this.installer.recover();
  }

  /**
   * After a start switched back (Installer.recover, `rolled-back`): the verdict is recorded, then
   * the journal removed (a stop between the two switches back again, counting as before).
   */
  async crashRollback(r: Extract<Recovery, { action: 'rolled-back' }>): Promise<void> {
    const j = r.journal;
    this.host.memory().active = null;
    await this.host.transition('crash-rollback', {
      target: j.target,
      reason: 'crashed-while-testing',
      attempt: attemptOf(j),
      maxAttempts: this.maxAttempts,
      message: `${DEVICE_REASONS['crashed-while-testing']} (${r.message}: was testing ${j.target.slice(0, 16)}…, back on ${j.previous.slice(0, 16)}…)`,
    });
    await this.installer.closeJournal();
  }

  /** Verify, build, validate, switch, then the trial. */
  async install(a: ActiveRelease): Promise<void> {
    const h = this.host;
    const previous = h.running();
    let verified;
    try {
      verified = await this.installer.verify(a.steps);
    } catch (e) {
      return this.endInstall('verify-failed', e, a);
    }
    if (h.verifying()) await h.transition('verify-passed');
    try {
      await this.installer.stage(previous, verified, a.target, a.rollback);
    } catch (e) {
      await this.storage.removeStaging().catch(ignoreBecause('the staged build is discarded on the next start (installer.recover)', this.log));
      await this.storage.clearJournal().catch(ignoreBecause('a journal left behind is recovered on the next start', this.log));
      return this.endInstall(toReason(e).code === 'storage-error' ? 'storage-failed' : 'apply-failed', e, a, { validation: this.installer.lastValidation });
    }
    await this.installer.switchTo(a.target, previous, a.rollback, 1);
    h.setRunning(a.target);
    await h.transition('apply-done', { ...this.attemptFields(1), validation: this.installer.lastValidation });
    await this.finishTrial(a, previous, 1);
  }

  /**
   * Started after a stop during a trial: the installer has switched to the
   * target again and journaled the attempt; run it as if it had never stopped.
   */
  async resumeTrial(j: Journal): Promise<void> {
    const h = this.host;
    const active = h.memory().active;
    const a = active?.target === j.target ? active : null;
    const attempt = attemptOf(j);
    const message = this.installer.switchIsCommit
      ? `the switch to ${j.target.slice(0, 16)}… was interrupted; finished after a restart`
      : `attempt ${attempt} of ${this.installer.maxAttempts}: the agent stopped during attempt ${attempt - 1}`;
    await h.transition('trial-resumed', { target: j.target, seq: a?.seq ?? h.lastSeq(), rollback: j.rollback, reason: null, message, ...this.attemptFields(attempt) });
    await this.finishTrial(a ?? { releaseHash: '', seq: h.lastSeq() ?? 0, target: j.target, steps: [], rollback: j.rollback }, j.previous, attempt);
  }

  /**
   * At start, with no journal, while the status last recorded says `testing`: the trial ended
   * just before the stop. The journal is removed right after the commit or the switch back and
   * the verdict recorded after that, so a stop between the two leaves exactly this. The model
   * running tells which: the target, committed (`ok`); another, switched back (`rolled_back`).
   * Taken as anything else, the remembered `testing` stayed the retained status for good (the
   * download resumed from `testing` is no row of the table).
   */
  async settleTrial(last: Pick<StatusFields, 'target' | 'attempt' | 'maxAttempts'>): Promise<void> {
    const h = this.host;
    const a = h.memory().active;
    h.memory().active = null;
    const attempt = last.attempt === null ? {} : { attempt: last.attempt, maxAttempts: last.maxAttempts };
    if (last.target !== null && h.running() === last.target) {
      if (a?.target === last.target) await this.cleanDownloads(a);
      h.succeeded();
      await h.transition('health-passed', { reason: null, message: null, ...attempt });
      return;
    }
    const counted = last.attempt === null ? '' : ` (attempt ${last.attempt} of ${last.maxAttempts ?? this.installer.maxAttempts})`;
    const message = `the trial of ${last.target?.slice(0, 16) ?? 'the new model'}… ended back on ${h.running().slice(0, 16)}…, and the agent stopped before it recorded why${counted}; check the model with the health command by hand before publishing it again`;
    await h.transition('crash-rollback', { reason: 'crashed-while-testing', message, ...attempt });
  }

  /** The status fields of attempt k of the trial (none when the switch is the commit). */
  private attemptFields(attempt: number): Partial<StatusFields> {
    return this.installer.switchIsCommit ? {} : { attempt, maxAttempts: this.installer.maxAttempts };
  }

  /** The trial from attempt `first`, then the ack or the switch back. */
  private async finishTrial(a: ActiveRelease, previous: string, first: number): Promise<void> {
    const h = this.host;
    const r = await this.installer.trial(a.target, previous, a.rollback, first, (k, why) =>
      h.transition('trial-retry', { message: `attempt ${k} of ${this.installer.maxAttempts}: attempt ${k - 1} failed (${why})`, ...this.attemptFields(k) }),
    );
    h.memory().active = null;
    if (r.healthy) {
      await this.cleanDownloads(a);
      h.succeeded();
      const note = a.rollback ? 'rolled back by the operator' : r.attempt > 1 && !this.installer.switchIsCommit ? `healthy on attempt ${r.attempt} of ${this.installer.maxAttempts}` : null;
      await h.transition('health-passed', { reason: null, message: note, ...this.attemptFields(r.attempt) });
      return;
    }
    h.setRunning(previous);
    await h.transition('health-failed', { reason: r.reason, message: r.message, ...this.attemptFields(r.attempt) });
  }

  private async cleanDownloads(a: ActiveRelease): Promise<void> {
    for (const s of a.steps) await this.storage.removeDownload(s.updateId);
  }

  private async endInstall(event: DeviceEvent, e: unknown, a: ActiveRelease, more: Partial<StatusFields> = {}): Promise<void> {
    const { code, message } = this.host.reasonOf(e);
    this.host.memory().active = null;
    await this.cleanDownloads(a);
    await this.host.transition(event, { reason: code, message, ...more });
  }
}
