import { IoError, isFleetError } from '../platform/errors.ts';
import { MQTT_DEFAULTS } from './defaults.ts';
import type { Transport } from './types.ts';

export interface SubscribeGrantedOptions {
  /** True once the owner is stopping: the wait ends, rejecting with `stopped`. */
  stopped: () => boolean;
  /** How often a disconnected transport is looked at again, ms. */
  pollMs?: number;
}

/**
 * Subscribes, and resolves only once the broker has granted it. A connection
 * that closes before the SUBACK fails the subscribe (mqtt.js flushes it, and a
 * clean session keeps nothing: MQTT 3.1.1 §3.1.2.4), so the subscribe is sent
 * again once the transport is connected again, as often as that happens. A
 * refusal (the broker's 0x80, an ACL) or any other error rejects as it is; the owner stopping rejects with `stopped`.
 *
 * For a start-up that must not go on without its subscriptions (a rollout
 * controller that reads retained state before it acts); a process that can
 * run on and let mqtt.js re-subscribe on the next connect does not need it.
 */
export async function subscribeGranted(t: Transport, filters: string | string[], qos: 0 | 1, o: SubscribeGrantedOptions): Promise<void> {
  const pollMs = o.pollMs ?? MQTT_DEFAULTS.subscribeRetryPollMs;
  for (let attempt = 0; ; attempt++) {
    try {
      // Again after a lost connection, the SUBSCRIBE is sent for certain (the client may count it as held).
      await t.subscribe(filters, qos, { resend: attempt > 0 });
      return;
    } catch (e) {
      if (o.stopped()) throw stoppedError(filters);
      // mqtt.js fails what was in flight, or queued while offline, with 'Connection closed' at each close.
      if (isFleetError(e) || !/connection closed/i.test(String(e))) throw e;
    }
    while (!t.connected) {
      if (o.stopped()) throw stoppedError(filters);
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }
}

function stoppedError(filters: string | string[]): IoError<'stopped'> {
  return new IoError('stopped', `stopped before the broker granted the subscription to ${[filters].flat().join(', ')}`);
}
