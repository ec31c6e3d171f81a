import { promises as fs } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { silentLogger } from '../../util/log.ts';
import { createFixture, freePort, GROUP, MODEL, publish, spawnFleet, startAgent, StatusWatch, tempDir, waitForPort, type Fixture } from '../support/harness.ts';

let f: Fixture | undefined;
let broker: RunningBroker | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await f?.close();
  f = undefined;
  await broker?.close();
  broker = undefined;
  for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
});

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
      })
      .on('error', reject);
  });
}

/** The value of one sample (exact name and label text), or undefined. */
function sample(body: string, series: string): number | undefined {
  const line = body.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

async function start(dataDir: string, persistence: 'memory' | 'level' = 'memory', port = 0): Promise<RunningBroker> {
  return startBroker({ port, dataDir, persistence, log: silentLogger, http: { port: 0 } });
}

describe('fleet broker --http: GET /metrics', () => {
  it('counts clients, bytes, messages, chunks served and devices per model/group/digest/state after a publish to an agent', async () => {
    const bdir = await tempDir('broker-metrics');
    dirs.push(bdir);
    broker = await start(bdir);
    expect(broker.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    f = await createFixture('broker-metrics-fleet', { externalUrl: broker.url });
    const watch = await StatusWatch.start(f);
    await startAgent(f, 'm1');
    await watch.until('m1', (s) => s.state === 'idle');
    const before = await get(broker.metricsUrl!);
    expect(before.status).toBe(200);
    expect(before.type).toContain('text/plain');
    expect(sample(before.body, 'fleet_update_server_chunks_served_total')).toBe(0);
    expect(before.body).toContain(`fleet_broker_devices{model="${MODEL}",group="${GROUP}",digest="${f.update.baseDigest}",state="idle"} 1\n`);

    const r = await publish(f);
    await watch.until('m1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest);
    const m = (await get(broker.metricsUrl!)).body;
    // The in-process update server served the update's chunks.
    const chunks = r.uploads.find((u) => u.updateId === r.updateId)!.chunks;
    expect(sample(m, 'fleet_update_server_chunks_served_total')).toBeGreaterThanOrEqual(chunks);
    expect(sample(m, 'fleet_update_server_requests_total')).toBeGreaterThan(0);
    expect(sample(m, 'fleet_update_server_bad_requests_total')).toBe(0);
    expect(sample(m, 'fleet_update_server_uploads_total')).toBeGreaterThanOrEqual(1); // a receipt per stored (re)upload
    expect(sample(m, 'fleet_update_server_upload_chunks_total')).toBeGreaterThanOrEqual(chunks);
    // The device, now on the new digest; nothing left on the old one.
    expect(m).toContain(`fleet_broker_devices{model="${MODEL}",group="${GROUP}",digest="${f.update.targetDigest}",state="ok"} 1\n`);
    expect(m).not.toContain(`digest="${f.update.baseDigest}"`);
    // The agent, the status watch and the update server's loopback client at least.
    expect(sample(m, 'fleet_broker_connected_clients')).toBeGreaterThanOrEqual(3);
    // Every chunk frame went out through the broker: bytes out exceed the payload; frames counted as messages out.
    expect(sample(m, 'fleet_broker_bytes_out_total')).toBeGreaterThan(f.update.payload.byteLength);
    expect(sample(m, 'fleet_broker_bytes_in_total')).toBeGreaterThan(f.update.payload.byteLength); // the upload came in
    expect(sample(m, 'fleet_broker_messages_out_total{kind="frames"}')).toBeGreaterThanOrEqual(chunks);
    expect(sample(m, 'fleet_broker_messages_in_total{kind="request"}')).toBeGreaterThan(0);
    expect(sample(m, 'fleet_broker_messages_in_total{kind="status"}')).toBeGreaterThan(0);
    expect(m).toContain('# TYPE fleet_broker_bytes_out_total counter');
    expect(m).toMatch(/\nfleet_broker_process_resident_memory_bytes \d+/); // default process metrics, prefixed
    expect(m).not.toMatch(/\nprocess_cpu/); // not the global registry's unprefixed ones
    // A DNS-rebinding page cannot read it; other paths than the dashboard's (/, /dashboard.js) are 404.
    expect((await get(broker.metricsUrl!, { host: 'evil.example' })).status).toBe(421);
    expect((await get(broker.metricsUrl!.replace('/metrics', '/nope'))).status).toBe(404);
  });

  it('after a restart the device gauge comes from the retained statuses on disk', async () => {
    const bdir = await tempDir('broker-metrics-restart');
    dirs.push(bdir);
    const port = await freePort();
    broker = await start(bdir, 'level', port);
    f = await createFixture('broker-metrics-restart-fleet', { externalUrl: broker.url });
    const watch = await StatusWatch.start(f);
    const a = await startAgent(f, 'r1');
    await watch.until('r1', (s) => s.state === 'idle');
    await a.agent.stop();
    await broker.close();
    broker = await start(bdir, 'level', port);
    const m = (await get(broker.metricsUrl!)).body;
    expect(m).toContain(`fleet_broker_devices{model="${MODEL}",group="${GROUP}",digest="${f.update.baseDigest}",state="idle"} 1\n`);
  });

  it('the CLI: `fleet broker --http PORT` prints and serves the metrics URL', async () => {
    f = await createFixture('broker-metrics-cli');
    const [mqtt, port] = [await freePort(), await freePort()];
    spawnFleet(f, 'broker', ['broker', '--port', String(mqtt), '--persistence', 'memory', '--data-dir', path.join(f.dir, 'b2'), '--http', String(port), '--http-host', '127.0.0.1']);
    await waitForPort(port, 15_000);
    const m = await get(`http://127.0.0.1:${port}/metrics`);
    expect(m.status).toBe(200);
    expect(sample(m.body, 'fleet_broker_connected_clients')).toBe(1); // its own update server
    expect(m.body).toContain('fleet_update_server_chunks_served_total 0');
    const log = await fs.readFile(path.join(f.dir, 'broker.log'), 'utf8');
    expect(log).toContain(`metrics on http://127.0.0.1:${port}/metrics`);
  });
});
