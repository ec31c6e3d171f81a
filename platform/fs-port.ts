import { promises as fs } from 'node:fs';

/**
 * An open file, as the device's storage path uses it: positional reads and
 * writes, truncate, size, fsync, close. A node:fs FileHandle is one as it is.
 */
export interface FileHandlePort {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  truncate(length: number): Promise<void>;
  stat(): Promise<{ size: number }>;
  /** fsync: the file's data survives a power cut (its name needs an fsync of its directory). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** 'r' read; 'r+' read and write; 'w' create or truncate, write; 'w+' create or truncate, read and write. */
export type OpenFlags = 'r' | 'r+' | 'w' | 'w+';

/**
 * The file-system operations of the device's storage path (DeviceStorage,
 * Installer, applyToFile/commitFile, fs-atomic, ModelFile), and no others,
 * so that a test can run that path over a model of a disk and its page cache.
 * Errors carry node's `code` ('ENOENT', ...), as node:fs errors do.
 */
export interface FsPort {
  open(file: string, flags: OpenFlags, mode?: number): Promise<FileHandlePort>;
  readFile(file: string): Promise<Uint8Array>;
  /** Create or replace a file with these bytes (no fsync). */
  writeFile(file: string, data: Uint8Array | string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  /** Remove a file or symlink (never following it), or a directory tree with `recursive`; `force` ignores a missing path. */
  rm(target: string, opts?: { recursive?: boolean; force?: boolean }): Promise<void>;
  /** mkdir -p. */
  mkdirp(dir: string): Promise<void>;
  readdir(dir: string): Promise<string[]>;
  symlink(target: string, file: string): Promise<void>;
  readlink(file: string): Promise<string>;
  /** fsync a directory: the entries it holds (creations, renames, removals) survive a power cut. */
  fsyncDir(dir: string): Promise<void>;
  /** Bytes available to an unprivileged user on the file system holding `dir`. */
  freeBytes(dir: string): Promise<number>;
  /** Copy a file's bytes to a new file (no fsync). */
  copyFile(from: string, to: string): Promise<void>;
  /** True when the path (following symlinks) exists. */
  exists(file: string): Promise<boolean>;
}

/** The real file system (node:fs/promises). */
export const nodeFs: FsPort = {
  open: (file, flags, mode) => fs.open(file, flags, mode),
  readFile: async (file) => {
    const b = await fs.readFile(file);
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  },
  writeFile: (file, data) => fs.writeFile(file, data),
  rename: (from, to) => fs.rename(from, to),
  rm: (target, opts) => fs.rm(target, opts),
  mkdirp: async (dir) => {
    await fs.mkdir(dir, { recursive: true });
  },
  readdir: (dir) => fs.readdir(dir),
  symlink: (target, file) => fs.symlink(target, file),
  readlink: (file) => fs.readlink(file),
  fsyncDir: async (dir) => {
    const h = await fs.open(dir, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  },
  freeBytes: async (dir) => {
    const s = await fs.statfs(dir);
    return s.bavail * s.bsize;
  },
  copyFile: (from, to) => fs.copyFile(from, to),
  exists: async (file) => {
    try {
      await fs.access(file);
      return true;
    } catch {
      return false;
    }
  },
};

/** Write all of `data` at `position` (positional writes may be short). */
export async function writeFully(h: FileHandlePort, data: Uint8Array, position = 0): Promise<void> {
  let done = 0;
  while (done < data.byteLength) {
    const { bytesWritten } = await h.write(data, done, data.byteLength - done, position + done);
    done += bytesWritten;
  }
}
