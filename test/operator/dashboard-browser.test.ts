import { existsSync, mkdirSync, mkdtempSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { startDashboard, type RunningDashboard } from '../../operator/dashboard-server.ts';
import { FleetView, followFleet } from '../../operator/fleet-view.ts';
import { silentLogger } from '../../util/log.ts';
import { connect, createFixture, GROUP, MODEL, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { controller, plan, setup, wave, type Run } from '../rollout/aedes-helpers.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';

const CHROMIUM = '/usr/bin/chromium';

let f: Fixture | undefined;
let dash: RunningDashboard | undefined;
let browser: Browser | undefined;
let run: Run | undefined;
let broker: RunningBroker | undefined;
let brokerDir: string | undefined;
afterEach(async () => {
  await browser?.close();
  browser = undefined;
  await run?.ctl.stop();
  run = undefined;
  await dash?.close();
  dash = undefined;
  await f?.close();
  f = undefined;
  await broker?.close();
  broker = undefined;
  if (brokerDir) await fs.rm(brokerDir, { recursive: true, force: true });
  brokerDir = undefined;
});

/** Screenshots go to test-output/ (ignored by git) so they can be looked at after the run. */
const OUT = path.resolve(import.meta.dirname, '../../test-output');
const launch = (): Promise<Browser> => chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] });

/** Page errors, console errors and CSP violations (reported as console errors) end up here. */
function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  return errors;
}

interface ShownDevice {
  device: string;
  state: string;
  running: string;
}
// The page's DOM as far as these tests read it (the project compiles without the DOM library).
interface Cell {
  textContent: string | null;
  querySelector(sel: string): Cell | null;
}
interface Row {
  dataset: Record<string, string | undefined>;
  cells: ArrayLike<Cell> & Iterable<Cell>;
}
declare const document: { querySelectorAll(sel: string): ArrayLike<Row> & Iterable<Row>; querySelector(sel: string): Cell | null; getElementById(id: string): Cell | null };

/** Waits until the page shows all three devices ok on `short`; on a timeout says what the fleet was doing. */
async function allOk(page: Page, short: string, fleet: () => unknown): Promise<void> {
  try {
    await page.waitForFunction(
      (s) => {
        const rows = [...document.querySelectorAll('#devices tr[data-device]')];
        return rows.length === 3 && rows.every((tr) => tr.cells[2]?.querySelector('.st')?.textContent === 'ok' && tr.cells[4]?.textContent === s);
      },
      short,
      { timeout: 60_000 },
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}; fleet: ${JSON.stringify(fleet())}`, { cause: e });
  }
}

describe('the dashboard in a real browser (playwright-core, Debian chromium)', () => {
  it.skipIf(!existsSync(CHROMIUM))(
    'fed by MQTT over WebSocket with a viewer login: served by `fleet broker --http`, follows a rollout to three devices until all three are ok on the new digest, and reconnects by itself',
    async () => {
      // A broker with logins: devices, a rollout controller, and `screen`, a read-only viewer for the browser.
      brokerDir = mkdtempSync(path.join(os.tmpdir(), 'fleet-dashboard-ws-'));
      const users = path.join(brokerDir, 'users.json');
      const devices: Array<[string, string]> = [
        ['b1', 'canary'],
        ['b2', GROUP],
        ['b3', GROUP],
      ];
      await writeUsersFile(users, {
        users: [
          { name: 'screen', role: 'viewer', ...(await hashPassword('look-only')) },
          { name: 'ctl', role: 'rollout', ...(await hashPassword('ctl-pw')) },
          ...(await Promise.all(devices.map(async ([id, group]) => ({ name: id, role: 'device' as const, group, model: MODEL, ...(await hashPassword(`${id}-pw`)) })))),
        ],
      });
      broker = await startBroker({
        port: 0,
        dataDir: path.join(brokerDir, 'broker'),
        persistence: 'memory',
        log: silentLogger,
        auth: users,
        ws: { port: 0 },
        http: { port: 0, processMetrics: false },
      });
      const mqttUrl = (user: string, pw: string): string => `mqtt://${user}:${pw}@127.0.0.1:${broker!.port}`;
      // The fixture (keys, model, update) on that broker: the controller and the status watch log in as `ctl`, each device as itself.
      f = await createFixture('dashboard-ws', { externalUrl: mqttUrl('ctl', 'ctl-pw') });
      const fx = f;
      await fs.writeFile(path.join(fx.dir, 'update.cbor'), encodeUpdateFile(fx.update.payload));
      await fs.writeFile(path.join(fx.dir, 'target.safetensors'), fx.update.target);
      const watch = await StatusWatch.start(fx);
      for (const [id, group] of devices) {
        fx.url = mqttUrl(id, `${id}-pw`);
        await startAgent(fx, id, silentLogger, { group });
      }
      fx.url = mqttUrl('ctl', 'ctl-pw');
      for (const [id] of devices) await watch.until(id, (s) => s.state === 'idle');

      // The page, as the broker's HTTP listener serves it: nothing in it but where the WebSocket listener is.
      const pageUrl = broker.metricsUrl!.replace(/metrics$/, '');
      const html = await (await fetch(pageUrl)).text();
      expect(html).toContain(`"ws":"${broker.wsUrl}"`);
      expect(html).not.toContain('look-only');
      browser = await launch();
      const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
      const errors = watchErrors(page);
      const requests: string[] = [];
      page.on('request', (r) => {
        if (!r.url().startsWith('blob:')) requests.push(r.url()); // mqtt.js's keep-alive timer worker
      });
      const sockets: string[] = [];
      page.on('websocket', (w) => sockets.push(w.url()));
      await page.goto(pageUrl);
      await page.waitForSelector('#login', { state: 'visible' });
      expect(await page.textContent('#conn')).toBe('log in');
      // A wrong password is refused and the form comes back; the right one goes live.
      await page.fill('#user', 'screen');
      await page.fill('#pass', 'not-it');
      await page.click('#go');
      await page.waitForFunction(() => document.getElementById('conn')?.textContent === 'login refused', undefined, { timeout: 30_000 });
      await page.waitForSelector('#login', { state: 'visible' });
      errors.length = 0; // the refused WebSocket login is logged by the browser; nothing after this may be
      await page.fill('#pass', 'look-only');
      await page.click('#go');
      await page.waitForFunction(() => document.getElementById('conn')?.textContent === 'live', undefined, { timeout: 30_000 });
      const shown = (): Promise<ShownDevice[]> =>
        page.evaluate(() =>
          [...document.querySelectorAll('#devices tr[data-device]')].map((tr) => ({
            device: tr.dataset.device ?? '',
            state: tr.cells[2]?.querySelector('.st')?.textContent ?? '',
            running: tr.cells[4]?.textContent ?? '',
          })),
        );
      await page.waitForFunction(() => document.querySelectorAll('#devices tr[data-device]').length === 3, undefined, { timeout: 30_000 });
      expect((await shown()).map((d) => [d.device, d.state])).toEqual([
        ['b1', 'idle'],
        ['b2', 'idle'],
        ['b3', 'idle'],
      ]);

      // The rollout starts with the page open: everything after this reaches the browser over MQTT (ws://), folded by the bundled view model.
      run = await controller(fx, plan([wave('canary'), wave(GROUP)], { full: true }));
      const short = fx.update.targetDigest.slice(0, 12);
      await allOk(page, short, () => ({ devices: [...watch.latest.values()].map((d) => `${d.device} ${d.state} ${d.reason ?? ''}`), rollout: run?.ctl.status().state }));
      expect(await shown()).toEqual(['b1', 'b2', 'b3'].map((device) => ({ device, state: 'ok', running: short })));
      expect((await run.ctl.done()).state).toBe('completed');
      await page.waitForFunction(() => document.querySelector('#rollouts .st')?.textContent === 'completed', undefined, { timeout: 10_000 });
      const waves = await page.$$eval('#rollouts tr.waves tr[data-wave]', (rows) => rows.map((r) => [...(r as unknown as Row).cells].map((c) => c.textContent ?? '')));
      expect(waves.map((w) => [w[0], w[2].trim()])).toEqual([
        ['wave 1: canary', '1/1 ok'],
        [`wave 2: ${GROUP}`, '2/2 ok'],
      ]);
      expect(waves[0][1]).toContain('ok >= 100 %, halt at 1 failed');
      // Delivery against the full model: the viewer may read the releases, so the full-model size is known in the browser too.
      const delivery = await page.$$eval('#delivery tr', (rows) => rows.map((r) => [...(r as unknown as Row).cells].map((c) => c.textContent ?? '')));
      expect(delivery.map((r) => r[0])).toEqual(['b1', 'b2', 'b3', 'total (3 devices)']);
      expect(delivery[3][5]).toMatch(/^\d+(\.\d)? % \(saved .+\)$/);

      // The broker drops the page's connection: the page says so, reconnects by itself on a new socket and is live again with the same rows.
      const clients = (broker.aedes as unknown as { clients: Record<string, { id: string; close(): void }> }).clients;
      const pageClients = Object.values(clients).filter((c) => c.id.startsWith('fleet-dashboard-'));
      expect(pageClients).toHaveLength(1);
      pageClients[0].close();
      await page.waitForFunction(() => document.getElementById('conn')?.textContent === 'reconnecting...', undefined, { timeout: 30_000, polling: 20 });
      await page.waitForFunction(() => document.getElementById('conn')?.textContent === 'live', undefined, { timeout: 30_000 });
      expect(await shown()).toEqual(['b1', 'b2', 'b3'].map((device) => ({ device, state: 'ok', running: short })));
      // Nothing but the page, its script and the broker's WebSocket listener was asked for (a socket per login attempt and one more after the drop).
      expect(sockets.map((u) => u.replace(/\/$/, ''))).toEqual([broker.wsUrl, broker.wsUrl, broker.wsUrl]);
      const origins = new Set(requests.map((u) => new URL(u).origin));
      expect([...origins]).toEqual([new URL(pageUrl).origin]);
      expect(requests.map((u) => new URL(u).pathname).sort()).toEqual(['/', '/dashboard.js']);
      mkdirSync(OUT, { recursive: true });
      const shot = path.join(OUT, 'dashboard-ws.png');
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`dashboard screenshot (MQTT over WebSocket): ${shot}`);
      expect(existsSync(shot)).toBe(true);
      expect(errors).toEqual([]);
    },
    150_000,
  );

  it.skipIf(!existsSync(CHROMIUM))(
    'SSE mode (`fleet dashboard --broker`): follows a two-wave rollout to three devices over Aedes, live over SSE, until all three are ok on the new digest',
    async () => {
      // b1 is the canary; b2, b3 the line. The plan carries the full model, so the releases say what shipping it whole would cost.
      const { fx } = await setup('dashboard-browser', [
        ['b1', 'canary'],
        ['b2', GROUP],
        ['b3', GROUP],
      ]);
      f = fx;
      const view = new FleetView(topics);
      await followFleet(view, await connect(fx, 'test-dashboard'));
      dash = await startDashboard({ view, port: 0, log: silentLogger, refreshMs: 200 });

      browser = await launch();
      const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
      const errors = watchErrors(page);
      await page.goto(dash.url);
      await page.waitForFunction(() => document.getElementById('conn')?.textContent === 'live');
      const shown = (): Promise<ShownDevice[]> =>
        page.evaluate(() =>
          [...document.querySelectorAll('#devices tr[data-device]')].map((tr) => ({
            device: tr.dataset.device ?? '',
            state: tr.cells[2]?.querySelector('.st')?.textContent ?? '',
            running: tr.cells[4]?.textContent ?? '',
          })),
        );
      expect((await shown()).map((d) => [d.device, d.state])).toEqual([
        ['b1', 'idle'],
        ['b2', 'idle'],
        ['b3', 'idle'],
      ]);

      // The page is open; the rollout starts now, so everything after this reaches it as Server-Sent Events.
      run = await controller(fx, plan([wave('canary'), wave(GROUP)], { full: true }));
      const short = fx.update.targetDigest.slice(0, 12);
      await allOk(page, short, () => ({ devices: view.devices().map((d) => `${d.device} ${d.state} ${d.reason ?? ''}`), rollout: run?.ctl.status().state }));
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

      mkdirSync(OUT, { recursive: true });
      const shot = path.join(OUT, 'dashboard-sse.png');
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`dashboard screenshot: ${shot}`);
      expect(existsSync(shot)).toBe(true);
      expect(errors).toEqual([]);
    },
    120_000,
  );
});
if (!existsSync(CHROMIUM)) console.log(`dashboard browser test: ${CHROMIUM} not found; skipped (apt-get install chromium)`);
