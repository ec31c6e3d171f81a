import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkSpace } from '../../device/fetcher.ts';
import { DeviceError } from '../../device/reasons.ts';
import type { DeviceStorage } from '../../device/storage.ts';
import type { ReleaseStep } from '../../protocol/release.ts';

const step = (size: number): ReleaseStep => ({ updateId: 'a'.repeat(32), from: null, to: 'b'.repeat(64), size, sha256: 'a'.repeat(64), chunkSize: 1024, chunks: Math.ceil(size / 1024), listSha256: 'c'.repeat(64) });

describe('space for a download', () => {
  it('needs the payloads and a second model beside the running one; refuses with no-space naming both figures', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'space-'));
    try {
      const model = path.join(dir, 'model.safetensors');
      await fs.writeFile(model, new Uint8Array(5000));
      const storage = (free: number) => ({ freeBytes: async () => free }) as unknown as DeviceStorage;
      await expect(checkSpace(storage(8000), [step(2000), step(1000)], model)).resolves.toBeUndefined();
      const e = await checkSpace(storage(7999), [step(2000), step(1000)], model).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(DeviceError);
      expect((e as DeviceError).code).toBe('no-space');
      expect((e as DeviceError).message).toMatch(/7999 bytes free, 8000 needed/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
