import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Bitmap } from '../protocol/chunks.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import type { DeviceStatus } from '../protocol/status.ts';
import { exists, fsyncDir, readJson, writeFileAtomic, writeFileReplacing } from '../util/fs-atomic.ts';

/** What the agent remembers across restarts (state.json). */
export interface AgentMemory {
  /** Highest release sequence accepted; -1 before any. */
  highestSeq: number;
  /** Highest release issued time seen (unix seconds): a clock floor. */
  clockFloor: number;
  /** Hashes of releases refused, newest last (bounded). */
  refused: string[];
  /** Hash of the last release accepted and acted on. */
  handled: string | null;
  /** The release being worked on, so a restart resumes it. */
  active: { releaseHash: string; seq: number; step: ReleaseStep } | null;
  /** The last status published, re-published on start. */
  lastStatus: DeviceStatus | null;
}

const EMPTY_MEMORY: AgentMemory = { highestSeq: -1, clockFloor: 0, refused: [], handled: null, active: null, lastStatus: null };
const MAX_REFUSED = 128;

/** The atomic pointer (file `current`): which version runs and which ran before. */
export interface Pointer {
  digest: string;
  previous: string | null;
}

/**
 * The device directory:
 *   models/{digest}.safetensors   every kept version, named by digest
 *   current                       the pointer (JSON), replaced atomically
 *   current.safetensors           symlink to the running version: the path applications load
 *   state.json                    AgentMemory
 *   downloads/{updateId}/         payload (chunks at their offsets), bitmap, list
 */
export class DeviceStorage {
  constructor(readonly dir: string) {}

  modelPath(digest: string): string {
    return path.join(this.dir, 'models', `${digest}.safetensors`);
  }
  get currentPath(): string {
    return path.join(this.dir, 'current.safetensors');
  }
  private get pointerFile(): string {
    return path.join(this.dir, 'current');
  }
  private get memoryFile(): string {
    return path.join(this.dir, 'state.json');
  }
  downloadDir(updateId: string): string {
    return path.join(this.dir, 'downloads', updateId);
  }

  async init(): Promise<void> {
    await fs.mkdir(path.join(this.dir, 'models'), { recursive: true });
    await fs.mkdir(path.join(this.dir, 'downloads'), { recursive: true });
  }

  async pointer(): Promise<Pointer | undefined> {
    return readJson<Pointer>(this.pointerFile);
  }

  /** Install a model file as a version (copy, fsync, rename). */
  async installVersion(digest: string, bytes: Uint8Array): Promise<void> {
    await writeFileAtomic(this.modelPath(digest), bytes);
  }

  /**
   * Make `digest` current: the pointer file is replaced atomically (temp,
   * fsync, rename, fsync dir), then the symlink likewise.
   */
  async switchTo(digest: string, previous: string | null): Promise<void> {
    if (!(await exists(this.modelPath(digest)))) throw new Error(`no model version ${digest}`);
    await writeFileAtomic(this.pointerFile, JSON.stringify({ digest, previous } satisfies Pointer));
    const tmp = `${this.currentPath}.tmp-${process.pid}`;
    await fs.rm(tmp, { force: true });
    await fs.symlink(path.join('models', `${digest}.safetensors`), tmp);
    await fs.rename(tmp, this.currentPath);
    await fsyncDir(this.dir);
  }

  /** Delete versions other than the current and previous ones. */
  async prune(keep: string[]): Promise<void> {
    for (const f of await fs.readdir(path.join(this.dir, 'models'))) {
      const digest = f.replace(/\.safetensors$/, '');
      if (!keep.includes(digest)) await fs.rm(path.join(this.dir, 'models', f), { force: true });
    }
  }

  async memory(): Promise<AgentMemory> {
    return { ...EMPTY_MEMORY, ...((await readJson<AgentMemory>(this.memoryFile)) ?? {}) };
  }

  async saveMemory(m: AgentMemory): Promise<void> {
    if (m.refused.length > MAX_REFUSED) m.refused = m.refused.slice(-MAX_REFUSED);
    await writeFileAtomic(this.memoryFile, JSON.stringify(m));
  }

  // --- downloads -----------------------------------------------------------

  async openDownload(step: ReleaseStep): Promise<DownloadFiles> {
    const dir = this.downloadDir(step.updateId);
    await fs.mkdir(dir, { recursive: true });
    const payloadFile = path.join(dir, 'payload');
    const h = await fs.open(payloadFile, (await exists(payloadFile)) ? 'r+' : 'w+');
    const st = await h.stat();
    if (st.size !== step.size) await h.truncate(step.size);
    const bitmapBytes = await fs.readFile(path.join(dir, 'bitmap')).catch(() => undefined);
    const bitmap = bitmapBytes && bitmapBytes.byteLength === Math.ceil(step.chunks / 8)
      ? new Bitmap(step.chunks, new Uint8Array(bitmapBytes))
      : new Bitmap(step.chunks);
    const list = await fs.readFile(path.join(dir, 'list')).catch(() => undefined);
    return new DownloadFiles(dir, h, bitmap, list ? new Uint8Array(list) : undefined);
  }

  async removeDownload(updateId: string): Promise<void> {
    await fs.rm(this.downloadDir(updateId), { recursive: true, force: true });
  }

  async freeBytes(): Promise<number> {
    const s = await fs.statfs(this.dir);
    return s.bavail * s.bsize;
  }
}

/**
 * One download's files. A chunk's bytes are written before its bitmap bit,
 * so a set bit means the bytes were written (and a resumed download re-checks
 * every set bit against the chunk list anyway, for power cuts).
 */
export class DownloadFiles {
  constructor(
    readonly dir: string,
    private readonly payload: fs.FileHandle,
    readonly bitmap: Bitmap,
    public list: Uint8Array | undefined,
  ) {}

  async saveList(list: Uint8Array): Promise<void> {
    await writeFileReplacing(path.join(this.dir, 'list'), list);
    this.list = list;
  }

  async writeChunk(index: number, offset: number, data: Uint8Array): Promise<void> {
    await this.payload.write(data, 0, data.byteLength, offset);
    this.bitmap.set(index);
    await writeFileReplacing(path.join(this.dir, 'bitmap'), this.bitmap.bytes);
  }

  async readRange(offset: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    const { bytesRead } = await this.payload.read(buf, 0, length, offset);
    return bytesRead === length ? buf : buf.subarray(0, bytesRead);
  }

  async saveBitmap(): Promise<void> {
    await writeFileReplacing(path.join(this.dir, 'bitmap'), this.bitmap.bytes);
  }

  private closed = false;

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.payload.close();
  }
}
