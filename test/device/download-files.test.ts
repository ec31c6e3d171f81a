/**
 * A download's files on disk (device/storage.ts DownloadFiles): each chunk costs the payload write and
 * one in-place byte of the bitmap, no temporary file and rename per chunk; what is on disk is the
 * bitmap in memory after every write, a reopen reads it back, and a bitmap of the wrong length is
 * replaced by an empty one. Real files in a temp dir, through a node:fs port that counts its calls.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceStorage } from '../../device/storage.ts';
import { chunkRange } from '../../protocol/chunks.ts';
import { nodeFs, type FileHandlePort, type FsPort } from '../../platform/fs-port.ts';
import { payloadStep } from '../support/payload-step.ts';

const CHUNK = 256;
const CHUNKS = 19; // three bitmap bytes, the last one partly used
const { payload, step } = payloadStep(CHUNK, CHUNKS, (i) => (i * 11 + 5) % 251, 'ef'.repeat(32));

/** nodeFs, counting each call by name (and each handle's writes and closes). */
function countingFs(): { fsys: FsPort; calls: Map<string, number> } {
  const calls = new Map<string, number>();
  const count = (k: string): void => void calls.set(k, (calls.get(k) ?? 0) + 1);
  const handle = (h: FileHandlePort): FileHandlePort => ({
    read: (...a) => h.read(...a),
    write: (...a) => (count('handle.write'), h.write(...a)),
    truncate: (n) => h.truncate(n),
    stat: () => h.stat(),
    sync: () => (count('handle.sync'), h.sync()),
    close: () => (count('handle.close'), h.close()),
  });
  const fsys: FsPort = {
    ...nodeFs,
    open: async (f, flags, mode) => (count('open'), handle(await nodeFs.open(f, flags, mode))),
    writeFile: (f, d) => (count('writeFile'), nodeFs.writeFile(f, d)),
    rename: (a, b) => (count('rename'), nodeFs.rename(a, b)),
  };
  return { fsys, calls };
}

let dir: string | undefined;
afterEach(async () => {
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function open(fsys: FsPort): Promise<{ storage: DeviceStorage; bitmapFile: string }> {
  dir ??= await fs.mkdtemp(path.join(os.tmpdir(), 'download-files-'));
  const storage = new DeviceStorage(dir, fsys);
  await storage.init();
  return { storage, bitmapFile: path.join(storage.downloadDir(step.updateId), 'bitmap') };
}

const chunk = (i: number): [number, Uint8Array] => {
  const [b, e] = chunkRange(step.size, step.chunkSize, i);
  return [b, payload.subarray(b, e)];
};

describe('DownloadFiles', () => {
  it('a chunk is two in-place writes (payload, one bitmap byte): no temporary file, no rename; the file always equals the bitmap', async () => {
    const { fsys, calls } = countingFs();
    const { storage, bitmapFile } = await open(fsys);
    const files = await storage.openDownload(step);
    expect(new Uint8Array(await fs.readFile(bitmapFile))).toEqual(new Uint8Array(3));
    calls.clear();
    for (const i of [0, 9, 18, 7, 8]) {
      await files.writeChunk(i, ...chunk(i));
      expect(new Uint8Array(await fs.readFile(bitmapFile))).toEqual(files.bitmap.bytes);
    }
    expect(Object.fromEntries(calls)).toEqual({ 'handle.write': 10 });
    await files.close();
    expect(calls.get('handle.close')).toBe(2); // the payload and the bitmap

    const again = await (await open(nodeFs)).storage.openDownload(step);
    expect([0, 7, 8, 9, 18].every((i) => again.bitmap.has(i))).toBe(true);
    expect(again.bitmap.count).toBe(5);
    expect(await again.readRange(9 * CHUNK, CHUNK)).toEqual(chunk(9)[1]);
    // saveBitmap (a resume that dropped chunks that no longer verify) writes the cleared bits too.
    again.bitmap.clear(7);
    await again.saveBitmap();
    await again.close();
    const third = await (await open(nodeFs)).storage.openDownload(step);
    expect(third.bitmap.has(7)).toBe(false);
    expect(third.bitmap.count).toBe(4);
    await third.close();
  });

  it('a bitmap of the wrong length on disk is replaced by an empty one of the right length', async () => {
    const { storage, bitmapFile } = await open(nodeFs);
    await fs.mkdir(path.dirname(bitmapFile), { recursive: true });
    await fs.writeFile(bitmapFile, new Uint8Array(7).fill(0xff));
    const files = await storage.openDownload(step);
    expect(files.bitmap.count).toBe(0);
    expect(new Uint8Array(await fs.readFile(bitmapFile))).toEqual(new Uint8Array(3));
    await files.writeChunk(18, ...chunk(18));
    await files.close();
    expect(new Uint8Array(await fs.readFile(bitmapFile))).toEqual(Uint8Array.from([0, 0, 0b100]));
  });
});
