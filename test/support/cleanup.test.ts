/** ownAfterEach: what a test hands it is stopped after the test, the last first, each once, all of it even when one fails. */
import { promises as fs } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { ownAfterEach } from './cleanup.ts';

const stopped: string[] = [];
const part = (name: string, fails = false) => ({
  close: async () => {
    stopped.push(name);
    if (fails) throw new Error(`${name} did not stop`);
  },
});

describe('ownAfterEach', () => {
  const own = ownAfterEach();
  let dir = '';

  it('takes the parts of a test (returned as given) and a temporary directory', async () => {
    const a = part('fixture');
    expect(own(a)).toBe(a);
    own({ stop: () => void stopped.push('proxy') });
    dir = await own.tempDir('cleanup-test-');
    await fs.writeFile(`${dir}/x`, 'x');
    expect(stopped).toEqual([]);
  });

  it('stopped them after that test, the last first, and keeps none for the next', async () => {
    expect(stopped).toEqual(['proxy', 'fixture']);
    await expect(fs.stat(dir)).rejects.toThrow();
    stopped.length = 0;
  });

  it('nothing handed over in a test: nothing is stopped again after it', () => {
    expect(stopped).toEqual([]);
  });
});

describe('ownAfterEach when a part fails to stop', () => {
  const own = ownAfterEach();
  afterAll(() => {
    // The failure is the afterEach's (vitest reports it on the test); what counts is that both were stopped.
    expect(stopped).toEqual(['second', 'first']);
  });

  it.fails('the others are stopped too, and the failure is reported', () => {
    own(part('first'));
    own(part('second', true));
    stopped.length = 0;
  });
});
