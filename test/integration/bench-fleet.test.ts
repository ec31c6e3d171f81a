/**
 * The small variant of `npm run bench:fleet`: 20 devices in 2 worker processes
 * fetch, apply and ack one update through a broker in its own process, and the
 * run ends with one JSON line of figures.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { findMosquitto, findRedisServer } from '../../bench/fleet-brokers.ts';

const BENCH = new URL('../../bench/fleet.ts', import.meta.url).pathname;
const mosquitto = findMosquitto();
const redis = findRedisServer();
if (!mosquitto) console.warn('skipping bench:fleet --broker mosquitto: mosquitto is not installed (.ci/run installs it)');
if (!redis) console.warn('skipping bench:fleet --broker cluster: redis-server is not installed (.ci/run installs it)');

/** Runs the benchmark as `npm run bench:fleet` does and returns its last stdout line, parsed. */
async function bench(args: string[]): Promise<Record<string, unknown>> {
  const child = spawn(process.execPath, ['--import', 'tsx', BENCH, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  expect(code, err).toBe(0);
  const lines = out.trim().split('\n');
  expect(lines.length).toBe(1);
  return JSON.parse(lines[0]) as Record<string, unknown>;
}

function checkRun(r: Record<string, unknown>, broker: string): void {
  expect(r.broker).toBe(broker);
  expect(r.devices).toBe(20);
  expect(r.completed).toBe(20);
  expect(r.payloadBytes as number).toBeGreaterThan(32_000);
  expect(r.seconds as number).toBeGreaterThan(0);
  expect(r.deliveredMBps as number).toBeCloseTo((20 * (r.payloadBytes as number)) / (r.seconds as number) / 1e6, 2);
  expect(r.brokerPeakRssMB as number).toBeGreaterThan(1);
  // Every device fetched at least the whole payload over its own connection.
  expect(r.wireOverhead as number).toBeGreaterThanOrEqual(1);
  // Every process's CPU over the delivery: the parts add up to the total, the devices did work, and the bound is total / vCPUs.
  const cpu = r.deliveryCpuSeconds as { brokers: number[]; server: number | null; redis: number | null; workers: number; bench: number; total: number };
  expect(cpu.brokers.length).toBe(broker === 'cluster' ? 2 : 1);
  expect(cpu.server === null).toBe(broker !== 'mosquitto');
  expect(cpu.redis === null).toBe(broker !== 'cluster');
  expect(cpu.workers).toBeGreaterThan(0);
  const sum = cpu.brokers.reduce((x, y) => x + y, 0) + (cpu.server ?? 0) + (cpu.redis ?? 0) + cpu.workers + cpu.bench;
  expect(cpu.total).toBeCloseTo(sum, 1);
  expect((r.runCpuSeconds as { total: number }).total).toBeGreaterThanOrEqual(cpu.total);
  const machine = r.machineDeliveryCpuSeconds as { cpus: number; busy: number } | null;
  if (machine) expect(r.cpuBoundSeconds as number).toBeCloseTo(cpu.total / machine.cpus, 1);
  expect((r.workersDeliveryActivity as { readCalls: number }).readCalls).toBeGreaterThan(0);
  expect((r.workersPeakRssMB as number[]).every((x) => x > 1)).toBe(true);
  expect(r.redisCommands === null).toBe(broker !== 'cluster');
  if (broker === 'cluster') expect(r.redisCommandsFromConnect as number).toBeGreaterThan(r.redisCommands as number);
}

describe('npm run bench:fleet (20 devices)', () => {
  it('Aedes in its own process with the update server in-process: all 20 complete', async () => {
    const r = await bench(['--devices', '20', '--size', '65536', '--quiet']);
    checkRun(r, 'aedes');
    expect(r.nodes).toBe(1);
    expect(r.serverPeakRssMB).toBeNull();
  });

  it.skipIf(!mosquitto)('Mosquitto with `fleet serve` beside it: all 20 complete', async () => {
    const r = await bench(['--devices', '20', '--size', '65536', '--broker', 'mosquitto', '--quiet']);
    checkRun(r, 'mosquitto');
    expect(r.serverPeakRssMB as number).toBeGreaterThan(1);
  });

  it.skipIf(!redis)('a 2-node cluster on a private Redis, devices split across the nodes: all 20 complete', async () => {
    const r = await bench(['--devices', '20', '--size', '65536', '--broker', 'cluster', '--quiet']);
    checkRun(r, 'cluster');
    expect(r.nodes).toBe(2);
    expect((r.nodesPeakRssMB as number[]).length).toBe(2);
    expect(r.redisPeakRssMB as number).toBeGreaterThan(0);
  });
});
