import path from 'node:path';
import { nodeFs, writeFully, type FsPort } from '../platform/fs-port.ts';

const bytesOf = (data: Uint8Array | string): Uint8Array => (typeof data === 'string' ? new TextEncoder().encode(data) : data);

/** fsync a directory so a rename inside it survives a power cut. */
export async function fsyncDir(dir: string, fsys: FsPort = nodeFs): Promise<void> {
  await fsys.fsyncDir(dir);
}

/** fsync a file by name: its bytes (not its name) survive a power cut. */
export async function fsyncFile(file: string, fsys: FsPort = nodeFs): Promise<void> {
  const h = await fsys.open(file, 'r+');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

/** Write a file atomically: temp file, fsync, rename, fsync the directory. */
export async function writeFileAtomic(file: string, data: Uint8Array | string, mode?: number, fsys: FsPort = nodeFs): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const h = await fsys.open(tmp, 'w', mode);
  try {
    await writeFully(h, bytesOf(data));
    await h.sync();
  } finally {
    await h.close();
  }
  await fsys.rename(tmp, file);
  await fsys.fsyncDir(path.dirname(file));
}

export async function exists(p: string, fsys: FsPort = nodeFs): Promise<boolean> {
  return fsys.exists(p);
}

export async function readJson<T>(file: string, fsys: FsPort = nodeFs): Promise<T | undefined> {
  try {
    return JSON.parse(new TextDecoder('utf-8', { ignoreBOM: true }).decode(await fsys.readFile(file))) as T;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/**
 * Write via temp file and rename, without fsync: a killed process leaves the
 * old file or the new one, never a torn one. Use where a later hash check
 * catches what a power cut could lose.
 */
export async function writeFileReplacing(file: string, data: Uint8Array | string, fsys: FsPort = nodeFs): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  await fsys.writeFile(tmp, data);
  await fsys.rename(tmp, file);
}
