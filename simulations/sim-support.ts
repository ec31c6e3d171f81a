import { spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FLEET_BIN } from '../cli/demo.ts';

/** Start a command on one side of the link (a namespace, or this host). */
export type Exec = (cmd: string, args: string[]) => ChildProcess;

export function findMosquittoBinary(): string | undefined {
  for (const p of ['/usr/sbin/mosquitto', '/usr/bin/mosquitto']) if (spawnSync(p, ['-h']).error === undefined) return p;
  return undefined;
}

/** The processes that make up the broker side: Aedes with its update server, or Mosquitto plus `fleet serve`. */
export async function brokerCommands(kind: 'aedes' | 'mosquitto', host: string, port: number, dataDir: string): Promise<Array<{ cmd: string; args: string[]; waitForPort: boolean }>> {
  if (kind === 'aedes') {
    return [{ cmd: process.execPath, args: [FLEET_BIN, 'broker', '--host', host, '--port', String(port), '--data-dir', dataDir], waitForPort: true }];
  }
  const bin = findMosquittoBinary();
  if (!bin) throw new Error('mosquitto is not installed (apt-get install mosquitto)');
  const conf = path.join(dataDir, 'mosquitto.conf');
  await fs.mkdir(dataDir, { recursive: true });
  await fs.writeFile(conf, `listener ${port} ${host}\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n`);
  return [
    { cmd: bin, args: ['-c', conf], waitForPort: true },
    { cmd: process.execPath, args: [FLEET_BIN, 'serve', '--broker', `mqtt://${host}:${port}`, '--data-dir', path.join(dataDir, 'store')], waitForPort: false },
  ];
}

/** Wait until something listens on host:port, probing from the same side. */
export async function waitForPortIn(exec: Exec, host: string, port: number, wait: boolean, timeoutMs = 15_000): Promise<void> {
  if (!wait) {
    await new Promise((r) => setTimeout(r, 1500));
    return;
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const probe = exec(process.execPath, ['-e', `const s=require('net').connect(${port},'${host}',()=>{s.destroy();process.exit(0)});s.on('error',()=>process.exit(1))`]);
    const code = await new Promise<number | null>((r) => probe.once('exit', r));
    if (code === 0) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
