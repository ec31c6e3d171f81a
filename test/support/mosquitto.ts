import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { stopChild } from '../../platform/child-process.ts';
import { freePort, waitForPort } from './harness.ts';

/** Path of the mosquitto binary, or undefined when it is not installed. */
export function findMosquitto(): string | undefined {
  for (const p of ['/usr/sbin/mosquitto', '/usr/bin/mosquitto', '/usr/local/sbin/mosquitto']) {
    if (spawnSync(p, ['-h']).error === undefined) return p;
  }
  return undefined;
}

export interface Mosquitto {
  url: string;
  port: number;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** A Mosquitto of our own on a loopback port, without persistence (a restart loses retained messages). */
export async function startMosquitto(bin: string, dir: string, port?: number): Promise<Mosquitto> {
  const p = port ?? (await freePort());
  await fs.mkdir(dir, { recursive: true });
  const conf = path.join(dir, `mosquitto-${p}.conf`);
  await fs.writeFile(conf, `listener ${p} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n`);
  const child = spawn(bin, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  try {
    await waitForPort(p);
  } catch (e) {
    await stopChild(child);
    throw new Error(`mosquitto did not start: ${(e as Error).message}\n${err}`, { cause: e });
  }
  return { url: `mqtt://127.0.0.1:${p}`, port: p, child, stop: () => stopChild(child) };
}
