/**
 * Hole 8 of issue 14: one bad status took down the fleet list. A retained
 * status with no `running` and a numeric `group` made `fleet devices` exit 1
 * (`Cannot read properties of undefined`). Statuses are now parsed strictly
 * (protocol/status.ts): a malformed one is skipped and counted in every view
 * (`fleet devices`, `fleet watch` plain, TTY and --json, the dashboard's
 * model and its metrics), and a property test feeds random statuses to those
 * views' models.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { AlertTracker } from '../../operator/alerts.ts';
import { FleetView } from '../../operator/fleet-view.ts';
import { changeLine, JsonWatch } from '../../operator/json-watch.ts';
import { renderMetrics } from '../../operator/metrics.ts';
import { describeChange, renderScreen, TerminalWatch } from '../../operator/render-terminal.ts';
import { encodeStatus, parseStatus, type DeviceStatus } from '../../protocol/status.ts';
import { Topics } from '../../protocol/topics.ts';
import { formatInventory, Inventory, inventoryRow } from '../../rollout/inventory.ts';
import { formatRolloutStatus, parseRolloutStatus } from '../../rollout/status.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { tempDir } from '../support/harness.ts';
import { rolloutStatus } from '../operator/helpers.ts';

const topics = new Topics();
const T0 = Date.parse('2026-01-01T00:00:00.000Z');
const good = (device: string, over: Partial<DeviceStatus> = {}): DeviceStatus => ({
  device,
  group: 'line-1',
  model: 'm',
  state: 'ok',
  running: 'a'.repeat(64),
  target: 'a'.repeat(64),
  seq: 3,
  updateId: null,
  rollback: false,
  progress: 1,
  bytes: 10,
  totalBytes: 10,
  badChunks: 0,
  rateBps: 0,
  wire: { bytesIn: 1, bytesOut: 2, connects: 1 },
  reason: null,
  message: null,
  agent: 'fleet/0.1.0',
  time: new Date(T0).toISOString(),
  ...over,
});
/** The status that made `fleet devices` exit 1. */
const CRASHER = JSON.stringify({ device: 'bad', state: 'ok', group: 7 });
const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

let broker: RunningBroker | undefined;
let dir: string | undefined;
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) process.kill(c.pid!, 'SIGKILL');
  await broker?.close();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  broker = dir = undefined;
});

function runFleet(args: string[], done: (out: string) => boolean = () => false, timeoutMs = 30_000): Promise<{ out: string; err: string; code: number | null }> {
  const child = spawn(process.execPath, [FLEET_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fleet ${args[0]} timed out; stdout so far: ${JSON.stringify(out)}`)), timeoutMs);
    child.stderr!.on('data', (d: Buffer) => (err += d.toString('utf8')));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      if (done(out)) process.kill(child.pid!, 'SIGTERM');
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ out, err, code });
    });
  });
}

describe('a malformed retained status on a real broker', () => {
  it('fleet devices and fleet watch skip it, count it and show the rest', async () => {
    dir = await tempDir('sec-malformed');
    broker = await startBroker({ port: 0, dataDir: path.join(dir, 'broker'), persistence: 'memory', log: silentLogger, updateServer: false });
    const t = await MqttTransport.connect({ url: broker.url, clientId: 'attacker' }, 10_000);
    try {
      await t.publish(topics.status('bad'), utf8(CRASHER), { qos: 1, retain: true });
      await t.publish(topics.status('good'), encodeStatus(good('good')), { qos: 1, retain: true });
    } finally {
      await t.close();
    }
    const table = await runFleet(['devices', '--broker', broker.url, '--wait', '800']);
    expect(table.err).toBe('');
    expect(table.code).toBe(0);
    expect(table.out).toMatch(/^good\s+line-1\s+m\s+ok/m);
    expect(table.out).toContain('1 device(s); 1 malformed status(es) skipped (bad)');
    const json = await runFleet(['devices', '--broker', broker.url, '--wait', '800', '--json']);
    expect(json.code).toBe(0);
    expect((JSON.parse(json.out) as Array<{ device: string }>).map((r) => r.device)).toEqual(['good']);
    expect(json.err).toContain('1 malformed status(es) skipped (bad)');

    const plain = await runFleet(['watch', '--broker', broker.url], (o) => o.includes('malformed'));
    expect(plain.out).toContain('device good [line-1] ok');
    expect(plain.out).toMatch(/1 malformed status\(es\) skipped \(bad\)/);
  });
});

describe('the views never throw on random statuses (property)', () => {
  const ids = ['d1', 'd2', 'd3'];
  const json = fc.jsonValue();
  /** A valid status with some fields replaced by random JSON or removed. */
  const mutated = fc
    .record({
      device: fc.constantFrom(...ids),
      over: fc.dictionary(fc.constantFrom(...Object.keys(good('x'))), fc.oneof(json, fc.constant(undefined)), { maxKeys: 4 }),
    })
    .map(({ device, over }) => utf8(JSON.stringify({ ...good(device), ...over })));
  const payload = fc.oneof(
    { weight: 3, arbitrary: mutated },
    { weight: 2, arbitrary: fc.constantFrom(...ids).map((d) => encodeStatus(good(d, { state: 'rejected', reason: 'x' }))) },
    { weight: 1, arbitrary: json.map((j) => utf8(JSON.stringify(j) ?? 'null')) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }) },
    { weight: 1, arbitrary: fc.constant(new Uint8Array(0)) },
    { weight: 1, arbitrary: fc.constant(utf8(CRASHER)) },
  );
  /** A valid rollout status with some top-level or first-wave fields replaced by random JSON. */
  const rolloutPayload = fc.oneof(
    fc
      .record({
        top: fc.dictionary(fc.constantFrom(...Object.keys(rolloutStatus('r1'))), json, { maxKeys: 3 }),
        wave: fc.dictionary(fc.constantFrom('group', 'devices', 'counts', 'failures', 'blocking', 'release', 'publishedAt'), json, { maxKeys: 3 }),
      })
      .map(({ top, wave }) => {
        const r = rolloutStatus('r1');
        return utf8(JSON.stringify({ ...r, waves: [{ ...r.waves[0], ...wave }, ...r.waves.slice(1)], ...top }));
      }),
    payload,
  );
  const message = fc.oneof(
    { weight: 4, arbitrary: fc.record({ device: fc.constantFrom(...ids), kind: fc.constantFrom('status', 'status', 'status', 'presence'), payload, retained: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ device: fc.constant('r1'), kind: fc.constant('rollout'), payload: rolloutPayload, retained: fc.boolean() }) },
  );

  it('FleetView (watch TTY, plain and --json, dashboard snapshot, metrics, alerts), the Inventory (fleet devices) and rollout statuses', () => {
    fc.assert(
      fc.property(fc.array(message, { minLength: 1, maxLength: 30 }), (msgs) => {
        let now = T0;
        const view = new FleetView(topics, { now: () => now });
        const inv = new Inventory(topics);
        const alerts = new AlertTracker({ now: () => now });
        const sink = new Writable({
          write(_c, _e, cb) {
            cb();
          },
        });
        const plain = new TerminalWatch(view, sink, { tty: false, settleMs: 0 });
        const jsonWatch = new JsonWatch(view, sink, { refreshMs: 0 });
        plain.start();
        jsonWatch.start();
        const expected = new Set<string>();
        try {
          for (const m of msgs) {
            const topic = m.kind === 'status' ? topics.status(m.device) : m.kind === 'rollout' ? topics.rolloutStatus(m.device) : topics.presence(m.device);
            if (m.kind === 'rollout') {
              const r = parseRolloutStatus(m.payload);
              if (r) formatRolloutStatus(r);
            }
            now += 1000;
            const changes = view.handle(topic, m.payload, m.retained);
            inv.handle(topic, m.payload, m.retained);
            for (const c of changes) {
              describeChange(c, now);
              JSON.stringify(changeLine(c, now));
            }
            alerts.observe(changes);
            if (m.kind === 'status') {
              const s = m.payload.byteLength ? parseStatus(m.payload) : null;
              if (m.payload.byteLength === 0 || (s && s.device === m.device)) expected.delete(m.device);
              else expected.add(m.device);
            }
          }
          view.refresh();
          const snap = view.snapshot();
          renderScreen(snap, { colour: true, columns: 120, rows: 30 });
          expect(renderMetrics(snap)).toContain(`fleet_device_statuses_malformed ${expected.size}\n`);
          expect(snap.malformed).toBe(expected.size);
          expect(view.malformedDevices()).toEqual([...expected].sort());
          expect([...inv.malformed].sort()).toEqual([...expected].sort());
          const table = formatInventory(inv.list(), [...inv.malformed]);
          if (expected.size) expect(table).toContain(`${expected.size} malformed status(es) skipped`);
          for (const r of inv.list()) JSON.stringify(inventoryRow(r));
          for (const d of snap.devices) {
            expect(typeof d.device).toBe('string');
            expect(d.group === null || typeof d.group === 'string').toBe(true);
          }
        } finally {
          plain.stop();
          jsonWatch.stop();
        }
      }),
      { numRuns: 300, seed: 14 },
    );
  });
});
