import type { ChildProcess } from 'node:child_process';
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startDashboard, type RunningDashboard } from '../../operator/dashboard-server.ts';
import { FleetView, followFleet, type DeviceRow } from '../../operator/fleet-view.ts';
import { silentLogger } from '../../util/log.ts';
import { connect, createFixture, freePort, GROUP, publish, spawnFleet, startAgent, topics, waitForPort, type Fixture } from '../support/harness.ts';
import { until } from '../support/wait.ts';

let f: Fixture | undefined;
let dash: RunningDashboard | undefined;
afterEach(async () => {
  await dash?.close();
  dash = undefined;
  await f?.close();
  f = undefined;
});

interface Sse {
  events: Array<{ event: string; data: unknown }>;
  until(pred: (e: { event: string; data: unknown }) => boolean, timeoutMs?: number): Promise<{ event: string; data: unknown }>;
  close(): void;
}

/** Reads a Server-Sent Events stream with node:http. */
function openSse(url: string): Promise<Sse> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: { accept: 'text/event-stream' } }, (res) => {
      if (res.statusCode !== 200 || !String(res.headers['content-type']).startsWith('text/event-stream')) return reject(new Error(`SSE ${res.statusCode} ${res.headers['content-type']}`));
      const events: Sse['events'] = [];
      const waiters: Array<() => void> = [];
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length) events.push({ event, data: JSON.parse(data.join('\n')) });
        }
        for (const w of waiters.splice(0)) w();
      });
      resolve({
        events,
        async until(pred, timeoutMs = 30_000) {
          const deadline = Date.now() + timeoutMs;
          for (;;) {
            const e = events.find(pred);
            if (e) return e;
            if (Date.now() > deadline) throw new Error(`no such SSE event; got ${events.map((e) => e.event).join(', ')}`);
            await new Promise<void>((r) => {
              const t = setTimeout(r, 200);
              waiters.push(() => {
                clearTimeout(t);
                r();
              });
            });
          }
        },
        close: () => req.destroy(),
      });
    });
    req.on('error', reject);
  });
}

async function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), headers: res.headers, body }));
      })
      .on('error', reject);
  });
}

const deviceRows = async (base: string): Promise<DeviceRow[]> => JSON.parse((await get(`${base}api/devices`)).body) as DeviceRow[];

describe('dashboard over Aedes with an in-process device agent', () => {
  it('shows the device going to ok after a publish: /api/devices, /events, /metrics, the page', async () => {
    f = await createFixture('operator-dash');
    const view = new FleetView(topics);
    await followFleet(view, await connect(f, 'test-dashboard'));
    dash = await startDashboard({ view, port: 0, log: silentLogger, refreshMs: 200 });
    const base = dash.url;
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);

    await startAgent(f, 'dev-1');
    const idle = await until(async () => (await deviceRows(base)).find((d) => d.device === 'dev-1' && d.state === 'idle' && d.online === true), { what: 'dev-1 idle and online' });
    expect(idle.group).toBe(GROUP);

    const sse = await openSse(`${base}events`);
    const snap = await sse.until((e) => e.event === 'snapshot');
    expect((snap.data as { devices: DeviceRow[] }).devices.map((d) => d.device)).toEqual(['dev-1']);
    expect(dash.clients()).toBe(1);

    await publish(f);
    const okEvent = await sse.until((e) => e.event === 'device' && (e.data as { row: DeviceRow | null }).row?.state === 'ok');
    expect((okEvent.data as { device: string; row: DeviceRow }).row).toMatchObject({ device: 'dev-1', running: f.update.targetDigest, attention: false });
    // It streamed the states in between too (at least downloading).
    expect(sse.events.some((e) => e.event === 'device' && (e.data as { row: DeviceRow | null }).row?.state === 'downloading')).toBe(true);
    sse.close();

    const rows = await deviceRows(base);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ device: 'dev-1', state: 'ok', running: f.update.targetDigest, online: true });
    expect(rows[0].bytesIn).toBeGreaterThan(f.update.payload.byteLength);

    const m = await get(`${base}metrics`);
    expect(m.type).toContain('text/plain; version=0.0.4');
    expect(m.body).toContain(`fleet_devices{state="ok",group="${GROUP}"} 1\n`);
    expect(m.body).toContain(`fleet_devices_online{group="${GROUP}"} 1\n`);
    expect(m.body).toMatch(/fleet_device_bytes_received_total\{device="dev-1"\} \d+\n/);
    expect(m.body).toContain('fleet_dashboard_up 1\n');

    expect(JSON.parse((await get(`${base}api/rollouts`)).body)).toEqual([]);
    const page = await get(base);
    expect(page.status).toBe(200);
    expect(page.type).toContain('text/html');
    expect(page.body).toContain("new EventSource('events')");
    expect(page.body).not.toMatch(/https?:\/\/(?!127\.)/); // nothing from the network: works offline
    const nonce = /script-src 'nonce-([^']+)'/.exec(String(page.headers['content-security-policy']))![1];
    expect(page.body).toContain(`<script nonce="${nonce}">`);
    // A DNS-rebinding page (another host name on our address) gets nothing.
    expect((await get(`${base}api/devices`, { host: 'evil.example:80' })).status).toBe(421);
    expect((await get(`${base}nope`)).status).toBe(404);
  });

  it('the CLI: `fleet dashboard` serves /api/devices and `fleet watch` (not a TTY) prints change lines', async () => {
    f = await createFixture('operator-cli');
    await startAgent(f, 'dev-2');
    const port = await freePort();
    spawnFleet(f, 'dashboard', ['dashboard', '--broker', f.url, '--port', String(port)]);
    const watch: ChildProcess = spawnFleet(f, 'watch', ['watch', '--broker', f.url, '--group', GROUP]);
    let out = '';
    watch.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    await waitForPort(port, 15_000);
    const base = `http://127.0.0.1:${port}/`;
    await until(async () => (await deviceRows(base)).find((d) => d.device === 'dev-2' && d.state === 'idle'), { what: 'dev-2 on the CLI dashboard' });
    // `fleet watch` prints the fleet as it stands once the retained burst has settled.
    await until(() => out.includes('device dev-2'), { what: 'fleet watch to print dev-2', timeoutMs: 15_000, context: () => `got:\n${out}` });
    expect(out.split('\n')[0]).toMatch(/device dev-2 \[line-1\] idle, running [0-9a-f]{12}, online$/);
    await publish(f);
    await until(async () => (await deviceRows(base)).find((d) => d.device === 'dev-2' && d.state === 'ok'), { what: 'dev-2 ok on the CLI dashboard' });
    await until(() => /device dev-2 \[line-1\] .*-> ok/.test(out), { what: 'fleet watch to print dev-2 ok', timeoutMs: 10_000, context: () => `got:\n${out}` });
    expect(out).toMatch(/device dev-2 \[line-1\] idle -> downloading/);
  });
});
