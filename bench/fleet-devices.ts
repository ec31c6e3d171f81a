import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { readLines, type DeviceEnd } from '../simulations/sim-support.ts';
import { track } from './fleet-brokers.ts';

/*
 * bench:fleet's devices (bench/fleet.ts): the device worker processes (bench/fleet-worker.ts),
 * started with their share of the fleet, read for who is online and how each device ended.
 */

const WORKER = new URL('./fleet-worker.ts', import.meta.url).pathname;
/** The model and group every bench device runs and the bench publishes to. */
export const MODEL = 'bench';
export const GROUP = 'fleet';

/** How many devices, in how many worker processes, coming online over how long. */
export interface FleetShape {
  devices: number;
  workers: number;
  rampSeconds: number;
}

/** Where the worker processes find the broker, their files and the trust anchor. */
export interface WorkerFiles {
  dir: string;
  urls: string[];
  trustFile: string;
  baseFile: string;
}

/** What the workers report: how many devices are online, and each device's end (once). */
export interface FleetState {
  ready: number;
  ends: Map<string, DeviceEnd>;
}

/** Spawn the worker processes (into `workers`, so the caller stops them): devices split evenly; device g's home node is g mod nodes. */
export function startWorkers(o: FleetShape, f: WorkerFiles, workers: ChildProcess[], onEnd: (ended: number) => void): FleetState {
  const fleet: FleetState = { ready: 0, ends: new Map() };
  const per = Math.ceil(o.devices / o.workers);
  for (let w = 0; w * per < o.devices; w++) {
    const n = Math.min(per, o.devices - w * per);
    const child = track(
      spawn(
        process.execPath,
        [
          ...(process.env.FLEET_BENCH_WORKER_NODE_ARGS?.split(' ').filter(Boolean) ?? []),
          '--import',
          'tsx',
          WORKER,
          '--urls',
          f.urls.join(','),
          '--devices',
          String(n),
          '--first',
          String(w * per),
          '--dir',
          path.join(f.dir, 'devices'),
          '--trust',
          f.trustFile,
          '--initial',
          f.baseFile,
          '--model',
          MODEL,
          '--group',
          GROUP,
          '--ramp-ms',
          String(Math.round(o.rampSeconds * 1000)),
          '--seed',
          '1',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ),
    );
    child.stderr!.pipe(createWriteStream(path.join(f.dir, `worker-${w}.log`)));
    readLines(child, (j) => {
      if (typeof j.ready === 'number') fleet.ready += j.ready;
      else if (typeof j.device === 'string' && !fleet.ends.has(j.device)) {
        fleet.ends.set(j.device, j as unknown as DeviceEnd);
        onEnd(fleet.ends.size);
      }
    });
    workers.push(child);
  }
  return fleet;
}

/** Until every device is connected (the ramp plus two minutes at most), or a worker has exited. */
export async function waitOnline(o: FleetShape, fleet: FleetState, workers: ChildProcess[]): Promise<void> {
  const readyBy = Date.now() + (o.rampSeconds + 120) * 1000;
  while (fleet.ready < o.devices) {
    if (Date.now() > readyBy) throw new Error(`only ${fleet.ready} of ${o.devices} devices connected`);
    if (workers.some((c) => c.exitCode !== null)) throw new Error('a device worker exited');
    await new Promise((r) => setTimeout(r, 100));
  }
}
