import type { MqttTransport } from '../transport/mqtt.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import type { SerialWork } from './serial-work.ts';
import type { GatewayFileStatus, GatewayStatus } from './status.ts';
import type { UpstreamLink } from './upstream-link.ts';

export interface StatusPublisherOptions {
  upstream: Pick<MqttTransport, 'connected' | 'publish' | 'sent' | 'stats'>;
  link: Pick<UpstreamLink, 'up' | 'saveLedger'>;
  /** The gateway's serial reactions: a status is taken and published in its turn. */
  work: SerialWork;
  /** The gateway's status now. */
  status: () => Promise<GatewayStatus>;
  /** `DIR/status.json`. */
  file: string;
  /** Where the status goes upstream (retained): `fleet/gateways/{site}/status`. */
  topic: string;
  /** While fetching, the status goes upstream when the fetch passes another this much of a payload. */
  progressStep: number;
}

/**
 * The gateway's own status, kept in `DIR/status.json` on every change and published upstream
 * (retained) when it changed as the fleet sees it, at most once a second unless urgent and at least
 * every 30 s. The file also carries what only the site sees: the upstream socket's packets by
 * type, when a release last came and when the last fetched payload was held (the fetch's timing).
 */
export class StatusPublisher {
  /** The last `DIR/status.json` written, without its time. */
  private lastFileJson = '';
  /** The last status published upstream, as compared (without what changes without mattering). */
  private lastStatusJson = '';
  private lastPublishedAt = 0;
  /** When the last payload fetched from upstream was held, and what the upstream socket had written by then (the status file's `lastStored`). */
  private lastStored: GatewayFileStatus['lastStored'];
  private lastReleaseAt: number | undefined;
  private closed = false;

  constructor(private readonly o: StatusPublisherOptions) {}

  /** A release came from upstream (the status file's `lastReleaseAt`). */
  releaseArrived(): void {
    this.lastReleaseAt = Date.now();
  }

  /** A payload fetched from upstream is held: taken now, before the site's devices hear of the release and their statuses go up. */
  payloadStored(): void {
    this.lastStored = { at: Date.now(), upstreamSent: structuredClone(this.o.upstream.sent), wireBytesOut: this.o.upstream.stats().bytesOut };
  }

  /** Publish the gateway's status upstream (retained) when it changed, at most once a second unless `urgent`; also `DIR/status.json`. */
  publish(urgent: boolean): void {
    if (this.closed) return;
    // Whether the link was up when the change came: one made as it went down is not sent when the
    // task runs after the reconnect (with the link's state as it was computed then).
    const linkWasUp = this.o.link.up;
    this.o.work.run(async () => {
      await this.o.link.saveLedger();
      const s = await this.o.status();
      await this.writeFile(s);
      // What counts as a change upstream: not the clock nor the byte counters (publishing the status
      // moves them, which would publish again: a loop over a metered link), nor the relay's counters
      // (every device status relayed moved them: once a second while the site's devices download).
      // They go up with every change and at least every 30 s.
      // Nor each chunk of a fetch: its progress counts by statusProgressStep (a gateway status is
      // ~750 B with one release, and once a second while fetching cost more than the fetch's requests).
      const { time: _t, fetched: _f, budget, fetching, relay: _r, ...rest } = s;
      const progress = fetching.map((f) => ({ ...f, bytes: Math.floor(f.bytes / Math.max(1, f.totalBytes) / this.o.progressStep) }));
      const json = JSON.stringify({ ...rest, progress, month: budget.month, exhausted: budget.limitBytes !== null && budget.usedBytes >= budget.limitBytes });
      const wallNow = Date.now();
      const periodic = wallNow - this.lastPublishedAt > 30_000;
      if (json === this.lastStatusJson && !periodic) return;
      // Upstream gets at most one a second unless it matters now.
      if (!linkWasUp || !this.o.link.up || !this.o.upstream.connected || (!urgent && !periodic && wallNow - this.lastPublishedAt < 1000)) return;
      this.lastStatusJson = json;
      this.lastPublishedAt = wallNow;
      // Not awaited: a slow link must not hold up the gateway's other work.
      void this.o.upstream.publish(this.o.topic, JSON.stringify(s), { qos: 1, retain: true }).catch(() => {
        this.lastStatusJson = '';
      });
    });
  }

  /** The local file follows every change, the counters' included (what the uplink carried so far). */
  private async writeFile(s: GatewayStatus): Promise<void> {
    const { time: _ft, ...file } = { ...s, upstreamSent: this.o.upstream.sent, lastReleaseAt: this.lastReleaseAt, lastStored: this.lastStored } satisfies GatewayFileStatus;
    const fileJson = JSON.stringify(file);
    if (fileJson === this.lastFileJson) return;
    this.lastFileJson = fileJson;
    await writeFileAtomic(this.o.file, JSON.stringify({ ...file, time: s.time }, null, 1));
  }

  /** Publish no more (the gateway is stopping). */
  close(): void {
    this.closed = true;
  }
}
