import { describe, expect, it } from 'vitest';
import { clockedView, D2, rolloutMsg, rolloutStatus, status, statusMsg, T0 } from './helpers.ts';
import { runPage, type El } from './page-dom.ts';

/** The page run on a snapshot at `now`: its elements by id. */
function render(snapshot: unknown, now: number): Map<string, El> {
  const page = runPage({ now });
  page.send('snapshot', snapshot);
  return page.els;
}

const waveCells = (els: Map<string, El>): string[][] => els.get('rollouts')!.children[1].children[0].children[0].children.map((row) => row.children.map((c) => c.text().trim()));

describe('dashboard page: waves and delivery', () => {
  it('shows each wave with its thresholds, ok/total, and where the soak or the timeout stands', () => {
    const { view } = clockedView();
    const soaking = rolloutStatus('r1', { state: 'soaking' });
    soaking.waves[0].counts = { total: 2, ok: 2, failed: 0, pending: 0, offline: 0, skipped: 0 };
    soaking.waves[0].release = { seq: 7, target: D2 };
    soaking.waves[0].publishedAt = new Date(T0 - 100_000).toISOString();
    soaking.waves[0].thresholdAt = new Date(T0 - 20_000).toISOString();
    view.handle(...rolloutMsg(soaking), true);
    const s = view.snapshot();
    let cells = waveCells(render({ time: s.time, devices: s.devices, rollouts: s.rollouts }, T0));
    expect(cells[0]).toEqual(['wave 1: canary', 'ok >= 100 %, halt at 1 failed, soak 60 s, timeout 10 min, offline: block', '2/2 ok', 'soaking: 40 s of 60 s left (release 7)']);
    expect(cells[1]).toEqual(['wave 2: line-1', 'ok >= 100 %, halt at 1 failed, soak 60 s, timeout 10 min, offline: block', '-', 'not started']);
    // Waiting, before the threshold: the timeout runs from the release.
    const waiting = rolloutStatus('r2');
    waiting.waves[0].release = { seq: 8, target: D2 };
    waiting.waves[0].publishedAt = new Date(T0 - 60_000).toISOString();
    view.handle(...rolloutMsg(waiting), true);
    const s2 = view.snapshot();
    const els = render({ time: s2.time, devices: s2.devices, rollouts: s2.rollouts.filter((r) => r.rollout === 'r2') }, T0);
    cells = waveCells(els);
    expect(cells[0][2]).toBe('1/2 ok, 1 pending');
    expect(cells[0][3]).toBe('waiting: timeout in 9 min (release 8)');
  });

  it('delivery: without a full-model step it shows the bytes and the update payload, and says the model size is unknown', () => {
    const { view } = clockedView();
    view.handle(...statusMsg(status('d1', { state: 'ok', totalBytes: 5000, bytes: 5000, wire: { bytesIn: 6144, bytesOut: 10, connects: 1 } })), true);
    view.handle(...statusMsg(status('d2', { state: 'downloading', totalBytes: 5000, bytes: 2048, wire: null })), true);
    const s = view.snapshot();
    const rows = render({ time: s.time, devices: s.devices, rollouts: [] }, T0)
      .get('delivery')!
      .children.map((r) => r.children.map((c) => c.text()));
    expect(rows[0]).toEqual(['d1', 'line-1', '6.0 KiB', '4.9 KiB', '-', 'update 4.9 KiB']);
    expect(rows[1]).toEqual(['d2', 'line-1', '2.0 KiB (payload)', '4.9 KiB', '-', 'update 4.9 KiB']);
    expect(rows[2]).toEqual(['total (2 devices)', '', '8.0 KiB', '', 'unknown (no full-model step in the releases)', '-']);
  });
});
