import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { startDashboard } from '../../operator/dashboard-server.ts';
import { silentLogger } from '../../util/log.ts';
import { clockedView, D2, presenceMsg, rolloutMsg, rolloutStatus, status, statusMsg, T0 } from './helpers.ts';
import { runPage } from './page-dom.ts';

const CHROMIUM = '/usr/bin/chromium';

describe('dashboard page script', () => {
  it('renders the snapshot and the changes: attention cards, offline rows, rollouts, group filter', () => {
    const { view } = clockedView();
    view.handle(...statusMsg(status('d1', { state: 'ok' })), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    view.handle(...statusMsg(status('d2', { state: 'rolled_back', group: 'line-2', target: D2, reason: 'health-check-failed', message: '<b>switched back</b>' })), true);
    view.handle(...presenceMsg('d2', 'offline'), true);
    view.handle(...rolloutMsg(rolloutStatus('r1')), true);
    const s = view.snapshot();
    const { els, send } = runPage();
    send('snapshot', { time: s.time, devices: s.devices, rollouts: s.rollouts });
    const rows = els.get('devices')!.children;
    // Needing attention first; the rolled-back, offline device is highlighted and greyed.
    expect(rows.map((r) => r.dataset.device)).toEqual(['d2', 'd1']);
    expect(rows[0].className).toBe('attention offline');
    expect(rows[0].text()).toContain('health-check-failed');
    expect(rows[0].text()).toContain('<b>switched back</b>'); // as text, never markup
    expect(els.get('alerts')!.text()).toContain('d2 [line-2]: ROLLED BACK');
    expect(els.get('counts')!.text()).toContain('1 offline');
    expect(els.get('rollouts')!.text()).toContain('r1');
    // Who the running rollout waits on, with last seen (d2 failed: it is a failure, not waited on).
    expect(els.get('rollouts')!.text()).toContain('waits on: d1 (ok, 0 s ago)');
    expect(els.get('group')!.options.map((o) => o.value)).toEqual(['', 'line-1', 'line-2']);
    expect(els.get('conn')!.textContent).toBe('live');
    // A change: d1 goes downloading; a removed device disappears.
    send('device', { device: 'd1', row: { ...s.devices.find((d) => d.device === 'd1'), state: 'downloading', progress: 0.5 }, time: T0 });
    expect(els.get('devices')!.children[1].text()).toContain('50 %');
    send('device', { device: 'd2', row: null, time: T0 });
    expect(els.get('devices')!.children.map((r) => r.dataset.device)).toEqual(['d1']);
    // The group filter from the address.
    const other = runPage({ search: '?group=line-2' });
    other.send('snapshot', { time: s.time, devices: s.devices, rollouts: s.rollouts });
    expect(other.els.get('devices')!.children.map((r) => r.dataset.device)).toEqual(['d2']);
    expect(other.els.get('rollouts')!.text()).toContain('no rollouts');
  });

  // The page keeps its event stream open, so --timeout (not --virtual-time-budget) ends the load.
  it.skipIf(!existsSync(CHROMIUM))('renders in headless Chromium from the live server', async () => {
    const { view } = clockedView();
    view.handle(...statusMsg(status('d2', { state: 'rolled_back', reason: 'health-check-failed' })), true);
    const dash = await startDashboard({ view, port: 0, log: silentLogger, refreshMs: 0 });
    try {
      const dom = await new Promise<string>((resolve, reject) => {
        const profile = mkdtempSync(path.join(os.tmpdir(), 'fleet-chromium-'));
        execFile(
          CHROMIUM,
          [
            '--headless',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-quic',
            '--no-first-run',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
            `--user-data-dir=${profile}`,
            '--timeout=4000',
            '--dump-dom',
            dash.url,
          ],
          { timeout: 30_000 },
          (e, stdout) => {
            rmSync(profile, { recursive: true, force: true });
            if (e) reject(e);
            else resolve(stdout);
          },
        );
      });
      // First paint comes from the snapshot in the page (the dump is taken at load, before the stream's).
      expect(dom).toMatch(/<td[^>]*>d2<\/td>/);
      expect(dom).toContain('ROLLED BACK');
      expect(dom).toContain('health-check-failed');
    } finally {
      await dash.close();
    }
  });
});
if (!existsSync(CHROMIUM)) console.log('dashboard page: /usr/bin/chromium not found; headless browser rendering skipped (apt-get install chromium; .ci/run installs it)');
