import { ignoreBecause, IoError, UsageError } from '../platform/errors.ts';
import path from 'node:path';
import { Bitmap } from '../protocol/chunks.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import { isJournal, type Journal } from './journal.ts';
import type { DeviceStatus } from '../protocol/status.ts';
import { exists, fsyncDir, fsyncFile, readJson, writeFileAtomic, writeFileReplacing } from '../util/fs-atomic.ts';
import { nodeFs, writeFully, type FileHandlePort, type FsPort } from '../platform/fs-port.ts';
import { MODEL_FORMATS, SAFETENSORS, type ModelFormat } from '../util/model-format.ts';

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

const DIGEST_FILE = /^([0-9a-f]{64})\.(safetensors|onnx)$/;
/** Temporary files of the atomic replacements in the directory itself (a killed process leaves them). */
const TEMP_FILE = /^(current\.safetensors|current\.onnx|previous|journal\.json|state\.json)\.tmp-/;

/**
 * The device directory (shown for safetensors; an ONNX device has current.onnx and
 * models/{digest}.onnx, the format being the initial model's, util/model-format.ts):
 *   current.safetensors           symlink to models/{digest}.safetensors: THE atomic pointer,
 *                                 and the path applications load
 *   previous                      JSON {digest}: the version before (rollback, pruning)
 *   models/{digest}.safetensors   every kept version, named by digest
 *   models/*.staged, *.tmp-*      a version being built (discarded on start)
 *   *.tmp-*                       a replacement interrupted (discarded on start)
 *   journal.json                  where an install stands (device/journal.ts)
 *   state.json                    AgentMemory
 *   downloads/{updateId}/         payload (chunks at their offsets), bitmap, list
 *
 * Every file-system call goes through `fsys` (node:fs by default), so that
 * tests can run this over a model of a disk that loses what was not fsynced.
 */
export class DeviceStorage {
  private fmt: ModelFormat | undefined;

  /** `format`: the model format of this directory; without it, the one of its current.* link (safetensors when there is none yet). */
  constructor(
    readonly dir: string,
    readonly fsys: FsPort = nodeFs,
    format?: ModelFormat,
  ) {
    this.fmt = format;
  }

  /** The model format of this directory (known after init() when not given). */
  get format(): ModelFormat {
    return this.fmt ?? SAFETENSORS;
  }

  modelPath(digest: string): string {
    return path.join(this.dir, 'models', `${digest}${this.format.extension}`);
  }
  stagedPath(digest: string): string {
    return path.join(this.dir, 'models', `${digest}.staged`);
  }
  get currentPath(): string {
    return path.join(this.dir, `current${this.format.extension}`);
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
    const held: ModelFormat[] = [];
    for (const f of MODEL_FORMATS) {
      const link = await this.fsys.readlink(path.join(this.dir, `current${f.extension}`)).catch(ignoreBecause('no current link of this format'));
      if (link !== undefined) held.push(f);
    }
    if (held.length > 1) throw new UsageError('two-formats', `${this.dir} holds both ${held.map((f) => `current${f.extension}`).join(' and ')}: remove the one no application loads`);
    if (held.length === 1 && this.fmt && held[0] !== this.fmt) {
      throw new UsageError('wrong-format', `${this.dir} runs a model in the ${held[0].name} format (current${held[0].extension}); the initial model given is ${this.fmt.name}: use another directory for it`);
    }
    this.fmt ??= held[0];
    await this.fsys.mkdirp(path.join(this.dir, 'models'));
    await this.fsys.mkdirp(path.join(this.dir, 'downloads'));
  }

  async pointer(): Promise<Pointer | undefined> {
    let target: string;
    try {
      target = await this.fsys.readlink(this.currentPath);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    const m = DIGEST_FILE.exec(path.basename(target));
    if (!m) throw new IoError('damaged-directory', `${this.currentPath} points at ${target}, which is not a model version`);
    const prev = await readJson<{ digest: string | null }>(this.previousFile, this.fsys);
    return { digest: m[1], previous: prev?.digest ?? null };
  }

  async hasVersion(digest: string): Promise<boolean> {
    return exists(this.modelPath(digest), this.fsys);
  }

  /**
   * Install a model file as a version without holding it in memory: copy it
   * into models/ under a staging name (removed on start if a crash leaves
   * it), fsync, digest the copy itself, rename it to its digest, fsync the
   * directory. Returns the digest.
   */
  async installVersionFromFile(file: string, digestOf: (file: string, fsys: FsPort) => Promise<string>): Promise<string> {
    const tmp = path.join(this.dir, 'models', `provision.staged.${process.pid}`);
    await this.fsys.copyFile(file, tmp);
    await fsyncFile(tmp, this.fsys);
    const digest = await digestOf(tmp, this.fsys);
    await this.fsys.rename(tmp, this.modelPath(digest));
    await fsyncDir(path.join(this.dir, 'models'), this.fsys);
    return digest;
  }

  /**
   * Make `digest` current: make the version itself durable (its bytes and its
   * name in models/: a killed process may have renamed it there without the
   * directory fsync), record `previous` (temp, fsync, rename), then replace
   * the symlink atomically (new link, rename over, fsync the directory).
   */
  async switchTo(digest: string, previous: string | null): Promise<void> {
    const file = this.modelPath(digest);
    if (!(await exists(file, this.fsys))) throw new IoError('no-such-version', `no model version ${digest}`);
    await fsyncFile(file, this.fsys);
    await fsyncDir(path.dirname(file), this.fsys);
    await writeFileAtomic(this.previousFile, JSON.stringify({ digest: previous }), undefined, this.fsys);
    const tmp = `${this.currentPath}.tmp-${process.pid}`;
    await this.fsys.rm(tmp, { force: true });
    await this.fsys.symlink(path.join('models', `${digest}${this.format.extension}`), tmp);
    await this.fsys.rename(tmp, this.currentPath);
    await fsyncDir(this.dir, this.fsys);
  }

  async journal(): Promise<Journal | undefined> {
    const j = await readJson<unknown>(this.journalFile, this.fsys);
    return isJournal(j) ? j : undefined;
  }

  async writeJournal(j: Journal): Promise<void> {
    await writeFileAtomic(this.journalFile, JSON.stringify(j), undefined, this.fsys);
  }

  async clearJournal(): Promise<void> {
    await this.fsys.rm(this.journalFile, { force: true });
    await fsyncDir(this.dir, this.fsys);
  }

  /** Remove half-built versions (staged and temporary files), and the temporary files of interrupted replacements. */
  async removeStaging(): Promise<string[]> {
    const gone: string[] = [];
    for (const f of await this.fsys.readdir(path.join(this.dir, 'models'))) {
      if (DIGEST_FILE.test(f)) continue;
      await this.fsys.rm(path.join(this.dir, 'models', f), { force: true });
      gone.push(f);
    }
    for (const f of await this.fsys.readdir(this.dir)) {
      if (TEMP_FILE.test(f)) await this.fsys.rm(path.join(this.dir, f), { force: true });
    }
    return gone;
  }

  /** Delete versions other than the ones to keep (the current and the previous). */
  async prune(keep: string[]): Promise<void> {
    for (const f of await this.fsys.readdir(path.join(this.dir, 'models'))) {
      const m = DIGEST_FILE.exec(f);
      if (m && !keep.includes(m[1])) await this.fsys.rm(path.join(this.dir, 'models', f), { force: true });
    }
  }

  async memory(): Promise<AgentMemory> {
    return { ...EMPTY_MEMORY, ...((await readJson<AgentMemory>(this.memoryFile, this.fsys)) ?? {}) };
  }

  async saveMemory(m: AgentMemory): Promise<void> {
    if (m.refused.length > MAX_REFUSED) m.refused = m.refused.slice(-MAX_REFUSED);
    await writeFileAtomic(this.memoryFile, JSON.stringify(m), undefined, this.fsys);
  }

  // --- downloads -----------------------------------------------------------

  async openDownload(step: ReleaseStep): Promise<DownloadFiles> {
    const dir = this.downloadDir(step.updateId);
    await this.fsys.mkdirp(dir);
    const payloadFile = path.join(dir, 'payload');
    const h = await this.fsys.open(payloadFile, (await exists(payloadFile, this.fsys)) ? 'r+' : 'w+');
    const st = await h.stat();
    if (st.size !== step.size) await h.truncate(step.size);
    const bitmapFile = path.join(dir, 'bitmap');
    const bitmapBytes = await this.fsys.readFile(bitmapFile).catch(ignoreBecause('no bitmap yet (or unreadable): start from an empty one; every chunk is verified anyway'));
    const fits = bitmapBytes !== undefined && bitmapBytes.byteLength === Math.ceil(step.chunks / 8);
    const bitmap = fits ? new Bitmap(step.chunks, new Uint8Array(bitmapBytes)) : new Bitmap(step.chunks);
    let bh: FileHandlePort;
    try {
      // Replaced whole once when it does not fit (written in place from then on: DownloadFiles.writeChunk).
      if (!fits) await writeFileReplacing(bitmapFile, bitmap.bytes, this.fsys);
      bh = await this.fsys.open(bitmapFile, 'r+');
    } catch (e) {
      await h.close();
      throw e;
    }
    const list = await this.fsys.readFile(path.join(dir, 'list')).catch(ignoreBecause('no chunk list yet (or unreadable): it is fetched again and checked against the release'));
    return new DownloadFiles(dir, h, bitmap, list ? new Uint8Array(list) : undefined, this.fsys, bh);
  }

  async removeDownload(updateId: string): Promise<void> {
    await this.fsys.rm(this.downloadDir(updateId), { recursive: true, force: true });
  }

  async freeBytes(): Promise<number> {
    return this.fsys.freeBytes(this.dir);
  }
}

/**
 * One download's files. A chunk's bytes are written before its bitmap bit,
 * so a set bit means the bytes were written (and a resumed download re-checks
 * every set bit against the chunk list anyway, for power cuts). The bitmap is
 * written in place through an open handle, one byte per chunk (the byte that
 * holds its bit): bits are only set while a download runs, so a stop at any
 * point leaves each byte old or new, and a set bit is checked on resume anyway.
 * (It was a whole-file replacement per chunk: a temporary file, its write and
 * a rename, five file operations per chunk where the payload needs one.)
 */
export class DownloadFiles {
  constructor(
    readonly dir: string,
    private readonly payload: FileHandlePort,
    readonly bitmap: Bitmap,
    public list: Uint8Array | undefined,
    private readonly fsys: FsPort = nodeFs,
    /** The bitmap file opened for writing in place (without: replaced whole at each write). */
    private readonly bitmapHandle?: FileHandlePort,
  ) {}

  async saveList(list: Uint8Array): Promise<void> {
    await writeFileReplacing(path.join(this.dir, 'list'), list, this.fsys);
    this.list = list;
  }

  async writeChunk(index: number, offset: number, data: Uint8Array): Promise<void> {
    await this.payload.write(data, 0, data.byteLength, offset);
    this.bitmap.set(index);
    if (this.bitmapHandle) await writeFully(this.bitmapHandle, this.bitmap.bytes.subarray(index >> 3, (index >> 3) + 1), index >> 3);
    else await this.saveBitmap();
  }

  async readRange(offset: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    const { bytesRead } = await this.payload.read(buf, 0, length, offset);
    return bytesRead === length ? buf : buf.subarray(0, bytesRead);
  }

  async saveBitmap(): Promise<void> {
    if (this.bitmapHandle) await writeFully(this.bitmapHandle, this.bitmap.bytes, 0);
    else await writeFileReplacing(path.join(this.dir, 'bitmap'), this.bitmap.bytes, this.fsys);
  }

  private closed = false;

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.payload.close();
    } finally {
      await this.bitmapHandle?.close();
    }
  }
}
