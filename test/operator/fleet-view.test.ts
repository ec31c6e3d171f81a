import { describe, expect, it } from 'vitest';
import { ago } from '../../operator/fleet-view.ts';
import { clockedView, D1, D2, presenceMsg, rolloutMsg, rolloutStatus, status, statusMsg, T0, topics } from './helpers.ts';

const iso = (t: number): string => new Date(t).toISOString();

describe('FleetView: devices', () => {
  it('follows status transitions and reports each as a change with the previous row', () => {
    const { view } = clockedView();
    const c1 = view.handle(...statusMsg(status('d1')), true);
    expect(c1).toHaveLength(1);
    expect(c1[0]).toMatchObject({ kind: 'device', device: 'd1', prev: null, retained: true, row: { state: 'idle', group: 'line-1', running: D1, online: null } });
    const c2 = view.handle(...statusMsg(status('d1', { state: 'downloading', target: D2, seq: 3, progress: 0.5, bytes: 50, totalBytes: 100 })), false);
    expect(c2[0]).toMatchObject({ prev: { state: 'idle' }, row: { state: 'downloading', progress: 0.5, target: D2, seq: 3 }, retained: false });
    view.handle(...statusMsg(status('d1', { state: 'ok', running: D2, target: D2, seq: 3, progress: 1 })), false);
    expect(view.device('d1')).toMatchObject({ state: 'ok', running: D2, attention: false });
    expect(view.snapshot().counts).toEqual({ ok: 1 });
  });

  it('an identical re-delivery changes nothing', () => {
    const { view } = clockedView();
    const msg = statusMsg(status('d1', { state: 'ok' }));
    expect(view.handle(...msg, true)).toHaveLength(1);
    expect(view.handle(...msg, true)).toEqual([]);
    expect(view.handle(...presenceMsg('d1', 'online'), true)).toHaveLength(1);
    expect(view.handle(...presenceMsg('d1', 'online'), true)).toEqual([]);
  });

  it('goes offline on presence offline and keeps the last status and last seen', () => {
    const { view, clock } = clockedView();
    view.handle(...statusMsg(status('d1', { state: 'downloading', progress: 0.2 })), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    expect(view.device('d1')).toMatchObject({ online: true, lastSeen: T0 });
    clock.t = T0 + 30_000;
    const c = view.handle(...presenceMsg('d1', 'offline'), false);
    expect(c[0]).toMatchObject({ prev: { online: true }, row: { online: false, state: 'downloading', progress: 0.2, lastSeen: T0 } });
    expect(ago(view.device('d1')!.lastSeen, clock.t)).toBe('30 s ago');
    expect(view.snapshot()).toMatchObject({ online: 0, offline: 1 });
    // Offline is not "silent": the view says offline instead.
    clock.t = T0 + 3_600_000;
    view.refresh();
    expect(view.device('d1')!.silent).toBe(false);
  });

  it('last seen: the status time (never in the future), or a live message, whichever is later', () => {
    const { view, clock } = clockedView();
    view.handle(...statusMsg(status('d1', { time: iso(T0 - 12_000) })), true);
    expect(view.device('d1')!.lastSeen).toBe(T0 - 12_000);
    expect(ago(view.device('d1')!.lastSeen, clock.t)).toBe('12 s ago');
    // A retained presence is no sign of life now; a live one is.
    view.handle(...presenceMsg('d1', 'online'), true);
    expect(view.device('d1')!.lastSeen).toBe(T0 - 12_000);
    clock.t = T0 + 5000;
    view.handle(...presenceMsg('d1', 'offline'), false);
    view.handle(...presenceMsg('d1', 'online'), false);
    expect(view.device('d1')!.lastSeen).toBe(T0 + 5000);
    // A device clock ahead of ours is clamped to now.
    view.handle(...statusMsg(status('d2', { time: iso(T0 + 3_600_000) })), true);
    expect(view.device('d2')!.lastSeen).toBe(clock.t);
    // Presence only: never seen.
    view.handle(...presenceMsg('d3', 'offline'), true);
    expect(view.device('d3')).toMatchObject({ state: null, lastSeen: null, online: false });
    expect(ago(null, clock.t)).toBe('never');
    expect(ago(T0 - 150_000, T0)).toBe('2 min ago');
  });

  it('surfaces rolled_back, rejected and rollback with their reason and message', () => {
    const { view } = clockedView();
    const c = view.handle(...statusMsg(status('d1', { state: 'rolled_back', target: D2, seq: 4, reason: 'health-check-failed', message: 'the new model failed its health check; switched back' })), false);
    expect(c[0].kind === 'device' && c[0].row).toMatchObject({ state: 'rolled_back', attention: true, reason: 'health-check-failed', message: 'the new model failed its health check; switched back' });
    view.handle(...statusMsg(status('d2', { state: 'rejected', reason: 'bad-signature', message: 'signature does not verify' })), false);
    expect(view.device('d2')).toMatchObject({ attention: true, reason: 'bad-signature' });
    view.handle(...statusMsg(status('d3', { state: 'ok', rollback: true })), false);
    expect(view.device('d3')).toMatchObject({ rollback: true, attention: false });
  });

  it('marks a device silent when it is mid-update and nothing comes, and clears it when a status arrives', () => {
    const { view, clock } = clockedView(60_000);
    view.handle(...presenceMsg('d1', 'online'), false);
    view.handle(...statusMsg(status('d1', { state: 'downloading', progress: 0.1 })), false);
    clock.t = T0 + 59_000;
    expect(view.refresh()).toEqual([]);
    clock.t = T0 + 61_000;
    const c = view.refresh();
    expect(c).toHaveLength(1);
    expect(c[0]).toMatchObject({ row: { silent: true }, prev: { silent: false } });
    view.handle(...statusMsg(status('d1', { state: 'downloading', progress: 0.2, time: iso(clock.t) })), false);
    expect(view.device('d1')!.silent).toBe(false);
    // An ok device never publishes on its own: it is not silent.
    view.handle(...statusMsg(status('d2', { state: 'ok', time: iso(T0 - 86_400_000) })), true);
    view.refresh();
    expect(view.device('d2')!.silent).toBe(false);
  });

  it('ignores junk: bad JSON, unknown states, another device id, bad presence, foreign topics', () => {
    const { view } = clockedView();
    view.handle(...statusMsg(status('d1', { state: 'ok' })), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
    expect(view.handle(topics.status('d1'), enc('{not json'), false)).toEqual([]);
    expect(view.handle(topics.status('d1'), enc(JSON.stringify({ ...status('d1'), state: 'exploded' })), false)).toEqual([]);
    expect(view.handle(topics.status('d1'), enc(JSON.stringify(status('other'))), false)).toEqual([]);
    expect(view.handle(topics.status('d1'), enc('null'), false)).toEqual([]);
    expect(view.handle(topics.presence('d1'), enc('maybe'), false)).toEqual([]);
    expect(view.handle('elsewhere/devices/d1/status', enc('{}'), false)).toEqual([]);
    expect(view.handle(topics.rolloutStatus('r1'), enc('[1,2]'), false)).toEqual([]);
    expect(view.handle(topics.rolloutStatus('r1'), enc(JSON.stringify(rolloutStatus('other'))), false)).toEqual([]);
    // Wrong field types do not crash the view: the status is malformed, skipped and counted.
    const skipped: string[] = [];
    view.onSkipped((d) => skipped.push(d));
    expect(view.handle(topics.status('d2'), enc(JSON.stringify({ ...status('d2'), progress: 'lots', wire: 7, group: 42 })), false)).toEqual([]);
    expect(view.device('d2')).toBeNull();
    expect(skipped).toEqual(['d2']);
    expect(view.snapshot().malformed).toBe(2); // d1's latest ('null') and d2's
    expect(view.device('d1')).toMatchObject({ state: 'ok', online: true });
    expect(view.rollouts()).toEqual([]);
  });

  it('forgets a device whose status and presence are cleared', () => {
    const { view } = clockedView();
    view.handle(...statusMsg(status('d1')), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    view.handle(topics.status('d1'), new Uint8Array(0), false);
    expect(view.device('d1')).toMatchObject({ state: null, online: true });
    const c = view.handle(topics.presence('d1'), new Uint8Array(0), false);
    expect(c[0]).toMatchObject({ kind: 'device', row: null });
    expect(view.devices()).toEqual([]);
  });

  it('filters by group and tells the listeners', () => {
    const { view } = clockedView();
    const seen: string[] = [];
    const off = view.onChange((cs) => seen.push(...cs.map((c) => (c.kind === 'device' ? c.device : c.rollout))));
    view.handle(...statusMsg(status('d1')), true);
    view.handle(...statusMsg(status('d2', { group: 'line-2' })), true);
    off();
    view.handle(...statusMsg(status('d3')), true);
    expect(seen).toEqual(['d1', 'd2']);
    expect(view.devices('line-2').map((d) => d.device)).toEqual(['d2']);
    expect(view.snapshot().groups).toEqual(['line-1', 'line-2']);
  });
});

describe('FleetView: rollouts', () => {
  it('parses the rollout status into a row: state, wave k/n, counts, last event', () => {
    const { view } = clockedView();
    const c = view.handle(...rolloutMsg(rolloutStatus('r1')), true);
    expect(c[0]).toMatchObject({ kind: 'rollout', rollout: 'r1', prev: null });
    expect(view.rollout('r1')).toMatchObject({
      state: 'waiting',
      terminal: false,
      wave: 1,
      waves: 2,
      group: 'canary',
      model: 'm',
      target: D2,
      counts: { total: 2, ok: 1, failed: 0, pending: 1, offline: 0, skipped: 0 },
      lastEvent: { type: 'published', reason: 'release seq 3 published', device: null },
    });
    expect(view.rollout('r1')!.waveList[1]).toMatchObject({ group: 'line-1', started: false });
    const halted = rolloutStatus('r1', { state: 'halted', reason: 'failure threshold crossed in wave 1' });
    halted.waves[0].failures = [{ device: 'd2', state: 'rolled_back', reason: 'health-check-failed' }];
    view.handle(...rolloutMsg(halted), false);
    expect(view.rollout('r1')).toMatchObject({ state: 'halted', terminal: true, reason: 'failure threshold crossed in wave 1' });
    expect(view.rollout('r1')!.waveList[0].failures).toEqual([{ device: 'd2', state: 'rolled_back', reason: 'health-check-failed' }]);
    expect(view.handle(...rolloutMsg(halted), true)).toEqual([]);
  });

  it('lists running rollouts first, filters by group, forgets a cleared one', () => {
    const { view } = clockedView();
    view.handle(...rolloutMsg(rolloutStatus('old', { state: 'completed' })), true);
    view.handle(...rolloutMsg(rolloutStatus('new')), true);
    expect(view.rollouts().map((r) => r.rollout)).toEqual(['new', 'old']);
    expect(view.rollouts('canary')).toHaveLength(2);
    expect(view.rollouts('nowhere')).toEqual([]);
    view.handle(topics.rolloutStatus('old'), new Uint8Array(0), false);
    expect(view.rollouts().map((r) => r.rollout)).toEqual(['new']);
  });
});
