import type { ChildProcess } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { JsonWatch, type JsonChangeLine } from '../../operator/json-watch.ts';
import type { DeviceRow, RolloutRow } from '../../operator/fleet-view.ts';
import { createFixture, GROUP, publish, spawnFleet, startAgent, type Fixture } from '../support/harness.ts';
import { until } from '../support/wait.ts';
import { clockedView, D2, presenceMsg, rolloutMsg, rolloutStatus, status, statusMsg, T0 } from './helpers.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

function collect(): { out: PassThrough; lines: () => JsonChangeLine[]; raw: () => string } {
  const out = new PassThrough();
  let text = '';
  out.on('data', (b: Buffer) => (text += b.toString()));
  return {
    out,
    raw: () => text,
    lines: () =>
      text
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as JsonChangeLine),
  };
}

describe('fleet watch --json', () => {
  it('writes one JSON line per device or rollout change, the view rows, filtered by group', () => {
    const { view, clock } = clockedView();
    const c = collect();
    const w = new JsonWatch(view, c.out, { group: 'line-1', refreshMs: 0 });
    w.start();
    view.handle(...statusMsg(status('d1')), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    view.handle(...statusMsg(status('d9', { group: 'line-9' })), true); // another group: no line
    view.handle(...statusMsg(status('d1')), true); // identical re-delivery: no change, no line
    clock.t += 5000;
    view.handle(...statusMsg(status('d1', { state: 'downloading', target: D2, progress: 0.5, time: new Date(clock.t).toISOString() })), false);
    view.handle(...rolloutMsg(rolloutStatus('r1')), false); // has a wave for line-1
    clock.t += 5000;
    view.handle(...statusMsg(status('d1', { state: 'ok', running: D2, target: D2, progress: 1, time: new Date(clock.t).toISOString() })), false);
    view.handle(statusMsg(status('d1'))[0], new Uint8Array(0), false); // status cleared: presence only, state null
    w.stop();
    view.handle(...statusMsg(status('d1')), false); // after stop: nothing
    // One object per line, each line complete JSON.
    expect(c.raw().endsWith('\n')).toBe(true);
    const lines = c.lines();
    expect(lines.map((l) => [l.kind, l.device ?? l.rollout, l.retained, (l.row as DeviceRow | RolloutRow | null)?.state ?? null])).toEqual([
      ['device', 'd1', true, 'idle'],
      ['device', 'd1', true, 'idle'], // presence: online
      ['device', 'd1', false, 'downloading'],
      ['rollout', 'r1', false, 'waiting'],
      ['device', 'd1', false, 'ok'],
      ['device', 'd1', false, null],
    ]);
    expect(lines[1].row).toMatchObject({ online: true });
    expect(lines[2]).toMatchObject({ time: new Date(T0 + 5000).toISOString(), row: { progress: 0.5, target: D2, group: 'line-1' } });
    expect(lines[3].row).toMatchObject({ rollout: 'r1', wave: 1, waves: 2, counts: { ok: 1, total: 2 } });
    expect((lines[3].row as RolloutRow).waveList.map((x) => x.group)).toEqual(['canary', 'line-1']);
    expect(lines[4].row).toMatchObject({ state: 'ok', running: D2 });
    // The rows are exactly what the view model holds (the dashboard sends the same).
    expect(w.lines).toBe(6);
  });

  it('the CLI in a pipe over Aedes: retained lines first, then downloading ... ok for a publish', async () => {
    f = own(await createFixture('operator-json-watch'));
    await startAgent(f, 'dev-j');
    const child: ChildProcess = spawnFleet(f, 'watch-json', ['watch', '--broker', f.url, '--json', '--group', GROUP]);
    let text = '';
    child.stdout!.on('data', (b: Buffer) => (text += b.toString()));
    const parsed = (): JsonChangeLine[] =>
      text
        .split('\n')
        .slice(0, -1)
        .map((l) => JSON.parse(l) as JsonChangeLine);
    await until(() => parsed().find((l) => l.device === 'dev-j' && (l.row as DeviceRow | null)?.state === 'idle'), { what: 'the retained idle line', context: () => `got:\n${text}` });
    expect(parsed()[0]).toMatchObject({ kind: 'device', device: 'dev-j', retained: true });
    const fx = f;
    await publish(fx);
    const ok = await until(() => parsed().find((l) => (l.row as DeviceRow | null)?.state === 'ok'), { what: 'an ok line', context: () => `got:\n${text}` });
    expect(ok).toMatchObject({ kind: 'device', device: 'dev-j', retained: false, row: { group: GROUP, running: fx.update.targetDigest, online: true } });
    const states = parsed().map((l) => (l.row as DeviceRow).state);
    expect(states).toContain('downloading');
    expect(states.indexOf('downloading')).toBeLessThan(states.indexOf('ok'));
    // Every line is one complete object.
    expect(text.endsWith('\n')).toBe(true);
    expect(text.split('\n').filter(Boolean)).toHaveLength(parsed().length);
  });
});
