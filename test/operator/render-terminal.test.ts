import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { describeChange, progressBar, renderScreen, TerminalWatch } from '../../operator/render-terminal.ts';
import { clockedView, D1, D2, presenceMsg, rolloutMsg, rolloutStatus, status, statusMsg, T0 } from './helpers.ts';

const iso = (t: number): string => new Date(t).toISOString();

describe('render-terminal', () => {
  it('non-TTY mode: one plain line per change that matters', async () => {
    const { view, clock } = clockedView();
    const out = new PassThrough();
    let text = '';
    out.on('data', (b: Buffer) => (text += b.toString()));
    const w = new TerminalWatch(view, out, { tty: false, settleMs: 0 });
    w.start();
    view.handle(...statusMsg(status('d1')), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    clock.t = T0 + 1000;
    view.handle(...statusMsg(status('d1', { state: 'downloading', target: D2, seq: 3, progress: 0.1, time: iso(clock.t) })), false);
    view.handle(...statusMsg(status('d1', { state: 'downloading', target: D2, seq: 3, progress: 0.2, time: iso(clock.t) })), false); // same quarter: no line
    view.handle(...statusMsg(status('d1', { state: 'downloading', target: D2, seq: 3, progress: 0.6, time: iso(clock.t) })), false);
    clock.t = T0 + 2000;
    view.handle(...statusMsg(status('d1', { state: 'rolled_back', target: D2, seq: 3, reason: 'health-check-failed', message: 'switched back', time: iso(clock.t) })), false);
    clock.t = T0 + 14_000;
    view.handle(...presenceMsg('d1', 'offline'), false);
    view.handle(...statusMsg(status('d2', { state: 'ok', running: D2, target: D2, rollback: true, time: iso(T0) })), true);
    view.handle(...rolloutMsg(rolloutStatus('r1')), true);
    view.handle(...rolloutMsg(rolloutStatus('r1')), true); // re-delivery: nothing
    w.stop();
    // With a settle time, the retained burst becomes one line per device and rollout.
    const { view: v2 } = clockedView();
    let text2 = '';
    const out2 = new PassThrough();
    out2.on('data', (b: Buffer) => (text2 += b.toString()));
    const w2 = new TerminalWatch(v2, out2, { tty: false, settleMs: 30 });
    w2.start();
    v2.handle(...statusMsg(status('d1')), true);
    v2.handle(...presenceMsg('d1', 'online'), true);
    v2.handle(...rolloutMsg(rolloutStatus('r1')), true);
    await new Promise((r) => setTimeout(r, 60));
    v2.handle(...presenceMsg('d1', 'offline'), false);
    w2.stop();
    expect(text2.trimEnd().split('\n')).toEqual([
      '2025-03-01T12:00:00.000Z device d1 [line-1] idle, running aaaaaaaaaaaa, online',
      '2025-03-01T12:00:00.000Z rollout r1 waiting, wave 1/2 canary, ok 1 failed 0 pending 1 offline 0; last event published: release seq 3 published',
      '2025-03-01T12:00:00.000Z device d1 [line-1] OFFLINE (last seen 0 s ago)',
    ]);
    expect(text.trimEnd().split('\n')).toEqual([
      '2025-03-01T12:00:00.000Z device d1 [line-1] idle, running aaaaaaaaaaaa, ?',
      '2025-03-01T12:00:00.000Z device d1 [line-1] online',
      '2025-03-01T12:00:01.000Z device d1 [line-1] idle -> downloading, [#.........]  10%, target bbbbbbbbbbbb',
      '2025-03-01T12:00:01.000Z device d1 [line-1] downloading [######....]  60%',
      '2025-03-01T12:00:02.000Z device d1 [line-1] downloading -> rolled_back, target bbbbbbbbbbbb, reason health-check-failed: switched back',
      '2025-03-01T12:00:14.000Z device d1 [line-1] OFFLINE (last seen 12 s ago)',
      '2025-03-01T12:00:14.000Z device d2 [line-1] ok (rollback), running bbbbbbbbbbbb, ?',
      '2025-03-01T12:00:14.000Z rollout r1 waiting, wave 1/2 canary, ok 1 failed 0 pending 1 offline 0; last event published: release seq 3 published',
    ]);
  });

  it('the screen: counts, the device table with progress and last seen, the rollouts', () => {
    const { view, clock } = clockedView();
    view.handle(...statusMsg(status('d1', { state: 'downloading', target: D2, progress: 0.5 })), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    view.handle(...statusMsg(status('d2', { state: 'rejected', target: D2, reason: 'bad-signature', message: 'altered', group: 'line-2', time: iso(T0 - 200_000) })), true);
    view.handle(...presenceMsg('d2', 'offline'), true);
    view.handle(...rolloutMsg(rolloutStatus('r1')), true);
    clock.t = T0 + 12_000;
    expect(renderScreen(view.snapshot(), { title: 'fleet watch' })).toEqual([
      'fleet watch  2025-03-01T12:00:12.000Z',
      '2 device(s), 1 online, 1 offline | downloading 1  rejected 1',
      '',
      'NEEDS ATTENTION (1): d2 rejected bad-signature',
      'DEVICE  GROUP   STATE        PROGRESS           RUNNING       TARGET        ONLINE   LAST SEEN  REASON',
      `d2      line-2  rejected                        ${D1.slice(0, 12)}  ${D2.slice(0, 12)}  OFFLINE  3 min ago  bad-signature: altered`,
      `d1      line-1  downloading  [#####.....]  50%  ${D1.slice(0, 12)}  ${D2.slice(0, 12)}  online   12 s ago`,
      '',
      'ROLLOUT  STATE    WAVE        OK  FAILED  PENDING  OFFLINE  LAST EVENT',
      'r1       waiting  1/2 canary  1   0       1        0        published: release seq 3 published',
      '  r1 waits on 1: d1 (downloading 50%, last seen 12 s ago)',
      '',
      'q or Ctrl-C quits',
    ]);
    // Group filter and colour: offline rows dimmed, rejected in red.
    const coloured = renderScreen(view.snapshot('line-2'), { group: 'line-2', colour: true, columns: 60 });
    expect(coloured[0]).toContain('(group line-2)');
    const strip = (l: string): string => l.replace(/\x1b\[[0-9;]*m/g, '');
    const d2 = coloured.find((l) => strip(l).startsWith('d2 '))!;
    expect(d2).toContain('\x1b[2mline-2'); // offline: dim
    expect(coloured.every((l) => l.replace(/\x1b\[[0-9;]*m/g, '').length <= 60)).toBe(true);
    expect(d2).toContain('\x1b[1;31mrejected'); // but the refusal stays red
    // A short terminal: the table is cut, attention first, and says how many are left out.
    for (let i = 3; i < 30; i++) view.handle(...statusMsg(status(`d${i}`)), true);
    const short = renderScreen(view.snapshot(), { rows: 20 });
    expect(short.length).toBeLessThanOrEqual(20);
    expect(short.find((l) => l.startsWith('DEVICE'))).toBeDefined();
    expect(short[short.indexOf(short.find((l) => l.startsWith('DEVICE'))!) + 1]).toMatch(/^d2 /);
    expect(short).toContain('... and 22 more device(s) (narrow with --group)');
  });

  it('TTY mode redraws in place, at most every interval, and restores the terminal', async () => {
    const { view } = clockedView();
    const out = Object.assign(new PassThrough(), { isTTY: true, columns: 120 });
    let text = '';
    out.on('data', (b: Buffer) => (text += b.toString()));
    const w = new TerminalWatch(view, out, { intervalMs: 50 });
    w.start();
    for (let i = 0; i < 20; i++) view.handle(...statusMsg(status('d1', { state: 'downloading', progress: i / 20 })), false);
    await new Promise((r) => setTimeout(r, 120));
    w.stop();
    const draws = text.split('\x1b[H').length - 1;
    expect(draws).toBeGreaterThanOrEqual(2);
    expect(draws).toBeLessThanOrEqual(4);
    expect(text.startsWith('\x1b[?1049h')).toBe(true);
    expect(text.endsWith('\x1b[?25h\x1b[?1049l')).toBe(true);
    expect(describeChange({ kind: 'device', device: 'x', prev: null, row: null, retained: false }, T0)).toBe('2025-03-01T12:00:00.000Z device x removed (its retained status and presence were cleared)');
    expect(progressBar(1)).toBe('[##########] 100%');
  });
});
