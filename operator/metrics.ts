import { DEVICE_STATES } from '../protocol/status.ts';
import { ROLLOUT_STATES } from '../rollout/machine.ts';
import type { FleetSnapshot } from './fleet-view.ts';

/**
 * The fleet in the Prometheus text exposition format (version 0.0.4), from a
 * view snapshot. Every family has HELP and TYPE; label values are escaped
 * (backslash, double quote, line feed); series are sorted so the output is
 * stable.
 */

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

type Labels = Record<string, string>;

class Family {
  readonly samples: Array<[Labels, number]> = [];
  constructor(
    readonly name: string,
    readonly type: 'gauge' | 'counter',
    readonly help: string,
  ) {}
  add(labels: Labels, value: number): this {
    this.samples.push([labels, value]);
    return this;
  }
  render(): string[] {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    for (const [labels, v] of this.samples) {
      const l = Object.entries(labels)
        .map(([k, val]) => `${k}="${escapeLabelValue(val)}"`)
        .join(',');
      lines.push(`${this.name}${l ? `{${l}}` : ''} ${formatValue(v)}`);
    }
    return lines;
  }
}

export function renderMetrics(snap: FleetSnapshot): string {
  const families: Family[] = [];
  const fam = (name: string, type: 'gauge' | 'counter', help: string): Family => {
    const f = new Family(name, type, help);
    families.push(f);
    return f;
  };

  fam('fleet_dashboard_up', 'gauge', 'The dashboard is running.').add({}, 1);

  // Devices per state and group: every known state for every group (zeros included, so rates and alerts see them).
  const byGroup = new Map<string, Map<string, number>>();
  for (const d of snap.devices) {
    const g = d.group ?? '';
    const m = byGroup.get(g) ?? new Map<string, number>();
    const st = d.state ?? 'unknown';
    m.set(st, (m.get(st) ?? 0) + 1);
    byGroup.set(g, m);
  }
  const groups = [...byGroup.keys()].sort();
  const devices = fam('fleet_devices', 'gauge', 'Devices by the state of their retained status ("unknown": presence only).');
  for (const g of groups) {
    const m = byGroup.get(g)!;
    for (const st of DEVICE_STATES) devices.add({ state: st, group: g }, m.get(st) ?? 0);
    if (m.has('unknown')) devices.add({ state: 'unknown', group: g }, m.get('unknown')!);
  }
  fam('fleet_device_statuses_malformed', 'gauge', 'Devices whose latest status was malformed: skipped by every view.').add({}, snap.malformed ?? 0);
  const online = fam('fleet_devices_online', 'gauge', 'Devices whose retained presence is online.');
  const offline = fam('fleet_devices_offline', 'gauge', 'Devices whose retained presence is offline.');
  const silent = fam('fleet_devices_silent', 'gauge', 'Devices in the middle of an update that have published nothing for too long (not offline, yet not reporting).');
  for (const g of groups) {
    const ds = snap.devices.filter((d) => (d.group ?? '') === g);
    online.add({ group: g }, ds.filter((d) => d.online === true).length);
    offline.add({ group: g }, ds.filter((d) => d.online === false).length);
    silent.add({ group: g }, ds.filter((d) => d.silent).length);
  }

  const bytes = fam('fleet_device_bytes_received_total', 'counter', "Bytes the device agent's MQTT sockets received since it started (status wire.bytesIn).");
  const bad = fam('fleet_device_bad_chunks_total', 'counter', 'Chunks the device dropped because they did not match the signed chunk list.');
  const seen = fam('fleet_device_last_seen_seconds', 'gauge', "Unix time of the device's last status or live presence.");
  for (const d of snap.devices) {
    if (d.bytesIn !== null) bytes.add({ device: d.device }, d.bytesIn);
    if (d.state !== null) bad.add({ device: d.device }, d.badChunks);
    if (d.lastSeen !== null) seen.add({ device: d.device }, Math.floor(d.lastSeen / 1000));
  }

  const rolloutDevices = fam('fleet_rollout_devices', 'gauge', 'Devices of each rollout wave by outcome.');
  const rolloutState = fam('fleet_rollout_state', 'gauge', "The rollout's state: 1 for the current one.");
  const rolloutWave = fam('fleet_rollout_wave', 'gauge', "The rollout's current wave (1-based).");
  const rollouts = [...snap.rollouts].sort((a, b) => a.rollout.localeCompare(b.rollout));
  for (const r of rollouts) {
    r.waveList.forEach((w, k) => {
      for (const outcome of ['ok', 'failed', 'pending', 'offline', 'skipped'] as const) {
        rolloutDevices.add({ rollout: r.rollout, wave: String(k + 1), outcome }, w.counts[outcome]);
      }
    });
    const states: readonly string[] = ROLLOUT_STATES.includes(r.state) ? ROLLOUT_STATES : [...ROLLOUT_STATES, r.state];
    for (const st of states) rolloutState.add({ rollout: r.rollout, state: st }, st === r.state ? 1 : 0);
    rolloutWave.add({ rollout: r.rollout }, r.wave);
  }

  return families.flatMap((f) => f.render()).join('\n') + '\n';
}
