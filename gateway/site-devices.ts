import type { Aedes, Client } from 'aedes';
import type { BrokerAuth } from '../broker/auth.ts';
import { parsePresence, parseStatus } from '../protocol/status.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Logger } from '../util/log.ts';
import type { GroupWatch } from './group-watch.ts';
import type { StatusRelay } from './status-relay.ts';

export interface SiteDevicesOptions {
  topics: Topics;
  /** The site broker's users (its --auth), undefined when it trusts the site's network. */
  auth: BrokerAuth | undefined;
  /** The groups and models mirrored: learned from the site's clients. */
  groups: Pick<GroupWatch, 'learn'>;
  /** The on-disk queue that takes the site's statuses and presences upstream. */
  relay: Pick<StatusRelay, 'relay'>;
  log: Logger;
  /** A device's group or what it runs changed: which full-model steps the site needs is looked at again. */
  onRunningChanged: (group: string, model: string) => void;
}

/**
 * The site's devices as the gateway sees them on the site broker: their statuses and presences
 * relayed upstream, the groups they name learned, which are online, and what each runs.
 */
export class SiteDevices {
  private readonly devices = new Set<string>();
  /** Site devices whose presence went upstream as online: a clean stop says they are offline (their wills die with the site broker). */
  private readonly online = new Set<string>();
  /** What each site device last reported running (its status): which full-model steps the site needs. */
  private readonly digests = new Map<string, { group: string; model: string; running: string }>();

  constructor(private readonly o: SiteDevicesOptions) {}

  /** Devices the site broker has seen a status from. */
  get count(): number {
    return this.devices.size;
  }

  /** The devices whose presence went upstream as online. */
  onlineIds(): string[] {
    return [...this.online];
  }

  /** What the site's devices of `group` and `model` last reported running. */
  running(group: string, model: string): string[] {
    return [...this.digests.values()].filter((d) => d.group === group && d.model === model).map((d) => d.running);
  }

  /** React to the site: statuses and presence up; learn groups from devices. */
  watch(aedes: Aedes): void {
    aedes.on('publish', (packet, client) => {
      if (!client) return;
      const p = this.o.topics.parse(packet.topic);
      if (p?.kind !== 'status' && p?.kind !== 'presence') return;
      const payload = new Uint8Array(packet.payload as Buffer);
      if (p.kind === 'presence') {
        if (parsePresence(payload)?.state === 'online') this.online.add(p.deviceId);
        else this.online.delete(p.deviceId);
      }
      if (p.kind === 'status') this.onStatus(client, p.deviceId, payload);
      void this.o.relay.relay({ topic: packet.topic, payload, retain: packet.retain === true }).catch((e: unknown) => this.o.log.error('status not queued', { error: String(e) }));
    });
    aedes.on('subscribe', (subs, client) => {
      for (const s of subs) {
        const p = this.o.topics.parse(s.topic);
        if (p?.kind === 'release') this.learnFrom(client, p.group, p.model);
      }
    });
  }

  /** A site device's status: learn its group, and what it runs (which full-model steps the site needs). */
  private onStatus(client: Client, deviceId: string, payload: Uint8Array): void {
    this.devices.add(deviceId);
    const s = parseStatus(payload);
    if (!s) return;
    this.learnFrom(client, s.group, s.model);
    const before = this.digests.get(deviceId);
    this.digests.set(deviceId, { group: s.group, model: s.model, running: s.running });
    if (before?.running !== s.running || before.group !== s.group) this.o.onRunningChanged(s.group, s.model);
  }

  /**
   * A site client names a group and model (in a status or a release subscription). With the site's
   * --auth only a device user's own pair is learned, whatever it names; without, the pair it names,
   * within the --learn-groups cap.
   */
  private learnFrom(client: Client | null, group: string, model: string): void {
    if (!client) return;
    if (this.o.auth) {
      const p = this.o.auth.principalOf(client);
      if (p?.role === 'device' && p.group && p.model) void this.o.groups.learn(p.group, p.model);
      return;
    }
    void this.o.groups.learn(group, model);
  }
}
