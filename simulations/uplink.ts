/**
 * What the site's uplink carried in a simulation, broken down: the devices' MQTT packets by
 * type (summed from their DeviceEnd lines) and the link's own counters sampled through the
 * run, so the uplink up to the moment the last device had its payload (what HTTP's figure
 * covers: its fetch, no statuses after it) can be told from the uplink up to the last ack.
 */
import type { LinkCounters } from './link-counters.ts';
import type { DeviceEnd } from './sim-support.ts';

export type SentByType = Record<string, { packets: number; bytes: number }>;

/**
 * The devices' sent packets by type from their first `downloading` status (the release taken, as
 * the link's counters start before it; what a device sent while it connected and waited is left
 * out) to their end (`sent`) or to their payload on disk (`sentToDownloaded`), summed.
 */
export function sumSent(list: DeviceEnd[], which: 'sent' | 'sentToDownloaded'): SentByType {
  const out: SentByType = {};
  const add = (from: SentByType | undefined, sign: 1 | -1): void => {
    for (const [k, v] of Object.entries(from ?? {})) {
      const o = (out[k] ??= { packets: 0, bytes: 0 });
      o.packets += sign * v.packets;
      o.bytes += sign * v.bytes;
    }
  };
  for (const e of list) {
    add(e[which], 1);
    add(e.sentBeforeStarted, -1);
  }
  for (const [k, v] of Object.entries(out)) if (v.packets === 0) delete out[k];
  return out;
}

/** Reads something every `everyMs` until stopped (a reading still under way skips a turn); `at(t)` is the first sample taken at or after `t`. */
export class PeriodicSampler<T> {
  protected readonly samples: Array<{ t: number; c: T }> = [];
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private inFlight: Promise<void> = Promise.resolve();

  constructor(
    private readonly read: () => Promise<T>,
    readonly everyMs = 250,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      if (this.busy) return;
      this.busy = true;
      const t = Date.now();
      this.inFlight = this.read()
        .then((c) => void this.samples.push({ t, c }))
        .catch(() => undefined)
        .finally(() => (this.busy = false));
    }, this.everyMs);
  }

  /** No more samples; resolves once a reading under way has landed (so a reading taken after it is the largest). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.inFlight;
  }

  at(t: number): T | undefined {
    return this.samples.find((s) => s.t >= t)?.c;
  }

  /** Every sample so far, oldest first. */
  all(): ReadonlyArray<{ t: number; c: T }> {
    return this.samples;
  }
}

/** Samples a link's counters every `everyMs` until stopped. */
export class CounterSampler extends PeriodicSampler<LinkCounters> {
  /** The counters at `t`, interpolated between the samples either side of it (the first after it when none is before). */
  around(t: number): LinkCounters | undefined {
    const i = this.samples.findIndex((s) => s.t >= t);
    if (i < 0) return undefined;
    const b = this.samples[i];
    const a = this.samples[i - 1];
    if (!a || b.t === a.t) return b.c;
    const f = (t - a.t) / (b.t - a.t);
    const mix = (x: number, y: number): number => Math.round(x + (y - x) * f);
    return { rxBytes: mix(a.c.rxBytes, b.c.rxBytes), rxPackets: mix(a.c.rxPackets, b.c.rxPackets), txBytes: mix(a.c.txBytes, b.c.txBytes), txPackets: mix(a.c.txPackets, b.c.txPackets) };
  }
}

/**
 * The link's reading when the last device had its payload on disk: the sampler's first at or
 * after it, else `after` (a reading taken later still, when the sampler took none since on a
 * loaded machine). Undefined when a device never had its payload.
 */
export function readingAtDownloaded<C>(list: DeviceEnd[], sampler: { at(t: number): C | undefined } | undefined, after: C | undefined): C | undefined {
  if (!list.length || !list.every((e) => e.downloaded)) return undefined;
  return sampler?.at(Math.max(...list.map((e) => e.downloaded!))) ?? after;
}
