import { ignoreBecause } from '../platform/errors.ts';
import { parsePresence, parseStatus, type DeviceStatus } from '../protocol/status.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import { subscribeGranted, type SubscribeGrantedOptions } from '../transport/subscribe-granted.ts';
import { ago, stripControls, stripControlsDeep } from '../util/text.ts';
import { withDeadline } from '../util/deadline.ts';

/** How long stop() waits for the broker to confirm the unsubscribe, ms. */
const UNSUBSCRIBE_ON_STOP_MS = 1000;

/** What the broker's retained topics say about one device. */
export interface DeviceRecord {
  device: string;
  status: DeviceStatus | null;
  presence: 'online' | 'offline' | null;
  /** When the presence changed (Unix seconds), when it says (docs/protocol.md §8.2). */
  presenceSince?: number | null;
}

export type InventoryListener = (device: string, rec: DeviceRecord, what: 'status' | 'presence', retained: boolean) => void;

/**
 * Follows every device status and presence (both retained, so a fresh
 * subscription gets the whole fleet at once). The controller and `fleet
 * devices` share it.
 */
export class Inventory {
  readonly devices = new Map<string, DeviceRecord>();
  /**
   * Devices whose latest status was malformed (not a status, a field of the
   * wrong type, or another device's id): skipped, what was known of them
   * kept, and counted here until a good status or a clear arrives.
   */
  readonly malformed = new Set<string>();
  private readonly listeners: InventoryListener[] = [];
  private off: (() => void) | undefined;

  constructor(private readonly topics: Topics) {}

  /** Subscribes; retained messages arrive right after. */
  /** With `granted`, the subscription is sent again after a reconnect until the broker grants it (transport/subscribe-granted.ts). */
  async follow(t: Transport, granted?: SubscribeGrantedOptions): Promise<void> {
    this.off = t.onMessage((topic, payload, retained) => this.handle(topic, payload, retained));
    const filters = [this.topics.allStatuses(), this.topics.allPresence()];
    await (granted ? subscribeGranted(t, filters, 1, granted) : t.subscribe(filters, 1));
  }

  async stop(t: Transport): Promise<void> {
    this.off?.();
    this.off = undefined;
    // Bounded: a broker gone (or not answering) must not hold a stop; closing the session ends the subscriptions anyway.
    await withDeadline(t.unsubscribe([this.topics.allStatuses(), this.topics.allPresence()]).catch(ignoreBecause('the session ends the subscription anyway')), UNSUBSCRIBE_ON_STOP_MS);
  }

  onChange(fn: InventoryListener): void {
    this.listeners.push(fn);
  }

  /** Takes one message; false when it is not a status or presence. */
  handle(topic: string, payload: Uint8Array, retained: boolean): boolean {
    const p = this.topics.parse(topic);
    if (p?.kind !== 'status' && p?.kind !== 'presence') return false;
    const rec = this.devices.get(p.deviceId) ?? { device: p.deviceId, status: null, presence: null };
    if (p.kind === 'status') {
      // An empty payload clears a retained status; junk is ignored (operators' tools must not crash on it).
      if (payload.byteLength === 0) rec.status = null;
      else {
        const s = parseStatus(payload);
        if (!s || s.device !== p.deviceId) {
          this.malformed.add(p.deviceId);
          return true;
        }
        rec.status = s;
      }
      this.malformed.delete(p.deviceId);
    } else {
      const presence = parsePresence(payload);
      rec.presence = presence?.state ?? null;
      rec.presenceSince = presence?.since ?? null;
    }
    if (rec.status === null && rec.presence === null) this.devices.delete(p.deviceId);
    else this.devices.set(p.deviceId, rec);
    for (const l of this.listeners) l(p.deviceId, rec, p.kind, retained);
    return true;
  }

  /** Devices whose status says this group (and model), sorted. */
  inGroup(group: string, model: string): string[] {
    return [...this.devices.values()]
      .filter((r) => r.status?.group === group && r.status.model === model)
      .map((r) => r.device)
      .sort();
  }

  list(): DeviceRecord[] {
    return [...this.devices.values()].sort((a, b) => a.device.localeCompare(b.device));
  }
}

export interface InventorySnapshot {
  records: DeviceRecord[];
  /** Devices whose retained status was malformed and skipped, sorted. */
  malformed: string[];
}

/** Subscribes, collects retained statuses and presence for `settleMs`, and returns what it saw. */
export async function collectInventory(t: Transport, topics: Topics, settleMs: number): Promise<InventorySnapshot> {
  const inv = new Inventory(topics);
  await inv.follow(t);
  await new Promise((r) => setTimeout(r, settleMs));
  await inv.stop(t);
  return { records: inv.list(), malformed: [...inv.malformed].sort() };
}

/** One flat object per device for `--json` (strings stripped of control characters). */
export function inventoryRow(r: DeviceRecord): Record<string, unknown> {
  const s = r.status;
  return stripControlsDeep({
    device: r.device,
    group: s?.group ?? null,
    model: s?.model ?? null,
    state: s?.state ?? null,
    running: s?.running ?? null,
    target: s?.target ?? null,
    seq: s?.seq ?? null,
    rollback: s?.rollback ?? null,
    reason: s?.reason ?? null,
    agent: s?.agent ?? null,
    online: r.presence === null ? null : r.presence === 'online',
    lastSeen: s?.time ?? null,
    presenceSince: r.presenceSince ? new Date(r.presenceSince * 1000).toISOString() : null,
  });
}

/** What `fleet devices` says of skipped statuses: '' when none. */
export function malformedNote(malformed: string[]): string {
  if (!malformed.length) return '';
  const who = malformed.slice(0, 5).join(', ') + (malformed.length > 5 ? ', ...' : '');
  return stripControls(`${malformed.length} malformed status(es) skipped (${who})`);
}

/** How long ago the presence changed; '?' when it does not say, or says a time ahead of this clock by over 5 minutes. */
function presenceAge(since: number | null | undefined, now: number): string {
  if (!since || since * 1000 > now + 300_000) return '?';
  return ago(since * 1000, now);
}

/** The table `fleet devices` prints; every cell stripped of control characters. */
export function formatInventory(records: DeviceRecord[], malformed: string[] = [], now = Date.now()): string {
  const head = ['DEVICE', 'GROUP', 'MODEL', 'STATE', 'RUNNING', 'AGENT', 'ONLINE', 'SINCE', 'LAST SEEN'];
  const rows = records.map((r) => {
    const s = r.status;
    const state = s ? `${s.state}${s.rollback ? ' (rollback)' : ''}${s.reason ? ` ${s.reason}` : ''}` : '-';
    const cells = [
      r.device,
      s?.group ?? '-',
      s?.model ?? '-',
      state,
      s ? s.running.slice(0, 12) : '-',
      s?.agent ?? '-',
      r.presence === null ? '?' : r.presence === 'online' ? 'yes' : 'no',
      presenceAge(r.presenceSince, now),
      s?.time ?? '-',
    ];
    return cells.map(stripControls);
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i]))
      .join('  ')
      .trimEnd();
  const note = malformedNote(malformed);
  return [line(head), ...rows.map(line)].join('\n') + `\n${records.length} device(s)${note ? `; ${note}` : ''}`;
}
