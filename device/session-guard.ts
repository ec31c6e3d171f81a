import { DEVICE_DEFAULTS } from './defaults.ts';
import { ignoreBecause } from '../platform/errors.ts';
import { randomBytes } from 'node:crypto';
import { parseStatus } from '../protocol/status.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import type { Clock } from '../platform/clock.ts';

/** Who this agent process is, as its statuses say (`instance`, `started`). */
export interface AgentIdentity {
  instance: string;
  /** ISO time this agent process started. */
  started: string;
}

export function newIdentity(now: number): AgentIdentity {
  return { instance: randomBytes(8).toString('hex'), started: new Date(now).toISOString() };
}

export interface SessionGuardOptions {
  deviceId: string;
  transport: Transport;
  topics: Topics;
  clock: Clock;
  log: Logger;
  identity: AgentIdentity;
  /** Takeovers seen before the younger agent gives up (default 3). */
  limit?: number;
  /** How long to wait for the retained status after subscribing (default 3 s). */
  waitMs?: number;
  /** The younger agent gives up: stop the process with this message. */
  onGiveUp: (message: string) => void;
}

/**
 * Two agents started with one `--id` (docs/protocol.md §8.1) take each other's MQTT
 * session (the broker hands the client id to the newer connection: MQTT 3.1.1 §3.1.4), sixty times a minute,
 * and pay for every download twice. MQTT 3.1.1 does not tell a client why its
 * connection closed, so the guard looks at the device's own retained status
 * after each reconnect: once this agent's own status has been acknowledged, a
 * retained status from another instance means another agent published since.
 * Both agents see the same two start times, so they agree which is younger:
 * the younger gives up after `limit` takeovers; the older only logs them.
 */
export class SessionGuard {
  private ownAcked = false;
  private takeovers = 0;
  private checking = false;

  constructor(private readonly o: SessionGuardOptions) {}

  /** One of this agent's statuses reached the broker (PUBACK). */
  acked(): void {
    this.ownAcked = true;
  }

  /** After a (re)connect: read the retained status once, then stop listening. */
  async check(): Promise<void> {
    if (this.checking || !this.ownAcked) return;
    this.checking = true;
    const { transport: t, topics, deviceId } = this.o;
    const topic = topics.status(deviceId);
    let done: () => void = () => undefined;
    const seen = new Promise<void>((resolve) => (done = resolve));
    const off = t.onMessage((msgTopic, payload, retained) => {
      if (msgTopic !== topic || !retained) return;
      this.judge(payload);
      done();
    });
    const timer = this.o.clock.setTimeout(done, this.o.waitMs ?? DEVICE_DEFAULTS.guardWaitMs);
    try {
      await t.subscribe(topic, 1);
      await seen;
    } catch (e) {
      // A broker whose ACL predates this check refuses the subscription: nothing to learn.
      this.o.log.debug('could not read the retained status', { error: String(e) });
    } finally {
      this.o.clock.clearTimeout(timer);
      off();
      await t.unsubscribe(topic).catch(ignoreBecause('a retained status arriving later is ignored (checking is over)', this.o.log));
      this.checking = false;
    }
  }

  private judge(payload: Uint8Array): void {
    const s = parseStatus(payload) as (ReturnType<typeof parseStatus> & Partial<AgentIdentity>) | null;
    const me = this.o.identity;
    if (!s || typeof s.instance !== 'string' || s.instance === me.instance || typeof s.started !== 'string') return;
    const other: AgentIdentity = { instance: s.instance, started: s.started };
    this.takeovers++;
    const limit = this.o.limit ?? DEVICE_DEFAULTS.guardTakeovers;
    const younger = me.started > other.started || (me.started === other.started && me.instance > other.instance);
    const what = `another agent uses device id ${this.o.deviceId} (instance ${other.instance.slice(0, 8)}, started ${other.started}; this one ${me.instance.slice(0, 8)}, started ${me.started}): the broker gives the session to each in turn`;
    this.o.log.warn('session taken over', { takeovers: this.takeovers, younger, detail: what });
    if (younger && this.takeovers >= limit) {
      this.o.onGiveUp(`${what}; this agent, the younger, stops after ${this.takeovers} takeovers. Stop the other agent, or give each its own --id and --dir`);
    }
  }
}
