import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach } from 'vitest';

/** Something a test starts and must stop: a fixture, broker, node or transport (close), a proxy or controller (stop). */
export type Stoppable = { close(): unknown } | { stop(): unknown };

/** Hands a part to the afterEach that stops it; returns the part. */
export interface Owner {
  <T extends Stoppable>(part: T): T;
  /** A new temporary directory, removed after the test. */
  tempDir(prefix: string): Promise<string>;
}

/**
 * What the tests of a file (or describe block) start, stopped after each test, instead of a
 * hand-kept list of variables closed in an afterEach: `const own = ownAfterEach();`, then
 * `f = own(await createFixture(...))`, `proxy = own(new LinkProxy(...))`. After each test its
 * parts are stopped the last first (a proxy before the broker behind it), each once, and forgotten;
 * one that fails to stop does not keep the others up (the first failure is thrown after).
 * (useBrokerEnv, test/support/broker-env.ts, does the same for tests that start their own brokers.)
 */
export function ownAfterEach(): Owner {
  const parts: Array<() => unknown> = [];
  afterEach(async () => {
    const failures: unknown[] = [];
    for (const stop of parts.splice(0).reverse()) {
      try {
        await stop();
      } catch (e) {
        failures.push(e);
      }
    }
    if (failures.length > 0) throw failures[0];
  });
  const own = <T extends Stoppable>(part: T): T => {
    parts.push('close' in part ? () => part.close() : () => part.stop());
    return part;
  };
  return Object.assign(own, {
    tempDir: async (prefix: string): Promise<string> => {
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
      parts.push(() => fs.rm(dir, { recursive: true, force: true }));
      return dir;
    },
  });
}
