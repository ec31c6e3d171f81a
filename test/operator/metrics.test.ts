import { describe, expect, it } from 'vitest';
import { escapeLabelValue, renderMetrics } from '../../operator/metrics.ts';
import { clockedView, presenceMsg, rolloutMsg, rolloutStatus, status, statusMsg } from './helpers.ts';

describe('Prometheus metrics from the view', () => {
  it('renders the exact lines for a small fleet and one rollout', () => {
    const { view } = clockedView();
    view.handle(...statusMsg(status('d1', { state: 'ok', wire: { bytesIn: 12345, bytesOut: 10, connects: 2 }, badChunks: 2 })), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    // (A group outside the identifier rule makes the status malformed: skipped before metrics; escapeLabelValue has its own test.)
    view.handle(...statusMsg(status('d2', { state: 'rolled_back', group: 'line-2', wire: null })), true);
    view.handle(...presenceMsg('d2', 'offline'), true);
    view.handle(...rolloutMsg(rolloutStatus('r1')), true);
    const text = renderMetrics(view.snapshot());
    const lines = text.split('\n');
    expect(text.endsWith('\n')).toBe(true);
    const g = 'line-2';
    for (const l of [
      '# HELP fleet_dashboard_up The dashboard is running.',
      '# TYPE fleet_dashboard_up gauge',
      'fleet_dashboard_up 1',
      '# TYPE fleet_devices gauge',
      'fleet_devices{state="ok",group="line-1"} 1',
      'fleet_devices{state="rolled_back",group="line-1"} 0',
      `fleet_devices{state="rolled_back",group="${g}"} 1`,
      `fleet_devices{state="ok",group="${g}"} 0`,
      '# TYPE fleet_devices_online gauge',
      'fleet_devices_online{group="line-1"} 1',
      `fleet_devices_online{group="${g}"} 0`,
      `fleet_devices_offline{group="${g}"} 1`,
      'fleet_devices_silent{group="line-1"} 0',
      '# TYPE fleet_device_bytes_received_total counter',
      'fleet_device_bytes_received_total{device="d1"} 12345',
      '# TYPE fleet_device_bad_chunks_total counter',
      'fleet_device_bad_chunks_total{device="d1"} 2',
      'fleet_device_bad_chunks_total{device="d2"} 0',
      'fleet_device_last_seen_seconds{device="d1"} 1740830400',
      '# TYPE fleet_rollout_devices gauge',
      'fleet_rollout_devices{rollout="r1",wave="1",outcome="ok"} 1',
      'fleet_rollout_devices{rollout="r1",wave="1",outcome="failed"} 0',
      'fleet_rollout_devices{rollout="r1",wave="1",outcome="pending"} 1',
      'fleet_rollout_devices{rollout="r1",wave="2",outcome="ok"} 0',
      '# TYPE fleet_rollout_state gauge',
      'fleet_rollout_state{rollout="r1",state="waiting"} 1',
      'fleet_rollout_state{rollout="r1",state="halted"} 0',
      'fleet_rollout_wave{rollout="r1"} 1',
    ])
      expect(lines).toContain(l);
    // No bytes series for a device that does not report its wire counters.
    expect(text).not.toContain('fleet_device_bytes_received_total{device="d2"}');
    // Every sample line is `name{labels} value` and every family has HELP and TYPE before its samples.
    const families = new Set<string>();
    for (const l of lines.filter(Boolean)) {
      if (l.startsWith('# TYPE ')) families.add(l.split(' ')[2]);
      else if (!l.startsWith('# HELP ')) {
        expect(l).toMatch(/^([a-z_]+)(\{([a-z_]+="([^"\\\n]|\\["\\n])*",?)*\})? -?[0-9.e+]+$/);
        expect(families.has(/^[a-z_]+/.exec(l)![0])).toBe(true);
      }
    }
    // Groups sorted, states in protocol order: the whole fleet_devices block for line-1.
    const block = lines.filter((l) => l.startsWith('fleet_devices{') && l.includes('group="line-1"'));
    expect(block).toEqual(['idle', 'downloading', 'verifying', 'applying', 'testing', 'ok', 'rolled_back', 'rejected', 'failed'].map((s) => `fleet_devices{state="${s}",group="line-1"} ${s === 'ok' ? 1 : 0}`));
  });

  it('escapes label values per the text format', () => {
    expect(escapeLabelValue('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
  });

  it('an empty fleet still says the dashboard is up', () => {
    const { view } = clockedView();
    const text = renderMetrics(view.snapshot());
    expect(text).toContain('fleet_dashboard_up 1\n');
    expect(text.split('\n').filter((l) => l && !l.startsWith('#'))).toEqual(['fleet_dashboard_up 1', 'fleet_device_statuses_malformed 0']);
  });
});
