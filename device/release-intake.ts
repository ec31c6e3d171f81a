import { errorFields, ignoreBecause } from '../platform/errors.ts';
import { sha256Hex } from '../protocol/chunks.ts';
import type { ReleaseBody } from '../protocol/release.ts';
import { capsOf, type AgentPorts } from './agent-config.ts';
import type { ResolvedAgentConfig } from './defaults.ts';
import type { DeviceEvent } from './machine.ts';
import type { toReason } from './reasons.ts';
import { decideRelease } from './release-decision.ts';
import type { StatusFields } from './status-report.ts';
import type { ActiveRelease, AgentMemory } from './storage.ts';
import { TrustKeeper } from './trust-keeper.ts';

/** What taking a release needs of the agent: its memory, its table, and the fetch and install it drives. */
export interface IntakeHost {
  memory(): AgentMemory;
  /** The digest the device runs. */
  running(): string;
  /** Whether a download is under way (a withdrawn release stops it). */
  downloading(): boolean;
  stopped(): boolean;
  /** Take one row of the table (device/machine.ts) and publish the status. */
  transition(event: DeviceEvent, fields?: Partial<StatusFields>): Promise<void>;
  /** toReason, with a bug's stack logged. */
  reasonOf(e: unknown): ReturnType<typeof toReason>;
  /** Queue a step behind the agent's work. */
  enqueue(fn: () => Promise<void>): void;
  /** End the fetch under way, if any. */
  endFetch(): Promise<void>;
  /** Fetch an accepted release (its status `downloading`). */
  beginFetch(a: ActiveRelease): Promise<void>;
  /** Install a version held on disk (an operator rollback): no download. */
  install(a: ActiveRelease): Promise<void>;
  /** The status reports on no fetch from now on (a release that needs none). */
  forgetShown(): void;
}

/**
 * Which releases and trust files the agent takes (docs/protocol.md §5: §5.5 what a device checks, §5.4 the trust file): each release from
 * the group's retained topic is checked once (decideRelease) and then refused, found current,
 * switched back to, or fetched; a rotated trust file is stored and the release asked for again.
 */
export class ReleaseIntake {
  /** The device's trust file, and its rotations. */
  readonly trust: TrustKeeper;
  private resubscribeTimer: unknown;

  constructor(
    private readonly cfg: ResolvedAgentConfig,
    private readonly io: AgentPorts,
    private readonly host: IntakeHost,
  ) {
    this.trust = new TrustKeeper(cfg.trust, io.storage, io.log);
  }

  /** No re-subscribe is tried any more. */
  stop(): void {
    if (this.resubscribeTimer) this.io.clock.clearTimeout(this.resubscribeTimer);
    this.resubscribeTimer = undefined;
  }

  /**
   * A rotated trust file: once taken, releases refused under the old keys
   * are forgotten and the group's retained release is asked for again.
   */
  async onTrust(bytes: Uint8Array): Promise<void> {
    const r = await this.trust.offer(bytes);
    if (r.kind !== 'rotated') return;
    const m = this.host.memory();
    if (r.newRolloutRole) m.highestSeq = -1;
    m.refused = [];
    await this.io.storage.saveMemory(m);
    await this.resubscribeRelease();
  }

  /**
   * Subscribe to the group's release topic anew, so the broker sends its retained
   * release again (MQTT 3.1.1 §3.3.1.3, §3.8.4). Unsubscribing first is only so a
   * broker that skips re-sending on a repeated subscription still sends it: its
   * failure changes nothing. A failed subscribe would leave the device following
   * no release at all, so it is logged and tried again after the retry delay.
   */
  private async resubscribeRelease(): Promise<void> {
    this.stop();
    if (this.host.stopped()) return;
    const topic = this.io.topics.release(this.cfg.group, this.cfg.model);
    await this.io.transport.unsubscribe(topic).catch(ignoreBecause('the subscribe that follows replaces the subscription anyway', this.io.log));
    try {
      await this.io.transport.subscribe(topic, 1);
    } catch (e) {
      const inMs = this.cfg.retryMs;
      this.io.log.warn('re-subscribing to the release after a trust rotation failed; trying again', { inMs, ...errorFields(e) });
      this.resubscribeTimer = this.io.clock.setTimeout(() => this.host.enqueue(() => this.resubscribeRelease()), inMs);
    }
  }

  async onRelease(bytes: Uint8Array): Promise<void> {
    const h = this.host;
    if (bytes.byteLength === 0) {
      if (h.downloading()) {
        await h.endFetch();
        h.memory().active = null;
        await h.transition('release-withdrawn', { reason: null, message: 'release withdrawn' });
      }
      return;
    }
    const hash = sha256Hex(bytes);
    const m = h.memory();
    if (m.refused.includes(hash) || m.handled === hash || m.active?.releaseHash === hash) {
      this.io.log.info('release seen before; not processed again', { release: hash.slice(0, 16), refused: m.refused.includes(hash) });
      return;
    }
    const d = await decideRelease(bytes, hash, {
      model: this.cfg.model,
      group: this.cfg.group,
      trust: this.trust.current,
      running: h.running(),
      now: Math.floor(this.io.clock.now() / 1000),
      skewSeconds: this.cfg.skewSeconds,
      caps: capsOf(this.cfg),
      memory: m,
      holds: (digest) => this.io.storage.hasVersion(digest),
    });
    if (d.kind === 'refuse') return this.refuse(hash, d.error, d.body);
    const { body } = d;
    await h.endFetch();
    this.accept(hash, body, d.kind === 'current' ? null : d.active);
    await this.io.storage.saveMemory(m);
    const fields = { target: body.target, seq: body.seq, updateId: null, reason: null, message: null, rollback: body.rollback };
    if (d.kind === 'current') {
      h.forgetShown();
      await h.transition('release-current', fields);
    } else if (d.kind === 'switch-back') {
      // A version this device still holds (an operator rollback): switch back, no arithmetic.
      h.forgetShown();
      await h.transition('switch-back', fields);
      await h.install(d.active);
    } else {
      await h.beginFetch(d.active);
    }
  }

  private accept(hash: string, body: ReleaseBody, active: ActiveRelease | null): void {
    const m = this.host.memory();
    m.highestSeq = body.seq;
    m.clockFloor = Math.max(m.clockFloor, body.issued);
    m.handled = hash;
    m.active = active;
  }

  private async refuse(hash: string, e: unknown, body?: ReleaseBody): Promise<void> {
    const { code, message } = this.host.reasonOf(e);
    this.io.log.warn('release refused', { reason: code, message });
    this.host.memory().refused.push(hash);
    await this.host.endFetch();
    // A signed release names what it asked for; a forged or unreadable one names nothing.
    const about = body ? { target: body.target, seq: body.seq, rollback: body.rollback } : { target: null, seq: null, rollback: false };
    await this.host.transition('release-refused', { ...about, updateId: null, reason: code, message });
  }
}
