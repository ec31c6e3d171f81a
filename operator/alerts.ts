import { resolveOperatorConfig, type OperatorConfig } from './defaults.ts';
import { IoError } from '../platform/errors.ts';
import { runEventCommand } from '../util/event-command.ts';
import http from 'node:http';
import https from 'node:https';
import type { Logger } from '../util/log.ts';
import type { DeviceRow, FleetView, RolloutRow, ViewChange } from './fleet-view.ts';

/**
 * `fleet alerts`: one event per transition into a state an operator must hear
 * about. What was alerted is remembered per device and rollout, so retained
 * re-deliveries (a reconnect, a device re-publishing the same status) alert
 * nothing. A state already shown by the first message of a device or rollout,
 * when that message is a retained one (what the broker held before we came),
 * is the baseline, not news (unless `alertExisting`).
 */

export type AlertType = 'device-rolled-back' | 'device-rejected' | 'device-failed' | 'device-offline' | 'rollout-halted' | 'rollout-completed';

export interface AlertEvent {
  type: AlertType;
  device?: string;
  group?: string;
  rollout?: string;
  reason?: string;
  message?: string;
  /** ISO 8601. */
  time: string;
}

const DEVICE_ALERTS: Record<string, AlertType> = { rolled_back: 'device-rolled-back', rejected: 'device-rejected', failed: 'device-failed' };
const ROLLOUT_ALERTS: Record<string, AlertType> = { halted: 'rollout-halted', completed: 'rollout-completed' };

export interface AlertTrackerOptions {
  /** Also alert on what the first (retained) message of a device or rollout already shows. */
  alertExisting?: boolean;
  now?: () => number;
}

export class AlertTracker {
  /** Per device: the status key last seen (null: no status yet), presence, silence. */
  private readonly devices = new Map<string, { key: string | null; online: boolean | null; silent: boolean }>();
  private readonly rollouts = new Map<string, string>();
  private readonly now: () => number;

  constructor(private readonly o: AlertTrackerOptions = {}) {
    this.now = o.now ?? Date.now;
  }

  /** Events for a batch of view changes, in order. */
  observe(changes: ViewChange[]): AlertEvent[] {
    const out: AlertEvent[] = [];
    for (const c of changes) {
      if (c.kind === 'device' && c.row) out.push(...this.device(c.row, c.retained));
      else if (c.kind === 'device') this.devices.delete(c.device);
      else if (c.row) out.push(...this.rollout(c.row, c.retained));
      else this.rollouts.delete(c.rollout);
    }
    return out;
  }

  private device(d: DeviceRow, retained: boolean): AlertEvent[] {
    const out: AlertEvent[] = [];
    // The same state for the same release with the same reason is the same incident.
    const key = d.state === null ? null : JSON.stringify([d.state, d.seq, d.target, d.reason, d.rollback]);
    const known = this.devices.get(d.device);
    this.devices.set(d.device, { key, online: d.online, silent: d.silent });
    // Status and presence are separate retained topics: each has its own baseline.
    const baseline = (had: unknown): boolean => retained && (had === null || had === undefined) && !this.o.alertExisting;
    const time = new Date(this.now()).toISOString();
    const base = { device: d.device, ...(d.group ? { group: d.group } : {}), time };
    const type = d.state ? DEVICE_ALERTS[d.state] : undefined;
    if (type && known?.key !== key && !baseline(known?.key)) {
      out.push({ type, ...base, ...(d.reason ? { reason: d.reason } : {}), ...(d.message ? { message: d.message } : {}) });
    }
    const offline = d.online === false;
    if (offline && known?.online !== false && !baseline(known?.online)) {
      out.push({
        type: 'device-offline',
        ...base,
        reason: 'presence-offline',
        message: `presence offline; last seen ${d.lastSeen === null ? 'never' : new Date(d.lastSeen).toISOString()}${d.state ? ` while ${d.state}` : ''}`,
      });
    }
    if (d.silent && !(known?.silent ?? false) && !offline && !(retained && known === undefined && !this.o.alertExisting)) {
      out.push({
        type: 'device-offline',
        ...base,
        reason: 'silent',
        message: `no status since ${d.lastSeen === null ? 'ever' : new Date(d.lastSeen).toISOString()} while ${d.state}; presence says ${d.online === null ? 'nothing' : 'online'}`,
      });
    }
    return out;
  }

  private rollout(r: RolloutRow, retained: boolean): AlertEvent[] {
    const known = this.rollouts.get(r.rollout);
    this.rollouts.set(r.rollout, r.state);
    const type = ROLLOUT_ALERTS[r.state];
    if (!type || known === r.state || (known === undefined && retained && !this.o.alertExisting)) return [];
    const why = r.reason ?? r.lastEvent?.reason ?? undefined;
    const ev = r.lastEvent ? `${r.lastEvent.type}: ${r.lastEvent.reason}` : undefined;
    return [{ type, rollout: r.rollout, ...(r.group ? { group: r.group } : {}), ...(why ? { reason: why } : {}), ...(ev ? { message: ev } : {}), time: new Date(this.now()).toISOString() }];
  }
}

/** Runs CMD through the shell with the event in FLEET_EVENT (and FLEET_EVENT_TYPE) and on stdin; resolves its exit code (null: could not start or killed). */
export function runAlertCommand(command: string, event: AlertEvent, log: Logger, timeoutMs: number): Promise<number | null> {
  return runEventCommand(command, event, log, {}, timeoutMs);
}

/** POSTs the event as JSON; resolves the HTTP status, rejects on a network error or timeout. */
export function postWebhook(url: string, event: AlertEvent, timeoutMs: number): Promise<number> {
  const u = new URL(url);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return Promise.reject(new TypeError(`webhook ${url}: use http:// or https://`));
  const body = Buffer.from(JSON.stringify(event));
  const mod = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      u,
      {
        method: 'POST',
        timeout: timeoutMs,
        headers: { 'content-type': 'application/json', 'content-length': body.byteLength, 'user-agent': 'fleet-alerts', 'x-fleet-event': event.type },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('timeout', () => req.destroy(new IoError('webhook-timeout', `webhook did not answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export interface AlertSinkOptions {
  command?: string;
  webhook?: string;
  log: Logger;
  /** Webhook attempts (default 3, backing off 1 s, 2 s). */
  attempts?: number;
  retryMs?: number;
}

/**
 * Delivers events one at a time, in order: the command, then the webhook
 * (retried on a network error or a 5xx). A failure is logged; it never stops
 * the alerts.
 */
export class AlertSink {
  private chain: Promise<void> = Promise.resolve();
  /** Its settings, resolved once. */
  private readonly c: OperatorConfig;

  constructor(private readonly o: AlertSinkOptions) {
    this.c = resolveOperatorConfig({ alertAttempts: o.attempts, alertRetryMs: o.retryMs });
  }

  send(e: AlertEvent): Promise<void> {
    this.chain = this.chain.then(() => this.deliver(e));
    return this.chain;
  }

  /** Resolves when everything sent so far was delivered (or given up). */
  idle(): Promise<void> {
    return this.chain;
  }

  private async deliver(e: AlertEvent): Promise<void> {
    if (this.o.command) await runAlertCommand(this.o.command, e, this.o.log, this.c.alertCommandTimeoutMs);
    if (!this.o.webhook) return;
    const attempts = this.c.alertAttempts;
    for (let i = 1; i <= attempts; i++) {
      try {
        const status = await postWebhook(this.o.webhook, e, this.c.webhookTimeoutMs);
        if (status < 500) {
          if (status >= 300) this.o.log.warn('webhook refused the event', { status, event: e.type });
          return;
        }
        this.o.log.warn('webhook failed', { status, attempt: i, event: e.type });
      } catch (err) {
        this.o.log.warn('webhook failed', { error: (err as Error).message, attempt: i, event: e.type });
      }
      if (i < attempts) await new Promise((r) => setTimeout(r, this.c.alertRetryMs * 2 ** (i - 1)));
    }
  }
}

/** Wires a tracker to a view: every change batch becomes events, handed to `emit`. Returns the unsubscribe. */
export function watchAlerts(view: FleetView, tracker: AlertTracker, emit: (e: AlertEvent) => void): () => void {
  return view.onChange((changes) => {
    for (const e of tracker.observe(changes)) emit(e);
  });
}
