import { resolveOperatorConfig } from './defaults.ts';
import type { FleetView, ViewChange } from './fleet-view.ts';

/**
 * `fleet watch --json`: one JSON object per line for every change the view
 * model reports, with the same rows as the dashboard's `/events` stream:
 *
 *   {"kind":"device","device":"d1","time":"…","retained":false,"row":{…DeviceRow}}
 *   {"kind":"rollout","rollout":"r1","time":"…","retained":true,"row":{…RolloutRow}}
 *
 * `row` is null when the device or rollout was removed (its retained topics
 * cleared); `retained` says the broker replayed it (the first lines after the
 * start are what the broker held). A malformed device status is skipped and
 * said in a line of its own, `{"kind":"skipped","device":"d1",…,"malformed":N}`
 * (N: devices whose latest status is malformed). Nothing is drawn and nothing waits for a
 * terminal, so it works in a pipe (`| jq`, `| grep`); a reader that goes away
 * (EPIPE) ends it quietly.
 */

export interface JsonChangeLine {
  kind: 'device' | 'rollout' | 'skipped';
  device?: string;
  rollout?: string;
  /** ISO 8601 of the view's clock when the change was seen. */
  time: string;
  retained: boolean;
  row: unknown;
  /** kind 'skipped': a malformed status of `device` was skipped; devices whose latest status is malformed. */
  malformed?: number;
}

export function changeLine(c: ViewChange, now: number): JsonChangeLine {
  const time = new Date(now).toISOString();
  return c.kind === 'device' ? { kind: 'device', device: c.device, time, retained: c.retained, row: c.row } : { kind: 'rollout', rollout: c.rollout, time, retained: c.retained, row: c.row };
}

function inGroup(c: ViewChange, group: string): boolean {
  // Either side: a device whose status was cleared (group unknown now) still says so.
  if (c.kind === 'device') return c.row?.group === group || c.prev?.group === group;
  return [c.row, c.prev].some((r) => r?.waveList.some((w) => w.group === group) === true);
}

export interface JsonWatchOptions {
  group?: string;
  /** How often the clock-dependent fields (silent) are recomputed, in ms (0: never; default 1000). */
  refreshMs?: number;
}

/** Writes the view's changes to `out`, one JSON line each. */
export class JsonWatch {
  private off: (() => void) | undefined;
  private tick: NodeJS.Timeout | undefined;
  /** Resolved once, when it is made. */
  private readonly refreshMs: number;
  lines = 0;

  constructor(
    private readonly view: FleetView,
    private readonly out: NodeJS.WritableStream,
    private readonly o: JsonWatchOptions = {},
  ) {
    this.refreshMs = resolveOperatorConfig({ refreshMs: o.refreshMs }).refreshMs;
  }

  start(): void {
    const offSkipped = this.view.onSkipped((device, malformed) => {
      if (this.o.group !== undefined && this.view.device(device)?.group !== this.o.group) return;
      const line: JsonChangeLine = { kind: 'skipped', device, time: new Date(this.view.now()).toISOString(), retained: false, row: null, malformed };
      this.out.write(`${JSON.stringify(line)}\n`);
      this.lines++;
    });
    const offChanges = this.view.onChange((changes) => {
      const now = this.view.now();
      let text = '';
      for (const c of changes) {
        if (this.o.group !== undefined && !inGroup(c, this.o.group)) continue;
        text += `${JSON.stringify(changeLine(c, now))}\n`;
        this.lines++;
      }
      if (text) this.out.write(text);
    });
    this.off = () => {
      offChanges();
      offSkipped();
    };
    const every = this.refreshMs;
    // A device that stops reporting mid-update turns silent with no message: only the clock tells.
    if (every > 0) this.tick = setInterval(() => this.view.refresh(), every);
  }

  stop(): void {
    this.off?.();
    this.off = undefined;
    clearInterval(this.tick);
    this.tick = undefined;
  }
}
