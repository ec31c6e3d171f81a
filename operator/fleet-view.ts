import { resolveOperatorConfig } from './defaults.ts';
import { ignoreBecause } from '../platform/errors.ts';
import { decodeRelease } from '../protocol/release.ts';
import { parsePresence, type DeviceState } from '../protocol/status.ts';
import type { Topics } from '../protocol/topics.ts';
import { Inventory, type DeviceRecord } from '../rollout/inventory.ts';
import { isTerminal, type RolloutState } from '../rollout/machine.ts';
import type { FailureThreshold, OfflinePolicy } from '../rollout/plan.ts';
import { parseRolloutStatus, type RolloutStatus, type WaveCounts, type WaveFailure } from '../rollout/status.ts';
import type { Transport } from '../transport/types.ts';
import { subscribeGranted, type SubscribeGrantedOptions } from '../transport/subscribe-granted.ts';
import { ago, stripControls, stripControlsDeep } from '../util/text.ts';

/**
 * What operators see: the fleet (retained device statuses and presence, kept
 * by the shared Inventory) and the rollouts (retained RolloutStatus), turned
 * into flat rows, with the changes each message makes. Pure: no sockets, the
 * clock is injected. The terminal view, the dashboard, the metrics and the
 * alerts all read it.
 */

export interface DeviceRow {
  device: string;
  group: string | null;
  model: string | null;
  /** null: presence is known but no status ever came. */
  state: DeviceState | null;
  progress: number;
  bytes: number;
  totalBytes: number;
  rateBps: number;
  running: string | null;
  target: string | null;
  seq: number | null;
  updateId: string | null;
  /** The target is an operator rollback (`fleet rollback`). */
  rollback: boolean;
  reason: string | null;
  message: string | null;
  agent: string | null;
  /** Presence: true online, false offline, null never said. */
  online: boolean | null;
  /** Epoch ms of the last sign of life: the status time (never later than now) or a live message. */
  lastSeen: number | null;
  /** The status's own ISO time. */
  statusTime: string | null;
  /** status.wire.bytesIn: what the device's link carried to it since its agent started. */
  bytesIn: number | null;
  badChunks: number;
  /**
   * What shipping the whole model would cost: the size of the full-model step
   * of the retained release for the device's group and model; null when that
   * release has none (the model's size is not in the device status).
   */
  modelBytes: number | null;
  /** rolled_back, rejected, failed: an operator should look. */
  attention: boolean;
  /** Online (or unknown) in the middle of an update, yet nothing heard for too long. */
  silent: boolean;
}

export interface WaveRow {
  group: string;
  started: boolean;
  /** The wave's devices (fixed when it started). */
  devices: string[];
  counts: WaveCounts;
  failures: WaveFailure[];
  blocking: string[];
  timedOut: boolean;
  rolledBack: boolean;
  /** From the plan: null when the status does not say. */
  successThreshold: number | null;
  failureThreshold: FailureThreshold | null;
  soakSeconds: number | null;
  timeoutSeconds: number | null;
  offline: OfflinePolicy | null;
  window: string | null;
  /** The release this wave is measured against. */
  seq: number | null;
  /** ISO 8601: release published (the timeout runs from here), success threshold reached (the soak runs from here). */
  publishedAt: string | null;
  thresholdAt: string | null;
}

export interface RolloutRow {
  rollout: string;
  state: RolloutState;
  terminal: boolean;
  /** 1-based index of the current wave. */
  wave: number;
  waves: number;
  group: string | null;
  model: string | null;
  target: string | null;
  /** The current wave's counts. */
  counts: WaveCounts | null;
  waveList: WaveRow[];
  reason: string | null;
  lastEvent: { type: string; time: string; reason: string; device: string | null } | null;
  updated: string | null;
}

export type ViewChange =
  { kind: 'device'; device: string; prev: DeviceRow | null; row: DeviceRow | null; retained: boolean } | { kind: 'rollout'; rollout: string; prev: RolloutRow | null; row: RolloutRow | null; retained: boolean };

export interface FleetSnapshot {
  /** Epoch ms. */
  time: number;
  devices: DeviceRow[];
  rollouts: RolloutRow[];
  /** Devices per state ('unknown' for those without a status). */
  counts: Record<string, number>;
  online: number;
  offline: number;
  groups: string[];
  /** Devices whose latest status was malformed: skipped (what was known of them is kept), counted here. */
  malformed: number;
}

export interface FleetViewOptions {
  now?: () => number;
  /** A downloading device publishes at least every --watchdog (30 s): silent after this (default 60 s); 5x for verifying, applying, testing. */
  staleMs?: number;
}

export const ATTENTION_STATES: readonly DeviceState[] = ['rolled_back', 'rejected', 'failed'];
const BUSY_STATES: readonly DeviceState[] = ['downloading', 'verifying', 'applying', 'testing'];

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
const num = (v: unknown, d = 0): number => (typeof v === 'number' && Number.isFinite(v) ? v : d);
/** Every string a row shows comes from the network: stripped of control characters here, for every view. */
const str = (v: unknown): string | null => (typeof v === 'string' ? stripControls(v) : null);

export class FleetView {
  private readonly inventory: Inventory;
  private readonly rows = new Map<string, DeviceRow>();
  private readonly rolloutRows = new Map<string, RolloutRow>();
  /** Epoch ms of the last live (not retained) message per device. */
  private readonly liveSeen = new Map<string, number>();
  /** Full-model step size of the retained release per `group/model` (null: a release without one). */
  private readonly fullBytes = new Map<string, number | null>();
  private readonly listeners: Array<(changes: ViewChange[]) => void> = [];
  private readonly skipListeners: Array<(device: string, malformed: number) => void> = [];
  readonly now: () => number;
  readonly staleMs: number;

  constructor(
    readonly topics: Topics,
    opts: FleetViewOptions = {},
  ) {
    this.inventory = new Inventory(topics);
    this.now = opts.now ?? Date.now;
    this.staleMs = resolveOperatorConfig({ staleMs: opts.staleMs }).staleMs;
  }

  /** Subscription filters: every status, presence and rollout status. */
  filters(): string[] {
    return [this.topics.allStatuses(), this.topics.allPresence(), this.topics.allRolloutStatuses()];
  }

  /** Retained releases: only for the full-model size (`modelBytes`); subscribed separately, a refusal costs only that. */
  releaseFilter(): string {
    return this.topics.allReleases();
  }

  onChange(fn: (changes: ViewChange[]) => void): () => void {
    this.listeners.push(fn);
    return () => {
      const i = this.listeners.indexOf(fn);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /** Called with the device and the new count when a malformed status is skipped. */
  onSkipped(fn: (device: string, malformed: number) => void): () => void {
    this.skipListeners.push(fn);
    return () => {
      const i = this.skipListeners.indexOf(fn);
      if (i >= 0) this.skipListeners.splice(i, 1);
    };
  }

  /** Devices whose latest status was malformed and skipped. */
  malformedDevices(): string[] {
    return [...this.inventory.malformed].sort();
  }

  /** Takes one MQTT message; returns what it changed (nothing for junk, foreign topics and identical re-deliveries). */
  handle(topic: string, payload: Uint8Array, retained: boolean): ViewChange[] {
    const p = this.topics.parse(topic);
    if (!p) return [];
    if (p.kind === 'rolloutStatus') return this.emit(this.handleRollout(p.rolloutId, payload, retained));
    if (p.kind === 'release') return this.emit(this.handleRelease(`${p.group}/${p.model}`, payload, retained));
    if (p.kind !== 'status' && p.kind !== 'presence') return [];
    const presence = p.kind === 'presence' ? parsePresence(payload) : null;
    // Junk presence is ignored here (the Inventory would forget the presence it knew).
    if (p.kind === 'presence' && payload.byteLength > 0 && presence === null) return [];
    this.inventory.handle(topic, payload, retained);
    if (p.kind === 'status' && payload.byteLength > 0 && this.inventory.malformed.has(p.deviceId)) {
      for (const l of [...this.skipListeners]) l(p.deviceId, this.inventory.malformed.size);
      return [];
    }
    const rec = this.inventory.devices.get(p.deviceId);
    // A live status or `online` is a sign of life now; `offline` (a last will) is not.
    if (rec && !retained && (p.kind === 'status' ? rec.status !== null : presence?.state === 'online')) this.liveSeen.set(p.deviceId, this.now());
    if (!rec) this.liveSeen.delete(p.deviceId);
    return this.emit(this.update(p.deviceId, rec ?? null, retained));
  }

  /** Recomputes what depends on the clock (silent devices); call every second or so. */
  refresh(): ViewChange[] {
    const out: ViewChange[] = [];
    for (const d of [...this.rows.keys()]) out.push(...this.update(d, this.inventory.devices.get(d) ?? null, false));
    return this.emit(out);
  }

  devices(group?: string): DeviceRow[] {
    return [...this.rows.values()].filter((r) => group === undefined || r.group === group).sort((a, b) => a.device.localeCompare(b.device));
  }

  device(id: string): DeviceRow | null {
    return this.rows.get(id) ?? null;
  }

  /** Rollouts, running ones first; with `group`, those with a wave for it. */
  rollouts(group?: string): RolloutRow[] {
    return [...this.rolloutRows.values()]
      .filter((r) => group === undefined || r.waveList.some((w) => w.group === group))
      .sort((a, b) => Number(a.terminal) - Number(b.terminal) || (b.updated ?? '').localeCompare(a.updated ?? '') || a.rollout.localeCompare(b.rollout));
  }

  rollout(id: string): RolloutRow | null {
    return this.rolloutRows.get(id) ?? null;
  }

  snapshot(group?: string): FleetSnapshot {
    const devices = this.devices(group);
    const counts: Record<string, number> = {};
    for (const d of devices) counts[d.state ?? 'unknown'] = (counts[d.state ?? 'unknown'] ?? 0) + 1;
    const groups = [...new Set([...this.rows.values()].map((r) => r.group).filter((g): g is string => g !== null))].sort();
    return {
      time: this.now(),
      devices,
      rollouts: this.rollouts(group),
      counts,
      groups,
      online: devices.filter((d) => d.online === true).length,
      offline: devices.filter((d) => d.online === false).length,
      malformed: this.inventory.malformed.size,
    };
  }

  private emit(changes: ViewChange[]): ViewChange[] {
    if (changes.length) for (const l of [...this.listeners]) l(changes);
    return changes;
  }

  private update(device: string, rec: DeviceRecord | null, retained: boolean): ViewChange[] {
    const prev = this.rows.get(device) ?? null;
    const row = rec ? this.toRow(rec) : null;
    if (same(prev, row)) return [];
    if (row) this.rows.set(device, row);
    else this.rows.delete(device);
    return [{ kind: 'device', device, prev, row, retained }];
  }

  private toRow(rec: DeviceRecord): DeviceRow {
    const s = rec.status;
    const now = this.now();
    const t = s ? Date.parse(s.time) : NaN;
    const fromStatus = Number.isFinite(t) ? Math.min(t, now) : null;
    const live = this.liveSeen.get(rec.device) ?? null;
    const lastSeen = fromStatus === null ? live : live === null ? fromStatus : Math.max(fromStatus, live);
    const state = s?.state ?? null;
    const busy = state !== null && BUSY_STATES.includes(state);
    const limit = state === 'downloading' ? this.staleMs : 5 * this.staleMs;
    const wire = s?.wire as { bytesIn?: unknown } | null | undefined;
    return {
      device: rec.device,
      group: str(s?.group),
      model: str(s?.model),
      state,
      progress: Math.max(0, Math.min(1, num(s?.progress))),
      bytes: num(s?.bytes),
      totalBytes: num(s?.totalBytes),
      rateBps: num(s?.rateBps),
      running: str(s?.running),
      target: str(s?.target),
      seq: typeof s?.seq === 'number' ? s.seq : null,
      updateId: str(s?.updateId),
      rollback: s?.rollback === true,
      reason: str(s?.reason),
      message: str(s?.message),
      agent: str(s?.agent),
      online: rec.presence === null ? null : rec.presence === 'online',
      lastSeen,
      statusTime: str(s?.time),
      bytesIn: wire && typeof wire === 'object' && typeof wire.bytesIn === 'number' ? wire.bytesIn : null,
      badChunks: num(s?.badChunks),
      modelBytes: s ? (this.fullBytes.get(`${s.group}/${s.model}`) ?? null) : null,
      attention: state !== null && ATTENTION_STATES.includes(state),
      silent: busy && rec.presence !== 'offline' && lastSeen !== null && now - lastSeen > limit,
    };
  }

  /** Signatures are not checked: the size is only shown, devices check releases. */
  private handleRelease(key: string, payload: Uint8Array, retained: boolean): ViewChange[] {
    let size: number | null | undefined;
    if (payload.byteLength > 0) {
      try {
        const full = decodeRelease(payload).steps.find((st) => st.from === null);
        size = full ? full.size : null;
      } catch {
        return [];
      }
    }
    if (size === undefined) this.fullBytes.delete(key);
    else this.fullBytes.set(key, size);
    const out: ViewChange[] = [];
    for (const [d, row] of [...this.rows]) {
      if (`${row.group}/${row.model}` === key) out.push(...this.update(d, this.inventory.devices.get(d) ?? null, retained));
    }
    return out;
  }

  private handleRollout(id: string, payload: Uint8Array, retained: boolean): ViewChange[] {
    const prev = this.rolloutRows.get(id) ?? null;
    let row: RolloutRow | null;
    if (payload.byteLength === 0)
      row = null; // cleared
    else {
      const s = parseRolloutStatus(payload);
      if (!s || s.rollout !== id) return []; // junk: keep what we knew
      row = rolloutRow(s);
      if (!row) return [];
    }
    if (same(prev, row)) return [];
    if (row) this.rolloutRows.set(id, row);
    else this.rolloutRows.delete(id);
    return [{ kind: 'rollout', rollout: id, prev, row, retained }];
  }
}

const counts = (c: Partial<WaveCounts> | undefined): WaveCounts => ({
  total: num(c?.total),
  ok: num(c?.ok),
  failed: num(c?.failed),
  pending: num(c?.pending),
  offline: num(c?.offline),
  skipped: num(c?.skipped),
});

/** A flat row of a rollout status (its strings stripped of control characters); null when it is too broken to show. */
export function rolloutRow(s: RolloutStatus): RolloutRow | null {
  const row = rolloutRowOf(s);
  return row && stripControlsDeep(row);
}

function rolloutRowOf(s: RolloutStatus): RolloutRow | null {
  const planWaves = Array.isArray(s.plan?.waves) ? s.plan.waves : [];
  const waveList: WaveRow[] = s.waves.map((w, k) => ({
    group: str(w?.group) ?? str(planWaves[k]?.group) ?? `wave ${k + 1}`,
    started: Array.isArray(w?.devices),
    devices: Array.isArray(w?.devices) ? w.devices.filter((d) => typeof d === 'string') : [],
    counts: counts(w?.counts),
    failures: Array.isArray(w?.failures) ? w.failures.filter((f) => typeof f?.device === 'string') : [],
    blocking: Array.isArray(w?.blocking) ? w.blocking.filter((b) => typeof b === 'string') : [],
    timedOut: w?.timedOut === true,
    rolledBack: w?.rolledBack === true,
    successThreshold: typeof planWaves[k]?.successThreshold === 'number' ? planWaves[k].successThreshold : null,
    failureThreshold: planWaves[k]?.failureThreshold && typeof planWaves[k].failureThreshold === 'object' ? planWaves[k].failureThreshold : null,
    soakSeconds: typeof planWaves[k]?.soakSeconds === 'number' ? planWaves[k].soakSeconds : null,
    timeoutSeconds: typeof planWaves[k]?.timeoutSeconds === 'number' ? planWaves[k].timeoutSeconds : null,
    offline: str(planWaves[k]?.offline) as OfflinePolicy | null,
    window: str(planWaves[k]?.window),
    seq: typeof w?.release?.seq === 'number' ? w.release.seq : null,
    publishedAt: str(w?.publishedAt),
    thresholdAt: str(w?.thresholdAt),
  }));
  const k = Number.isInteger(s.wave) && s.wave >= 0 ? s.wave : 0;
  const cur = waveList[k] ?? null;
  const e = s.lastEvent;
  return {
    rollout: s.rollout,
    state: s.state,
    terminal: isTerminal(s.state),
    wave: Math.min(k + 1, Math.max(waveList.length, 1)),
    waves: Math.max(waveList.length, planWaves.length),
    group: cur?.group ?? null,
    model: str(s.plan?.model),
    target: str(s.plan?.target),
    counts: cur?.started ? cur.counts : null,
    waveList,
    reason: str(s.reason),
    lastEvent: e && typeof e === 'object' && typeof e.type === 'string' ? { type: e.type, time: str(e.time) ?? '', reason: str(e.reason) ?? '', device: str(e.device) } : null,
    updated: str(s.updated),
  };
}

/**
 * Subscribes the view to the broker; returns a function that unsubscribes. With `granted`, a broker
 * that goes away before it grants the subscription is waited for (transport/subscribe-granted.ts).
 */
export async function followFleet(view: FleetView, t: Transport, granted?: SubscribeGrantedOptions): Promise<() => Promise<void>> {
  const off = t.onMessage((topic, payload, retained) => {
    view.handle(topic, payload, retained);
  });
  await (granted ? subscribeGranted(t, view.filters(), 1, granted) : t.subscribe(view.filters(), 1));
  // Without releases the view only lacks modelBytes (a broker ACL may refuse them).
  await t.subscribe(view.releaseFilter(), 1).catch(ignoreBecause('without releases the view only lacks modelBytes'));
  return async () => {
    off();
    await t.unsubscribe([...view.filters(), view.releaseFilter()]).catch(ignoreBecause('the session ends the subscription anyway'));
  };
}

/** The devices of a running rollout's current wave that are not done yet (neither ok on its target nor failed), as rows: who it waits on. */
export function waitingOn(r: RolloutRow, devices: DeviceRow[]): DeviceRow[] {
  if (r.terminal) return [];
  const w = r.waveList[r.wave - 1];
  if (!w?.started) return [];
  const byId = new Map(devices.map((d) => [d.device, d]));
  return w.devices.map((d) => byId.get(d) ?? null).filter((d): d is DeviceRow => d !== null && !d.attention && !(d.state === 'ok' && d.running === r.target && r.target !== null));
}

export { ago };
