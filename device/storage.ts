import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Bitmap } from '../protocol/chunks.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import { isJournal, type Journal } from './journal.ts';
import type { DeviceStatus } from '../protocol/status.ts';
import { exists, fsyncDir, readJson, writeFileAtomic, writeFileReplacing } from '../util/fs-atomic.ts';

/** The release being installed: where it goes and the steps that get there. */
export interface ActiveRelease {
  releaseHash: string;
  seq: number;
  target: string;
  /** The steps to apply in order (empty when switching back to a version held on disk). */
  steps: ReleaseStep[];
  rollback: boolean;
}

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
  active: ActiveRelease | null;
  /** The last status published, re-published on start. */
  lastStatus: DeviceStatus | null;
}

const EMPTY_MEMORY: AgentMemory = { highestSeq: -1, clockFloor: 0, refused: [], handled: null, active: null, lastStatus: null };
const MAX_REFUSED = 128;

/** Which version runs (the symlink) and which ran before (for rollback and pruning). */
export interface Pointer {
  digest: string;
  previous: string | null;
}

const DIGEST_FILE = /^([0-9a-f]{64})\.safetensors$/;

/**
 * The device directory:
 *   current.safetensors           symlink to models/{digest}.safetensors: THE atomic pointer,
 *                                 and the path applications load
 *   previous                      JSON {digest}: the version before (rollback, pruning)
 *   models/{digest}.safetensors   every kept version, named by digest
 *   models/*.staged, *.tmp-*      a version being built (discarded on start)
 *   journal.json                  where an install stands (device/journal.ts)
 *   state.json                    AgentMemory
 *   downloads/{updateId}/         payload (chunks at their offsets), bitmap, list
 */
export class DeviceStorage {
  constructor(readonly dir: string) {}

  modelPath(digest: string): string {
    return path.join(this.dir, 'models', `${digest}.safetensors`);
  }
  stagedPath(digest: string): string {
    return path.join(this.dir, 'models', `${digest}.staged`);
  }
  get currentPath(): string {
    return path.join(this.dir, 'current.safetensors');
  }
  private get previousFile(): string {
    return path.join(this.dir, 'previous');
  }
  private get journalFile(): string {
    return path.join(this.dir, 'journal.json');
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
    let target: string;
    try {
      target = await fs.readlink(this.currentPath);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    const m = DIGEST_FILE.exec(path.basename(target));
    if (!m) throw new Error(`${this.currentPath} points at ${target}, which is not a model version`);
    const prev = await readJson<{ digest: string | null }>(this.previousFile);
    return { digest: m[1], previous: prev?.digest ?? null };
  }

  async hasVersion(digest: string): Promise<boolean> {
    return exists(this.modelPath(digest));
  }

  /** Install a model file as a version (copy, fsync, rename). */
  async installVersion(digest: string, bytes: Uint8Array): Promise<void> {
    await writeFileAtomic(this.modelPath(digest), bytes);
  }

  /**
   * Make `digest` current: record `previous` (temp, fsync, rename), then
   * replace the symlink atomically (new link, rename over, fsync the directory).
   */
  async switchTo(digest: string, previous: string | null): Promise<void> {
    if (!(await exists(this.modelPath(digest)))) throw new Error(`no model version ${digest}`);
    await writeFileAtomic(this.previousFile, JSON.stringify({ digest: previous }));
    const tmp = `${this.currentPath}.tmp-${process.pid}`;
    await fs.rm(tmp, { force: true });
    await fs.symlink(path.join('models', `${digest}.safetensors`), tmp);
    await fs.rename(tmp, this.currentPath);
    await fsyncDir(this.dir);
  }

  async journal(): Promise<Journal | undefined> {
    const j = await readJson<unknown>(this.journalFile);
    return isJournal(j) ? j : undefined;
  }

  async writeJournal(j: Journal): Promise<void> {
    await writeFileAtomic(this.journalFile, JSON.stringify(j));
  }

  async clearJournal(): Promise<void> {
    await fs.rm(this.journalFile, { force: true });
    await fsyncDir(this.dir);
  }

  /** Remove half-built versions (staged and temporary files). */
  async removeStaging(): Promise<string[]> {
    const gone: string[] = [];
    for (const f of await fs.readdir(path.join(this.dir, 'models'))) {
      if (DIGEST_FILE.test(f)) continue;
      await fs.rm(path.join(this.dir, 'models', f), { force: true });
      gone.push(f);
    }
    for (const f of await fs.readdir(this.dir)) {
      if (f.startsWith('current.safetensors.tmp-')) await fs.rm(path.join(this.dir, f), { force: true });
    }
    return gone;
  }

  /** Delete versions other than the ones to keep (the current and the previous). */
  async prune(keep: string[]): Promise<void> {
    for (const f of await fs.readdir(path.join(this.dir, 'models'))) {
      const m = DIGEST_FILE.exec(f);
      if (m && !keep.includes(m[1])) await fs.rm(path.join(this.dir, 'models', f), { force: true });
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
