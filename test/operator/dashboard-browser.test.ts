import { existsSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterEach, describe, expect, it } from 'vitest';
import { startDashboard, type RunningDashboard } from '../../operator/dashboard-server.ts';
import { FleetView, followFleet } from '../../operator/fleet-view.ts';
import { silentLogger } from '../../util/log.ts';
import { connect, GROUP, topics, type Fixture } from '../support/harness.ts';
import { controller, plan, setup, wave, type Run } from '../rollout/aedes-helpers.ts';

const CHROMIUM = '/usr/bin/chromium';

let f: Fixture | undefined;
let dash: RunningDashboard | undefined;
let browser: Browser | undefined;
let run: Run | undefined;
afterEach(async () => {
  await browser?.close();
  browser = undefined;
  await run?.ctl.stop();
  run = undefined;
  await dash?.close();
  dash = undefined;
  await f?.close();
  f = undefined;
});

interface ShownDevice { device: string; state: string; running: string }
// The page's DOM as far as these tests read it (the project compiles without the DOM library).
interface Cell { textContent: string | null; querySelector(sel: string): Cell | null }
interface Row { dataset: Record<string, string | undefined>; cells: ArrayLike<Cell> & Iterable<Cell> }
declare const document: { querySelectorAll(sel: string): ArrayLike<Row> & Iterable<Row>; querySelector(sel: string): Cell | null; getElementById(id: string): Cell | null };

describe('the dashboard in a real browser (playwright-core, Debian chromium)', () => {
  it.skipIf(!existsSync(CHROMIUM))('follows a two-wave rollout to three devices over Aedes, live over SSE, until all three are ok on the new digest', async () => {
    // b1 is the canary; b2, b3 the line. The plan carries the full model, so the releases say what shipping it whole would cost.
    const { fx } = await setup('dashboard-browser', [['b1', 'canary'], ['b2', GROUP], ['b3', GROUP]]);
    f = fx;
    const view = new FleetView(topics);
    await followFleet(view, await connect(fx, 'test-dashboard'));
    dash = await startDashboard({ view, port: 0, log: silentLogger, refreshMs: 200 });

    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] });
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    await page.goto(dash.url);
    await page.waitForFunction(() => document.getElementById('conn')?.textContent === 'live');
    const shown = (): Promise<ShownDevice[]> => page.evaluate(() => [...document.querySelectorAll('#devices tr[data-device]')].map((tr) => ({
      device: tr.dataset.device ?? '', state: tr.cells[2]?.querySelector('.st')?.textContent ?? '', running: tr.cells[4]?.textContent ?? '',
    })));
    expect((await shown()).map((d) => [d.device, d.state])).toEqual([['b1', 'idle'], ['b2', 'idle'], ['b3', 'idle']]);

    // The page is open; the rollout starts now, so everything after this reaches it as Server-Sent Events.
    run = await controller(fx, plan([wave('canary'), wave(GROUP)], { full: true }));
    const short = fx.update.targetDigest.slice(0, 12);
    await page.waitForFunction((s) => {
      const rows = [...document.querySelectorAll('#devices tr[data-device]')];
      return rows.length === 3 && rows.every((tr) => tr.cells[2]?.querySelector('.st')?.textContent === 'ok' && tr.cells[4]?.textContent === s);
    }, short, { timeout: 60_000 });
    expect(await shown()).toEqual(['b1', 'b2', 'b3'].map((device) => ({ device, state: 'ok', running: short })));
    expect((await run.ctl.done()).state).toBe('completed');

    // The rollout with its waves: group, thresholds, progress, state.
    await page.waitForFunction(() => document.querySelector('#rollouts .st')?.textContent === 'completed', undefined, { timeout: 10_000 });
    const waves = await page.$$eval('#rollouts tr.waves tr[data-wave]', (rows) => rows.map((r) => [...(r as unknown as Row).cells].map((c) => c.textContent ?? '')));
    expect(waves).toHaveLength(2);
    expect(waves[0][0]).toBe('wave 1: canary');
    expect(waves[0][1]).toContain('ok >= 100 %, halt at 1 failed, soak 0 s, timeout 60 s');
    expect(waves[0][2]).toContain('1/1 ok');
    expect(waves[0][3]).toMatch(/^done \(release \d+\)$/);
    expect(waves[1][0]).toBe(`wave 2: ${GROUP}`);
    expect(waves[1][2]).toContain('2/2 ok');
    expect(waves[1][3]).toMatch(/^done/);

    // Delivery: bytes delivered against the full model (the release's full-model step), per device and in total.
    const delivery = await page.$$eval('#delivery tr', (rows) => rows.map((r) => [...(r as unknown as Row).cells].map((c) => c.textContent ?? '')));
    expect(delivery.map((r) => r[0])).toEqual(['b1', 'b2', 'b3', 'total (3 devices)']);
    for (const r of delivery.slice(0, 3)) {
      expect(r[3]).not.toBe('-'); // the update payload size
      expect(r[4]).toMatch(/KiB|MiB/); // the full model
      expect(r[5]).toMatch(/^\d+(\.\d)? %$/);
    }
    expect(delivery[3][5]).toMatch(/^\d+(\.\d)? % \(saved .+\)$/);
    const rows = view.devices();
    const full = fx.update.target.byteLength;
    expect(rows.every((d) => d.modelBytes !== null && Math.abs(d.modelBytes - full) < 1024)).toBe(true);

    const dir = mkdtempSync(path.join(os.tmpdir(), 'fleet-dashboard-browser-'));
    const shot = path.join(dir, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`dashboard screenshot: ${shot}`);
    expect(existsSync(shot)).toBe(true);
    expect(errors).toEqual([]);
  }, 120_000);
});
if (!existsSync(CHROMIUM)) console.log(`dashboard browser test: ${CHROMIUM} not found; skipped (apt-get install chromium)`);
