import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { FLEET_BIN, stopChild } from '../../platform/child-process.ts';
import { waitForPort } from './harness.ts';

/**
 * `fleet broker …` as its own OS process on a fixed port, so a test can kill
 * it by PID (SIGTERM or SIGKILL) and start it again on the same port with the
 * same data directory (or the same Redis).
 */
export class BrokerProcess {
  child: ChildProcess | undefined;
  starts = 0;

  constructor(
    readonly port: number,
    private readonly args: string[],
    private readonly logFile: string,
  ) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** `extra`: e.g. ['--data-dir', D, '--cluster', R, '--no-update-server']. */
  static async start(port: number, extra: string[], logDir: string, name = `broker-${port}`): Promise<BrokerProcess> {
    const b = new BrokerProcess(port, ['--log-level', 'info', 'broker', '--host', '127.0.0.1', '--port', String(port), ...extra], path.join(logDir, `${name}.log`));
    await b.restart();
    return b;
  }

  async restart(): Promise<void> {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) throw new Error('broker still running');
    const log = createWriteStream(this.logFile, { flags: 'a' });
    const child = spawn(process.execPath, [FLEET_BIN, ...this.args], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    this.child = child;
    this.starts++;
    const exited = new Promise<never>((_, reject) => child.once('exit', (code, sig) => reject(new Error(`broker exited (${code ?? sig}) while starting; see ${this.logFile}`))));
    exited.catch(() => undefined);
    await Promise.race([waitForPort(this.port, 60_000), exited]);
  }

  /** Kills it by PID with `signal` and waits until it has exited. */
  async kill(signal: 'SIGTERM' | 'SIGKILL'): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    process.kill(c.pid!, signal);
    await exited;
  }

  async stop(): Promise<void> {
    if (this.child) await stopChild(this.child);
  }
}
