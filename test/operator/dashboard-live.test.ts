import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import vm from 'node:vm';
import { gunzipSync, gzipSync } from 'node:zlib';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { buildDashboardBundle } from '../../operator/browser/bundle.ts';
import { createHash as shimHash, sha256 } from '../../operator/browser/node-crypto-shim.ts';
import { startDashboard, type RunningDashboard } from '../../operator/dashboard-server.ts';
import { pageWsUrl } from '../../operator/dashboard-live.ts';
import { Topics } from '../../protocol/topics.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { until } from '../support/wait.ts';

const topics = new Topics();
let broker: RunningBroker | undefined;
let dash: RunningDashboard | undefined;
let dir: string | undefined;
afterEach(async () => {
  await dash?.close();
  dash = undefined;
  await broker?.close();
  broker = undefined;
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** A GET with headers fetch() will not send (Host); the body as bytes and as text. */
function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; raw: Buffer; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (b: Buffer) => parts.push(b));
        res.on('end', () => {
          const raw = Buffer.concat(parts);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, raw, body: raw.toString('utf8') });
        });
      })
      .on('error', reject);
  });
}

/** The JSON config the page carries (`<script type="application/json" id="config">`). */
const config = (html: string): Record<string, unknown> => JSON.parse(/<script type="application\/json" id="config" nonce="[^"]+">([^<]*)<\/script>/.exec(html)![1]);

describe('the dashboard script for the browser (esbuild bundle)', () => {
  it('builds into one script with the view model and mqtt.js, needing no Node built-in', async () => {
    const b = await buildDashboardBundle();
    expect(b.inputs).toContain('operator/fleet-view.ts');
    expect(b.inputs).toContain('operator/browser/node-crypto-shim.ts'); // node:crypto, reached through the release codec
    expect(b.inputs.some((i) => i.endsWith('node_modules/mqtt/dist/mqtt.esm.js'))).toBe(true); // mqtt.js's browser build
    expect(b.code).not.toMatch(/require\(\s*["']node:|from\s*["']node:|import\(\s*["']node:/);
    expect(b.code).not.toMatch(/require\(\s*["'](crypto|fs|net|tls|path|os|http|https|zlib|child_process|worker_threads)["']\)/);
    // It loads with what a browser has (no require, no process, no Buffer) and leaves `fleetLive` behind.
    const g: Record<string, unknown> = {
      AbortController,
      AbortSignal,
      EventTarget,
      Event,
      TextEncoder,
      TextDecoder,
      URL,
      URLSearchParams,
      crypto: globalThis.crypto,
      performance,
      console,
      setTimeout,
      clearTimeout,
      setInterval,
      clearInterval,
      queueMicrotask,
      navigator: { userAgent: 'test' },
    };
    g.self = g;
    g.window = g;
    vm.runInNewContext(b.code, vm.createContext(g));
    expect(typeof (g.fleetLive as { connect?: unknown })?.connect).toBe('function');
    console.log(JSON.stringify({ bundleBytes: b.code.length, bundleGzipBytes: gzipSync(b.code).byteLength, buildMs: b.ms }));
  });

  it('the sha256 that stands in for node:crypto agrees with node on every length around the block edges and on 1 MiB', () => {
    for (let n = 0; n < 200; n++) {
      const data = randomBytes(n);
      expect(Buffer.from(sha256(data)).toString('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    }
    const big = randomBytes(1 << 20);
    expect(shimHash('sha256').update(big.subarray(0, 1000)).update(big.subarray(1000)).digest('hex')).toBe(createHash('sha256').update(big).digest('hex'));
    expect(shimHash('sha256').update('abc').digest('hex')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(() => shimHash('md5')).toThrow(/sha256 only/);
  });
});

describe('serving the MQTT-over-WebSocket page', () => {
  async function withBroker(ws: boolean): Promise<RunningBroker> {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-dashboard-live-'));
    const file = path.join(dir, 'users.json');
    await writeUsersFile(file, {
      users: [
        { name: 'screen', role: 'viewer', ...(await hashPassword('look-only')) },
        { name: 'ops', role: 'operator', ...(await hashPassword('ops-pw')) },
        { name: 'dev-1', role: 'device', group: 'g', model: 'm', ...(await hashPassword('dev-pw')) },
      ],
    });
    return startBroker({
      port: 0,
      dataDir: path.join(dir, 'b'),
      persistence: 'memory',
      log: silentLogger,
      auth: file,
      ws: ws ? { port: 0 } : undefined,
      http: { port: 0, processMetrics: false },
    });
  }

  it('`fleet broker --http`: the page at / points at the ws listener by the host name the browser used, with a CSP that allows just that; the script gzipped; /metrics as before', async () => {
    broker = await withBroker(true);
    const base = broker.metricsUrl!.replace(/metrics$/, '');
    const wsPort = new URL(broker.wsUrl!).port;
    const res = await get(base, { host: `localhost:${new URL(base).port}` }); // as a browser that opened http://localhost:PORT/
    expect(res.status).toBe(200);
    const html = res.body;
    expect(config(html)).toMatchObject({ mode: 'mqtt', ws: `ws://localhost:${wsPort}`, prefix: 'fleet', problem: null, script: 'dashboard.js' });
    expect(res.headers['content-security-policy']).toContain(`connect-src 'self' ws://localhost:${wsPort};`);
    expect(html).toMatch(/<script nonce="[^"]+" src="dashboard.js"><\/script>/);
    expect(html).not.toMatch(/https?:\/\/(?!127\.0\.0\.1|localhost)/); // nothing from elsewhere
    const js = await get(`${base}dashboard.js`, { 'accept-encoding': 'gzip' });
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toMatch(/^text\/javascript/);
    expect(js.headers['content-encoding']).toBe('gzip');
    const code = gunzipSync(js.raw).toString('utf8');
    expect(code).toContain('fleetLive');
    expect(js.raw.byteLength).toBeLessThan(code.length / 2);
    expect((await fetch(broker.metricsUrl!)).status).toBe(200);
    expect((await fetch(`${base}nope`)).status).toBe(404);
    expect((await get(base, { host: 'evil.example' })).status).toBe(421);
  });

  it('`fleet broker --http` without --ws-port: the page says what is missing', async () => {
    broker = await withBroker(false);
    const html = await (await fetch(broker.metricsUrl!.replace(/metrics$/, ''))).text();
    expect(config(html)).toMatchObject({ ws: null, problem: expect.stringContaining('--ws-port') });
  });

  it('`fleet dashboard --ws URL` without --broker: only the page and its script; a login in --ws is refused', async () => {
    dash = await startDashboard({ port: 0, log: silentLogger, live: { wsUrl: 'ws://broker.example:9001' } });
    const html = await (await fetch(dash.url)).text();
    expect(config(html)).toMatchObject({ mode: 'mqtt', ws: 'ws://broker.example:9001' });
    expect((await fetch(`${dash.url}api/devices`)).status).toBe(404);
    await expect(startDashboard({ port: 0, log: silentLogger, live: { wsUrl: 'ws://u:p@broker.example:9001' } })).rejects.toThrow(/must not carry a login/);
    expect(pageWsUrl({ wsPort: 9001 }, '[::1]:8080')).toBe('ws://[::1]:9001');
    expect(pageWsUrl({}, 'x')).toBeNull();
  });

  it("the viewer login the page uses cannot publish over ws:// (cut off; the retained status stays the device's own)", async () => {
    broker = await withBroker(true);
    const dev = await MqttTransport.connect({ url: `mqtt://dev-1:dev-pw@127.0.0.1:${broker.port}`, clientId: 'fleet-device-dev-1' }, 10_000);
    await dev.publish(topics.status('dev-1'), '{"device":"dev-1","group":"g","model":"m","state":"idle"}', { qos: 1, retain: true });
    await dev.close();
    const viewer = await mqtt.connectAsync(broker.wsUrl!, { protocolVersion: 4, username: 'screen', password: 'look-only', clientId: 'fleet-dashboard-t', reconnectPeriod: 0 });
    const closed = new Promise<void>((r) => viewer.once('close', () => r()));
    viewer.publish(topics.status('dev-1'), '{"state":"ok","forged":true}', { qos: 1, retain: true });
    await closed;
    viewer.end(true);
    const ops = await MqttTransport.connect({ url: `mqtt://ops:ops-pw@127.0.0.1:${broker.port}`, clientId: 'ops-check' }, 10_000);
    const got: string[] = [];
    ops.onMessage((_t, p) => got.push(Buffer.from(p).toString()));
    await ops.subscribe(topics.status('dev-1'), 1);
    await until(() => got.length > 0, { what: "dev-1's retained status", timeoutMs: 10_000 });
    await ops.close();
    expect(got).toEqual(['{"device":"dev-1","group":"g","model":"m","state":"idle"}']);
  });
});
