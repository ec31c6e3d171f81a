import { resolveOperatorConfig } from './defaults.ts';
import { stripControls } from '../util/text.ts';
import { ago, waitingOn, type DeviceRow, type FleetSnapshot, type FleetView, type RolloutRow, type ViewChange } from './fleet-view.ts';

/**
 * `fleet watch`: a screen redrawn in place on a terminal (at most every
 * 250 ms), or plain lines, one per change that matters, when the output is a
 * file or a pipe.
 */

const ESC = '\x1b[';
const COLOURS: Record<string, string> = {
  ok: '32',
  downloading: '36',
  verifying: '36',
  applying: '36',
  testing: '33',
  rolled_back: '1;31',
  rejected: '1;31',
  failed: '31',
  idle: '37',
  completed: '32',
  halted: '1;31',
  rolling_back: '1;31',
  aborted: '33',
  paused: '33',
  waiting: '36',
  soaking: '36',
  publishing: '36',
  pending: '37',
};
const paint = (on: boolean, code: string | undefined, s: string): string => (on && code ? `${ESC}${code}m${s}${ESC}0m` : s);
const short = (d: string | null): string => (d ? d.slice(0, 12) : '-');

export function progressBar(p: number, width = 10): string {
  const filled = Math.round(Math.max(0, Math.min(1, p)) * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.floor(p * 100)).padStart(3)}%`;
}

/** The state as a person reads it: `ok (rollback)`, `downloading (silent)`. */
export function stateLabel(d: DeviceRow): string {
  const tags = [d.rollback ? 'rollback' : '', d.silent ? 'silent' : ''].filter(Boolean);
  return `${d.state ?? 'unknown'}${tags.length ? ` (${tags.join(', ')})` : ''}`;
}

const onlineLabel = (d: DeviceRow): string => (d.online === null ? '?' : d.online ? 'online' : 'OFFLINE');

/** A padded table; `colour(row, col)` may return an ANSI colour code for a cell. */
function table(head: string[], rows: string[][], colour?: (r: number, c: number) => string | undefined, useColour = false): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[], r: number): string =>
    cells
      .map((c, i) => paint(useColour && r >= 0, useColour && r >= 0 ? colour?.(r, i) : undefined, i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(head, -1), ...rows.map((cells, r) => line(cells, r))];
}

export interface ScreenOptions {
  title?: string;
  group?: string;
  colour?: boolean;
  /** Terminal width: lines are cut to it. */
  columns?: number;
  /** Terminal height: the device table is cut to fit (devices needing attention come first). */
  rows?: number;
}

export function rolloutCells(r: RolloutRow): string[] {
  const c = r.counts;
  const ev = r.lastEvent ? `${r.lastEvent.type}${r.lastEvent.device ? ` ${r.lastEvent.device}` : ''}: ${r.lastEvent.reason}` : '-';
  return [
    r.rollout,
    r.state,
    `${r.wave}/${r.waves}${r.group ? ` ${r.group}` : ''}`,
    c ? String(c.ok) : '-',
    c ? String(c.failed) : '-',
    c ? String(c.pending) : '-',
    c ? String(c.offline) : '-',
    r.reason ? `${ev} (why: ${r.reason})` : ev,
  ];
}

/** The whole screen, as lines. */
export function renderScreen(snap: FleetSnapshot, o: ScreenOptions = {}): string[] {
  const col = o.colour === true;
  const now = snap.time;
  const out: string[] = [];
  out.push(`${o.title ?? 'fleet watch'}${o.group ? ` (group ${o.group})` : ''}  ${new Date(now).toISOString()}`);
  const counts = Object.entries(snap.counts)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([s, n]) => paint(col, COLOURS[s], `${s} ${n}`));
  const skipped = snap.malformed > 0 ? `, ${paint(col, '33', `${snap.malformed} malformed status(es) skipped`)}` : '';
  out.push(`${snap.devices.length} device(s), ${snap.online} online, ${paint(col && snap.offline > 0, '33', `${snap.offline} offline`)}${skipped}${counts.length ? ` | ${counts.join('  ')}` : ''}`);
  out.push('');
  // Rolled back, rejected, failed and silent devices first: they must not scroll out of sight.
  const all = [...snap.devices].sort((a, b) => Number(b.attention || b.silent) - Number(a.attention || a.silent) || a.device.localeCompare(b.device));
  const trouble = all.filter((d) => d.attention || d.silent);
  if (trouble.length) {
    const list = trouble
      .slice(0, 5)
      .map((d) => `${d.device} ${stateLabel(d)}${d.reason ? ` ${d.reason}` : ''}`)
      .join('; ');
    out.push(paint(col, '1;31', `NEEDS ATTENTION (${trouble.length}): ${list}${trouble.length > 5 ? '; ...' : ''}`));
  }
  const fixed = 9 + (trouble.length ? 1 : 0) + Math.max(1, snap.rollouts.length + 1);
  const room = o.rows ? Math.max(3, o.rows - fixed) : all.length;
  const devs = all.length > room ? all.slice(0, room - 1) : all;
  const rows = devs.map((d) => [
    d.device,
    d.group ?? '-',
    stateLabel(d),
    d.state === 'downloading' ? progressBar(d.progress) : '',
    short(d.running),
    short(d.target),
    onlineLabel(d),
    ago(d.lastSeen, now),
    [d.reason, d.message].filter(Boolean).join(': '),
  ]);
  out.push(
    ...table(
      ['DEVICE', 'GROUP', 'STATE', 'PROGRESS', 'RUNNING', 'TARGET', 'ONLINE', 'LAST SEEN', 'REASON'],
      rows,
      (r, c) => {
        const d = devs[r];
        // A rollback or refusal stays red even when the device is offline; the rest of an offline row is dim.
        if ((c === 2 || c === 8) && (d.attention || d.silent)) return '1;31';
        if (d.online === false) return '2';
        return c === 2 ? COLOURS[d.state ?? ''] : undefined;
      },
      col,
    ),
  );
  if (devs.length < all.length) out.push(`... and ${all.length - devs.length} more device(s) (narrow with --group)`);
  if (!devs.length) out.push('(no devices yet: no retained status or presence)');
  out.push('');
  const rs = snap.rollouts;
  if (rs.length) {
    out.push(...table(['ROLLOUT', 'STATE', 'WAVE', 'OK', 'FAILED', 'PENDING', 'OFFLINE', 'LAST EVENT'], rs.map(rolloutCells), (r, c) => (c === 1 ? COLOURS[rs[r].state] : undefined), col));
    for (const r of rs) {
      // Who a running rollout waits on, and when each was last heard of: a device that never reports must be visible.
      const wait = waitingOn(r, snap.devices);
      if (!wait.length) continue;
      const who = wait
        .slice(0, 5)
        .map(
          (d) => `${d.device} (${d.online === false ? 'OFFLINE, ' : d.silent ? 'SILENT, ' : ''}${stateLabel(d)}${d.state === 'downloading' ? ` ${Math.floor(d.progress * 100)}%` : ''}, last seen ${ago(d.lastSeen, now)})`,
        );
      const blocked = r.waveList[r.wave - 1]?.blocking.length ? ' [blocked]' : '';
      out.push(paint(col, wait.some((d) => d.online === false || d.silent) ? '33' : undefined, `  ${r.rollout} waits on ${wait.length}${blocked}: ${who.join(', ')}${wait.length > 5 ? ', ...' : ''}`));
    }
  } else out.push('(no rollouts)');
  out.push('');
  out.push('q or Ctrl-C quits');
  return o.columns ? out.map((l) => cut(l, o.columns!)) : out;
}

/** Cuts a line to `n` visible characters, keeping ANSI sequences intact. */
function cut(line: string, n: number): string {
  let visible = 0;
  let out = '';
  for (let i = 0; i < line.length; i++) {
    if (line[i] === '\x1b') {
      const m = /^\x1b\[[0-9;]*m/.exec(line.slice(i));
      if (m) {
        out += m[0];
        i += m[0].length - 1;
        continue;
      }
    }
    if (visible >= n) continue;
    out += line[i];
    visible++;
  }
  return out;
}

const quarter = (p: number): number => Math.floor(p * 4);

/** One plain line for a change worth a line, or null (progress inside the same quarter, last-seen only). */
export function describeChange(c: ViewChange, now: number): string | null {
  const ts = new Date(now).toISOString();
  if (c.kind === 'device') {
    const { prev, row: d } = c;
    if (!d) return `${ts} device ${c.device} removed (its retained status and presence were cleared)`;
    const who = `device ${d.device}${d.group ? ` [${d.group}]` : ''}`;
    const why = [d.reason, d.message].filter(Boolean).join(': ');
    const parts: string[] = [];
    if (!prev || prev.state !== d.state || prev.rollback !== d.rollback || prev.reason !== d.reason) {
      parts.push(prev ? `${stateLabel(prev)} -> ${stateLabel(d)}` : stateLabel(d));
      if (d.state === 'downloading') parts.push(progressBar(d.progress));
      else if (d.state === 'ok' || !prev) parts.push(`running ${short(d.running)}`);
      if (d.target && d.target !== d.running) parts.push(`target ${short(d.target)}`);
      if (why) parts.push(`reason ${why}`);
      if (!prev) parts.push(onlineLabel(d).toLowerCase());
    } else if (d.state === 'downloading' && quarter(d.progress) !== quarter(prev.progress)) {
      parts.push(`downloading ${progressBar(d.progress)}`);
    }
    if (prev && prev.online !== d.online) parts.push(d.online === false ? `OFFLINE (last seen ${ago(d.lastSeen, now)})` : d.online ? 'online' : 'presence unknown');
    if (prev && !prev.silent && d.silent) parts.push(`SILENT: nothing heard for ${ago(d.lastSeen, now).replace(' ago', '')} while ${d.state}`);
    if (prev && prev.silent && !d.silent && prev.state === d.state && prev.online === d.online) parts.push('heard again');
    return parts.length ? `${ts} ${who} ${parts.join(', ')}` : null;
  }
  const { prev, row: r } = c;
  if (!r) return `${ts} rollout ${c.rollout} removed (its retained status was cleared)`;
  const key = (x: RolloutRow | null): string => JSON.stringify(x ? [x.state, x.wave, x.counts, x.lastEvent, x.reason] : null);
  if (prev && key(prev) === key(r)) return null;
  const [, state, wave, ok, failed, pending, offline, ev] = rolloutCells(r);
  const st = prev && prev.state !== state ? `${prev.state} -> ${state}` : state;
  return `${ts} rollout ${r.rollout} ${st}, wave ${wave}, ok ${ok} failed ${failed} pending ${pending} offline ${offline}; last event ${ev}`;
}

type Out = NodeJS.WritableStream & { isTTY?: boolean; columns?: number; rows?: number };

export interface TerminalWatchOptions {
  title?: string;
  group?: string;
  /** Force TTY or plain mode (default: the stream's isTTY). */
  tty?: boolean;
  /** Least time between redraws (default 250 ms). */
  intervalMs?: number;
  /** Plain mode: collect the retained burst this long, then print one line per device and rollout (default 500 ms; 0: line by line from the start). */
  settleMs?: number;
}

/** Drives the output from the view: redraws in place on a TTY, appends change lines otherwise. */
export class TerminalWatch {
  private readonly tty: boolean;
  private readonly intervalMs: number;
  private readonly settleMs: number;
  private off: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private tick: NodeJS.Timeout | undefined;
  private lastDraw = 0;
  private settle: NodeJS.Timeout | undefined;

  constructor(
    private readonly view: FleetView,
    private readonly out: Out,
    private readonly o: TerminalWatchOptions = {},
  ) {
    this.tty = o.tty ?? out.isTTY === true;
    const c = resolveOperatorConfig({ terminalIntervalMs: o.intervalMs, terminalSettleMs: o.settleMs });
    this.intervalMs = c.terminalIntervalMs;
    this.settleMs = c.terminalSettleMs;
  }

  start(): void {
    const offChanges = this.view.onChange((changes) => this.onChanges(changes));
    const offSkipped = this.view.onSkipped((device, n) => {
      if (this.tty) this.schedule();
      else if (!this.settle) this.write(`${new Date(this.view.now()).toISOString()} device ${device}: malformed status skipped (${n} device(s) with one)`);
    });
    this.off = () => {
      offChanges();
      offSkipped();
    };
    if (this.tty) this.out.write(`${ESC}?1049h${ESC}?25l`); // alternate screen, hide cursor
    this.tick = setInterval(() => {
      this.view.refresh();
      if (this.tty) this.schedule(); // "12 s ago" moves on
    }, 1000);
    if (this.tty) this.draw();
    else if (this.settleMs > 0) this.settle = setTimeout(() => this.settled(), this.settleMs);
  }

  /** The end of the retained burst: the fleet as it stands, one line each. */
  private settled(): void {
    this.settle = undefined;
    const now = this.view.now();
    const rows: ViewChange[] = [
      ...this.view.devices(this.o.group).map((row): ViewChange => ({ kind: 'device', device: row.device, prev: null, row, retained: true })),
      ...this.view.rollouts(this.o.group).map((row): ViewChange => ({ kind: 'rollout', rollout: row.rollout, prev: null, row, retained: true })),
    ];
    for (const c of rows) this.write(describeChange(c, now)!);
    const malformed = this.view.malformedDevices();
    if (malformed.length) this.write(`${new Date(now).toISOString()} ${malformed.length} malformed status(es) skipped (${malformed.slice(0, 5).join(', ')}${malformed.length > 5 ? ', ...' : ''})`);
  }

  /** One plain line (no terminal control of ours in plain mode, and none from the network). */
  private write(line: string): void {
    this.out.write(`${stripControls(line)}\n`);
  }

  stop(): void {
    this.off?.();
    this.off = undefined;
    clearTimeout(this.timer);
    clearInterval(this.tick);
    clearTimeout(this.settle);
    this.timer = this.tick = this.settle = undefined;
    if (this.tty) this.out.write(`${ESC}?25h${ESC}?1049l`);
  }

  private onChanges(changes: ViewChange[]): void {
    if (this.tty) return this.schedule();
    if (this.settle) return;
    const now = this.view.now();
    for (const c of changes) {
      if (this.o.group !== undefined && !inGroup(c, this.o.group)) continue;
      const line = describeChange(c, now);
      if (line) this.write(line);
    }
  }

  private schedule(): void {
    if (this.timer) return;
    const wait = Math.max(0, this.lastDraw + this.intervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.draw();
    }, wait);
  }

  private draw(): void {
    this.lastDraw = Date.now();
    const lines = renderScreen(this.view.snapshot(this.o.group), { title: this.o.title, group: this.o.group, colour: true, columns: this.out.columns, rows: this.out.rows });
    this.out.write(`${ESC}H${lines.map((l) => `${l}${ESC}K`).join('\n')}\n${ESC}J`);
  }
}

function inGroup(c: ViewChange, group: string): boolean {
  if (c.kind === 'device') return (c.row ?? c.prev)?.group === group;
  return (c.row ?? c.prev)?.waveList.some((w) => w.group === group) === true;
}
