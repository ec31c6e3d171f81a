import { resolveRolloutConfig, type ResolvedRolloutConfig } from './defaults.ts';
import { UsageError } from '../platform/errors.ts';
import os from 'node:os';
import { verifyRelease, type ReleaseBody, type TrustFile } from '../protocol/release.ts';
import { trustOfOptions } from '../publisher/publish.ts';
import { subscribeGranted } from '../transport/subscribe-granted.ts';
import { VERSION } from '../util/version.ts';
import { publishWave, rollbackReached, type ReleaseContext } from './actions.ts';
import { describeThreshold, evaluateWave, recordRejection } from './evaluate.ts';
import { Inventory } from './inventory.ts';
import { canTransition, isTerminal, nextRolloutState, type RolloutMachineEvent } from './machine.ts';
import { inWindow, planDigest } from './plan.ts';
import type { ControllerOptions, ControllerPorts } from './controller-options.ts';
import { encodeRolloutStatus, newRolloutStatus, parseControl, parseRolloutStatus, rolloutControlTopic, type ControlMessage, type RolloutEvent, type RolloutEventType, type RolloutStatus } from './status.ts';

export { HOOK_EVENTS, type ControllerOptions, type ControllerPorts } from './controller-options.ts';

const short = (d: string): string => d.slice(0, 12);
const pct = (x: number): string => `${Math.round(x * 100)} %`;

/**
 * Runs one staged rollout: wave by wave, publish the group's release, count
 * acks against the thresholds, soak, promote; halt and roll back every group
 * reached when failures cross a threshold. All work runs on one queue; the
 * retained status is its memory, so a new controller continues where a killed
 * one stopped.
 */
export class RolloutController {
  private readonly inv: Inventory;
  private readonly releases = new Map<string, ReleaseBody>();
  private readonly trust: TrustFile;
  private readonly digest: string;
  private readonly ctx: ReleaseContext;
  /** The rollout's status: a new rollout's at construction; start() rebuilds it (from the retained status, if the broker holds one). */
  private s: RolloutStatus;
  private retained: RolloutStatus | null = null;
  private work: Promise<void> = Promise.resolve();
  private scheduled = false;
  private ready = false;
  private stopped = false;
  private timer: unknown;
  private lastPublished = 0;
  private retryAt = 0;
  private attempts = 0;
  private offs: Array<() => void> = [];
  /** onEvent calls, one at a time in event order (a hook command sees `device-rolled-back` before `halted`). */
  private hooks: Promise<void> = Promise.resolve();
  private readonly doneWaiters: Array<(s: RolloutStatus) => void> = [];

  /** The one resolved config (the options over rollout/defaults.ts's table). */
  private readonly o: ResolvedRolloutConfig;

  constructor(
    o: ControllerOptions,
    private readonly io: ControllerPorts,
  ) {
    this.o = resolveRolloutConfig(o);
    this.inv = new Inventory(io.topics);
    this.trust = trustOfOptions(o);
    this.digest = planDigest(o.plan);
    this.ctx = { ...this.o, ...io, trust: this.trust };
    this.s = newRolloutStatus(this.o.plan, this.digest, this.o.payloads.target, new Date(io.clock.now()).toISOString(), this.name());
  }

  get id(): string {
    return this.o.plan.id;
  }

  /** The current status (a copy). */
  status(): RolloutStatus {
    return structuredClone(this.s);
  }

  /** Resolves once the rollout reaches halted, completed or aborted. */
  done(): Promise<RolloutStatus> {
    if (isTerminal(this.s.state)) return Promise.resolve(this.status());
    return new Promise((r) => this.doneWaiters.push(r));
  }

  /** Subscribes, collects the retained topics, rebuilds (or starts) the rollout and begins. */
  async start(): Promise<RolloutStatus> {
    const { transport: t, topics } = this.io;
    const statusTopic = topics.rolloutStatus(this.id);
    const releaseTopics = this.o.plan.waves.map((w) => topics.release(w.group, this.o.plan.model));
    this.offs.push(
      t.onMessage((topic, payload, retained) => {
        if (this.stopped) return;
        if (topic === statusTopic) {
          if (!this.ready) this.retained = parseRolloutStatus(payload);
        } else if (releaseTopics.includes(topic)) this.onRelease(topic, payload);
        else if (topic === rolloutControlTopic(topics, this.id)) {
          const c = parseControl(payload);
          // A retained command older than the rollout is a leftover (of an earlier rollout with this id).
          if (c && !(retained && Date.parse(c.time) < Date.parse(this.s.started))) this.enqueue(() => this.onControl(c));
        }
      }),
    );
    this.inv.onChange((device, rec, what, retained) => this.onDevice(device, rec.status?.state, what, retained));
    // Nothing goes on without the retained status and the statuses: a broker that dies before it
    // grants these is waited for, not taken for an empty one (which would start the rollout afresh).
    const granted = { stopped: () => this.stopped };
    await subscribeGranted(t, [statusTopic, ...releaseTopics], 1, granted);
    await this.inv.follow(t, granted);
    await new Promise((r) => setTimeout(r, this.o.settleMs));
    this.rebuild();
    this.ready = true;
    if (isTerminal(this.s.state)) return this.status(); // an ended rollout is left as it is
    await this.publishStatus();
    await subscribeGranted(t, rolloutControlTopic(topics, this.id), 1, granted).catch((e: unknown) => {
      if (this.stopped) throw e;
      // A broker with ACLs that do not know the control topic yet: the rollout runs, without pause/resume/abort.
      this.io.log.warn('control commands unavailable: subscription refused', { error: String(e) });
    });
    this.tick();
    this.schedule();
    return this.status();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) this.io.clock.clearTimeout(this.timer);
    for (const off of this.offs.splice(0)) off();
    await this.work;
    await this.hooks;
    await this.inv.stop(this.io.transport);
  }

  // --- start and restart ----------------------------------------------------

  private rebuild(): void {
    const p = this.o.plan;
    const now = new Date(this.io.clock.now()).toISOString();
    const r = this.retained;
    if (r) {
      if (r.plan.digest !== this.digest || r.plan.target !== this.o.payloads.target) {
        throw new UsageError(
          'rollout-exists',
          `rollout ${p.id} already exists with another plan (plan ${short(r.plan.digest)}, target ${short(r.plan.target)}; this one ${short(this.digest)}, ${short(this.o.payloads.target)}); use a new id`,
        );
      }
      this.s = { ...r, controller: this.name() };
      if (isTerminal(r.state)) return;
      this.emit('resumed-controller', `controller started; rebuilt from the retained status: ${r.state}, wave ${r.wave + 1}`);
      if (r.state === 'publishing') this.move('interrupted', 'publishing', 'the previous controller stopped while publishing; checking the release');
      return;
    }
    this.s = newRolloutStatus(p, this.digest, this.o.payloads.target, now, this.name());
    this.emit('started', `${p.waves.length} wave(s) (${p.waves.map((w) => w.group).join(', ')}), model ${p.model} -> ${short(this.o.payloads.target)}`);
  }

  private name(): string {
    return `fleet/${VERSION} ${os.hostname()} pid ${process.pid}`;
  }

  // --- inputs ---------------------------------------------------------------

  private onRelease(topic: string, payload: Uint8Array): void {
    const p = this.io.topics.parse(topic);
    if (p?.kind !== 'release') return;
    if (payload.byteLength === 0) this.releases.delete(p.group);
    else {
      try {
        this.releases.set(p.group, verifyRelease(payload, this.trust));
      } catch (e) {
        this.io.log.warn('a release on the broker does not verify; ignored', { group: p.group, error: (e as Error).message });
      }
    }
    if (this.ready) this.schedule();
  }

  private onDevice(device: string, state: string | undefined, what: string, retained: boolean): void {
    if (!this.ready) return;
    const st = this.inv.devices.get(device)?.status;
    if (what === 'status' && state === 'rejected' && !retained && st && ['pending', 'waiting', 'soaking', 'paused'].includes(this.s.state)) {
      for (const k of recordRejection(this.s.waves, st)) this.emit('device-failed', `${device} rejected the release (${st.reason ?? 'no reason given'})`, k, device);
    }
    this.schedule();
  }

  private async onControl(c: ControlMessage): Promise<void> {
    if (c.id === this.s.lastCommand || isTerminal(this.s.state)) return;
    this.s.lastCommand = c.id;
    const why = c.reason ? `: ${c.reason}` : '';
    const ev: RolloutMachineEvent = c.command;
    if (!canTransition(this.s.state, ev)) {
      this.io.log.warn('control command ignored', { command: c.command, state: this.s.state });
      this.s.reason = `${c.command} ignored: not possible while ${this.s.state}`;
      await this.publishStatus();
      return;
    }
    const type = ev === 'pause' ? 'paused' : ev === 'resume' ? 'resumed' : 'aborted';
    await this.transition(ev, type, `${type} by an operator${why}`);
    this.schedule();
  }

  // --- the loop -------------------------------------------------------------

  private enqueue(fn: () => Promise<void>): void {
    this.work = this.work.then(async () => {
      if (this.stopped) return;
      try {
        await fn();
      } catch (e) {
        this.io.log.error('rollout step failed', { error: (e as Error).stack ?? String(e) });
      }
    });
  }

  private schedule(): void {
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    this.enqueue(async () => {
      this.scheduled = false;
      await this.step();
    });
  }

  private tick(): void {
    if (this.stopped || isTerminal(this.s.state)) return;
    this.timer = this.io.clock.setTimeout(() => {
      this.schedule();
      this.tick();
    }, this.o.tickMs);
  }

  private async step(): Promise<void> {
    for (let i = 0; i < 16 && !isTerminal(this.s.state); i++) {
      const before = `${this.s.state}|${this.s.wave}|${this.s.updated}`;
      await this.stepOnce();
      if (`${this.s.state}|${this.s.wave}|${this.s.updated}` === before) break;
    }
    if (this.io.clock.now() - this.lastPublished >= this.o.heartbeatMs) await this.publishStatus();
  }

  private async stepOnce(): Promise<void> {
    const s = this.s;
    if (s.state === 'rolling_back') return this.rollBack();
    if (s.state === 'publishing' || isTerminal(s.state)) return;
    const now = this.io.clock.now();
    const k = s.wave;
    const plan = this.o.plan.waves[k];
    const rec = s.waves[k];
    if (s.state === 'waiting' && rec.publishedAt && !rec.timedOut && now >= Date.parse(rec.publishedAt) + plan.timeoutSeconds * 1000) {
      rec.timedOut = true;
      this.emit('timeout', `wave ${k + 1} (${rec.group}) reached its timeout of ${plan.timeoutSeconds} s`, k);
    }
    // Count every wave reached so far; failures in any of them halt the rollout.
    let changed = false;
    for (const [j, w] of s.waves.entries()) {
      if (!w.release || !w.devices) continue;
      const ev = evaluateWave(this.o.plan.waves[j], w.devices, w.release, (d) => this.inv.devices.get(d), w.failures, w.timedOut);
      for (const f of ev.failures) {
        if (w.failures.some((x) => x.device === f.device && x.state === f.state)) continue;
        if (f.state === 'rolled_back') this.emit('device-rolled-back', `${f.device} rolled back (${f.reason ?? 'no reason given'})`, j, f.device);
        else if (f.state === 'rejected' || f.state === 'failed') this.emit('device-failed', `${f.device} ${f.state} (${f.reason ?? 'no reason given'})`, j, f.device);
      }
      const blockChanged = ev.blocking.join(',') !== w.blocking.join(',');
      changed ||= JSON.stringify(ev.counts) !== JSON.stringify(w.counts) || blockChanged;
      w.counts = ev.counts;
      w.failures = ev.failures;
      w.blocking = ev.blocking;
      if (ev.failureCrossed) {
        const list = ev.failures.map((f) => `${f.device} ${f.state}${f.reason ? ` (${f.reason})` : ''}`).join(', ');
        return this.transition(
          'failure-threshold',
          'failure-threshold',
          `wave ${j + 1} (${w.group}): ${ev.counts.failed} of ${ev.counts.total} failed, threshold ${describeThreshold(this.o.plan.waves[j].failureThreshold)}: ${list}`,
          j,
        );
      }
      if (j !== k) continue;
      if (s.state === 'waiting') {
        if (ev.success) {
          w.thresholdAt = new Date(now).toISOString();
          return this.transition('threshold-reached', 'threshold-reached', `wave ${k + 1} (${w.group}): ${ev.counts.ok} of ${ev.counts.total} ok (need ${pct(plan.successThreshold)}); soaking ${plan.soakSeconds} s`);
        }
        if (w.timedOut && ev.blocking.length > 0) {
          if (blockChanged) {
            s.reason = `wave ${k + 1} (${w.group}) cannot complete: offline device(s) ${ev.blocking.join(', ')} block it (offline: block); ${ev.counts.ok} of ${ev.counts.total} ok`;
            this.emit('blocked', s.reason, k);
          }
        } else if (w.timedOut) {
          return this.transition('timed-out', 'timeout', `wave ${k + 1} (${w.group}) timed out after ${plan.timeoutSeconds} s: ${ev.counts.ok} of ${ev.counts.total} ok, need ${pct(plan.successThreshold)}`);
        }
      } else if (s.state === 'soaking') {
        if (!ev.success) {
          w.thresholdAt = null;
          return this.transition('threshold-lost', 'threshold-lost', `wave ${k + 1} (${w.group}): success fell to ${ev.counts.ok} of ${ev.counts.total}`);
        }
        if (w.thresholdAt && now >= Date.parse(w.thresholdAt) + plan.soakSeconds * 1000) {
          if (k === s.waves.length - 1) return this.transition('complete', 'completed', `all ${s.waves.length} wave(s) done; wave ${k + 1} (${w.group}) soaked ${plan.soakSeconds} s`);
          s.wave = k + 1;
          return this.transition('promote', 'promoted', `wave ${k + 1} (${w.group}) soaked ${plan.soakSeconds} s with ${ev.counts.ok} of ${ev.counts.total} ok; next: wave ${k + 2} (${s.waves[k + 1].group})`);
        }
      }
    }
    if (s.state === 'pending' && now >= this.retryAt) await this.startWave(k, now);
    else if (changed) await this.publishStatus();
  }

  /** pending: adopt the group's release when it already names the target, else publish it (inside the window). */
  private async startWave(k: number, now: number): Promise<void> {
    const plan = this.o.plan.waves[k];
    const rec = this.s.waves[k];
    const target = this.o.payloads.target;
    const cur = this.releases.get(plan.group);
    if (cur && cur.target === target && !cur.rollback) {
      rec.devices ??= this.inv.inGroup(plan.group, this.o.plan.model);
      rec.publishedAt ??= new Date(now).toISOString();
      const again = rec.release?.seq === cur.seq ? 'published before' : 'already on the broker';
      rec.release = { seq: cur.seq, target };
      return this.transition('adopt', 'adopted', `wave ${k + 1} (${plan.group}): release seq ${cur.seq} ${again}; not published again`, k);
    }
    if (!inWindow(plan.window, now)) {
      const reason = `wave ${k + 1} (${plan.group}) waits for its window ${plan.window} (local time)`;
      if (this.s.reason !== reason) {
        this.s.reason = reason;
        this.emit('outside-window', reason, k);
        await this.publishStatus();
      }
      return;
    }
    const devices = this.inv.inGroup(plan.group, this.o.plan.model);
    if (devices.length === 0) {
      return this.transition('pause', 'no-devices', `wave ${k + 1}: no device reports group ${plan.group} and model ${this.o.plan.model}; resume once they do`, k);
    }
    Object.assign(rec, { devices, release: null, publishedAt: null, thresholdAt: null, timedOut: false, failures: [], blocking: [] });
    await this.transition('publish', 'publishing', `wave ${k + 1} (${plan.group}): publishing to ${devices.length} device(s)`, k);
    try {
      const r = await publishWave(this.ctx, plan.group);
      rec.release = { seq: r.release.seq, target: r.release.target };
      rec.publishedAt = new Date(this.io.clock.now()).toISOString();
      this.attempts = 0;
      await this.transition(
        'published',
        'published',
        `wave ${k + 1} (${plan.group}): release seq ${r.release.seq} published (${r.alreadyStored ? 'payloads already on the update server' : `${r.uploadedChunks} chunk(s) uploaded`})`,
        k,
      );
    } catch (e) {
      const delay = this.backoff();
      await this.transition('publish-failed', 'publish-failed', `wave ${k + 1} (${plan.group}): publishing failed: ${(e as Error).message}; trying again in ${Math.round(delay / 1000)} s`, k);
    }
  }

  private backoff(): number {
    const delay = Math.min(300_000, this.o.retryMs * 2 ** Math.min(this.attempts++, 10));
    this.retryAt = this.io.clock.now() + delay;
    return delay;
  }

  /** rolling_back: every group reached is rolled back (retried with backoff), then halted with the cause. */
  private async rollBack(): Promise<void> {
    if (this.io.clock.now() < this.retryAt) return;
    const { problems, retry } = await rollbackReached(this.ctx, this.s.waves, this.releases, async (k, r) => {
      this.emit('rollback-published', `${this.s.waves[k].group} rolled back to ${short(r.to)} (release seq ${r.release.seq})`, k);
      await this.publishStatus();
    });
    const cause = this.s.events.filter((e) => e.type === 'failure-threshold' || e.type === 'timeout').at(-1)?.reason ?? this.s.reason ?? '';
    if (retry && this.attempts < this.o.rollbackAttempts) {
      const delay = this.backoff();
      return this.transition('rollback-failed', 'rollback-failed', `${problems.join('; ')}; trying again in ${Math.round(delay / 1000)} s`);
    }
    const rolled = this.s.waves.filter((w) => w.rolledBack).map((w) => w.group);
    const tail = problems.length ? `; ${problems.join('; ')} (use fleet rollback by hand)` : '';
    await this.transition('rolled-back', 'halted', `halted: ${cause}; rolled back: ${rolled.join(', ') || 'none'}${tail}`);
  }

  // --- output ---------------------------------------------------------------

  /** Takes one row of the table and records why. */
  private move(ev: RolloutMachineEvent, type: RolloutEventType, reason: string, wave: number | null = this.s.wave): void {
    const from = this.s.state;
    const to = nextRolloutState(from, ev);
    this.io.log.info('rollout transition', { rollout: this.id, from, event: ev, to, reason });
    this.s.state = to;
    this.s.reason = reason;
    this.s.pausedFrom = to === 'paused' ? from : null;
    if (to === 'rolling_back' && from !== 'rolling_back') {
      this.attempts = 0;
      this.retryAt = 0;
    }
    this.emit(type, reason, wave);
  }

  private async transition(ev: RolloutMachineEvent, type: RolloutEventType, reason: string, wave: number | null = this.s.wave): Promise<void> {
    this.move(ev, type, reason, wave);
    await this.publishStatus();
    if (isTerminal(this.s.state)) {
      if (this.timer !== undefined) this.io.clock.clearTimeout(this.timer);
      for (const w of this.doneWaiters.splice(0)) w(this.status());
    }
  }

  private emit(type: RolloutEventType, reason: string, wave: number | null = this.s.wave, device: string | null = null): void {
    const e: RolloutEvent = {
      type,
      time: new Date(this.io.clock.now()).toISOString(),
      rollout: this.id,
      wave,
      group: wave === null ? null : (this.o.plan.waves[wave]?.group ?? null),
      device,
      reason,
    };
    this.s.lastEvent = e;
    this.s.events = [...this.s.events, e].slice(-20);
    this.s.updated = e.time;
    this.io.log.info('rollout event', { ...e });
    const hook = this.io.onEvent;
    if (hook) {
      const snapshot = this.status();
      this.hooks = this.hooks.then(() => hook(e, snapshot)).catch((err: unknown) => this.io.log.warn('on-event hook failed', { error: String(err) }));
    }
  }

  private async publishStatus(): Promise<void> {
    this.lastPublished = this.io.clock.now();
    this.s.updated = new Date(this.lastPublished).toISOString();
    await this.io.transport.publish(this.io.topics.rolloutStatus(this.id), encodeRolloutStatus(this.s), { qos: 1, retain: true }).catch((e: unknown) => {
      this.io.log.warn('rollout status not published', { error: String(e) });
    });
  }
}
