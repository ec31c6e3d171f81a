import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createFixture, publish, spawnDevice, StatusWatch, type Fixture } from '../support/harness.ts';

let f: Fixture | undefined;
afterEach(async () => {
  await f?.close();
  f = undefined;
});

describe('a storage error in the device status is one actionable line', () => {
  it('names the file, what to do and the errno, not the raw error text', async () => {
    f = await createFixture('storage-status');
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'se-1');
    await watch.until('se-1', (s) => s.state === 'idle', 60_000);
    // Where downloads go is now a file: every write under it fails with ENOTDIR.
    const downloads = path.join(f.dir, 'se-1', 'downloads');
    await fs.rm(downloads, { recursive: true, force: true });
    await fs.writeFile(downloads, 'not a directory');
    const r = await publish(f);
    const s = await watch.until('se-1', (s) => s.reason === 'storage-error', 60_000);
    expect(s.message).toBe(`reading or writing the device directory failed at ${path.join(downloads, r.updateId)}: a part of the path is a file, not a directory: check the path (ENOTDIR in mkdir)`);
  }, 120_000);
});
