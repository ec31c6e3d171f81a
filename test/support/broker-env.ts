/**
 * The fixture integration tests repeat: a temporary directory, in-process Aedes brokers in it
 * (ephemeral loopback ports, in-memory persistence) and the clients a test opens, all closed in
 * reverse order after each test. `const env = useBrokerEnv('tag')` at a file's top level.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach } from 'vitest';
import { startBroker, type BrokerOptions, type RunningBroker } from '../../nodes/broker-node.ts';
import { silentLogger } from '../../util/log.ts';
import { tempDir } from './harness.ts';

interface Closable {
  close(): Promise<unknown> | void;
}

export class BrokerEnv {
  private dirPath: string | undefined;
  private readonly open: Closable[] = [];
  constructor(private readonly tag: string) {}

  /** The test's temporary directory (made on first use, removed after the test). */
  async dir(): Promise<string> {
    this.dirPath ??= await tempDir(this.tag);
    return this.dirPath;
  }

  /** A broker with its data in `dir()/name`, memory persistence and a silent log unless `o` says otherwise. */
  async broker(o: Partial<BrokerOptions> = {}, name = 'broker'): Promise<RunningBroker> {
    const b = await startBroker({ port: 0, dataDir: path.join(await this.dir(), name), persistence: 'memory', log: silentLogger, ...o });
    this.open.push(b);
    return b;
  }

  /** Closes `x` after the test (before the brokers started earlier). */
  track<T extends Closable>(x: T): T {
    this.open.push(x);
    return x;
  }

  /** Closes `x` now (a broker the test stops on purpose), and not again after the test. */
  async closeNow(x: Closable): Promise<void> {
    const i = this.open.indexOf(x);
    if (i >= 0) this.open.splice(i, 1);
    await x.close();
  }

  /** Closes what the test opened, last first, then removes the directory. */
  async close(): Promise<void> {
    for (const x of this.open.splice(0).reverse()) await x.close();
    if (this.dirPath) await fs.rm(this.dirPath, { recursive: true, force: true });
    this.dirPath = undefined;
  }
}

/** A BrokerEnv closed after each test of the file. */
export function useBrokerEnv(tag: string): BrokerEnv {
  const env = new BrokerEnv(tag);
  afterEach(() => env.close());
  return env;
}
