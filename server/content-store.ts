import { FleetError, ignoreBecause } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { chunkList, sha256Hex, updateIdOf, type PayloadDescriptor } from '../protocol/chunks.ts';
import { isUpdateId } from '../protocol/frames.ts';
import { isTopicSegment } from '../protocol/topics.ts';
import { decodeRelease } from '../protocol/release.ts';
import { exists, readJson, writeFileAtomic, writeFileReplacing } from '../util/fs-atomic.ts';

export interface StoredUpdate extends PayloadDescriptor {
  model: string;
}

export interface UploadProgress {
  stored: boolean;
  count: number;
  have: number;
  missing: number[];
  error?: string;
}

/** An upload that received no chunk for this long is abandoned and removed. */
export const UPLOAD_TTL_MS = 2 * 3600_000;

/** Raised when an upload cannot be accepted; the message says why. */
export class StoreError extends FleetError<'hash-mismatch' | 'inconsistent-upload' | 'bad-id'> {
  override readonly name = 'StoreError';
  constructor(code: 'hash-mismatch' | 'inconsistent-upload' | 'bad-id', message: string) {
    super('refusal', code, message);
  }
}

/**
 * The update server's content store on disk:
 *   updates/{updateId}/payload, list, meta.json   complete, verified updates
 *   uploads/{updateId}/{index}, count             uploads in progress (one file per chunk)
 *   releases/{group}/{model}.cbor                 the latest release per group and model
 * Content-addressed: identical updates are stored once.
 */
export class ContentStore {
  /** Open payload files, by update id: the opening promise, so overlapping reads share one handle. */
  private readonly handles = new Map<string, Promise<fs.FileHandle>>();
  private readonly metas = new Map<string, StoredUpdate>();
  private readonly lists = new Map<string, Uint8Array>();
  /** Indices on disk per upload in progress (loaded from disk on first touch). */
  private readonly uploads = new Map<string, Set<number>>();
  /** Serialises the work on one upload so it is assembled exactly once. */
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    for (const d of ['updates', 'uploads', 'releases']) await fs.mkdir(path.join(this.dir, d), { recursive: true });
  }

  private updateDir(id: string): string {
    if (!isUpdateId(id)) throw new StoreError('bad-id', `bad update id ${id}`);
    return path.join(this.dir, 'updates', id);
  }

  async meta(id: string): Promise<StoredUpdate | undefined> {
    if (!isUpdateId(id)) return undefined;
    const cached = this.metas.get(id);
    if (cached) return cached;
    const m = await readJson<StoredUpdate>(path.join(this.updateDir(id), 'meta.json'));
    if (m) this.metas.set(id, m);
    return m;
  }

  async list(id: string): Promise<Uint8Array | undefined> {
    const cached = this.lists.get(id);
    if (cached) return cached;
    if (!(await this.meta(id))) return undefined;
    const l = new Uint8Array(await fs.readFile(path.join(this.updateDir(id), 'list')));
    this.lists.set(id, l);
    return l;
  }

  async readChunk(id: string, index: number): Promise<Uint8Array | undefined> {
    const m = await this.meta(id);
    if (!m || index < 0 || index >= m.chunks) return undefined;
    let opening = this.handles.get(id);
    if (!opening) {
      opening = fs.open(path.join(this.updateDir(id), 'payload'), 'r');
      this.handles.set(id, opening);
      opening.catch(() => this.handles.delete(id));
      if (this.handles.size > 32) {
        const [oldId, old] = this.handles.entries().next().value as [string, Promise<fs.FileHandle>];
        this.handles.delete(oldId);
        void old.then((o) => o.close()).catch(ignoreBecause('an evicted read handle: its open failed (and was dropped) or closing it freed nothing more'));
      }
    }
    let h: fs.FileHandle;
    try {
      h = await opening;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      // Removed by `fleet gc` while cached here: it is gone.
      this.metas.delete(id);
      this.lists.delete(id);
      return undefined;
    }
    const begin = index * m.chunkSize;
    const len = Math.min(m.chunkSize, m.size - begin);
    const buf = new Uint8Array(len);
    const { bytesRead } = await h.read(buf, 0, len, begin);
    return bytesRead === len ? buf : undefined;
  }

  /** Store a complete payload directly (used by `fleet serve` imports and tests). */
  async putPayload(model: string, payload: Uint8Array, chunkSize: number): Promise<StoredUpdate> {
    const id = updateIdOf(payload);
    const have = await this.meta(id);
    if (have) return have;
    const list = chunkList(payload, chunkSize);
    const meta: StoredUpdate = {
      updateId: id,
      model,
      size: payload.byteLength,
      sha256: sha256Hex(payload),
      chunkSize,
      chunks: list.byteLength / 32,
      listSha256: sha256Hex(list),
    };
    const tmp = path.join(this.dir, 'updates', `.${id}.tmp-${process.pid}`);
    await fs.rm(tmp, { recursive: true, force: true });
    await fs.mkdir(tmp, { recursive: true });
    await writeFileAtomic(path.join(tmp, 'payload'), payload);
    await writeFileAtomic(path.join(tmp, 'list'), list);
    await writeFileAtomic(path.join(tmp, 'meta.json'), JSON.stringify(meta));
    await fs.rename(tmp, this.updateDir(id));
    return meta;
  }

  /**
   * Accept one uploaded chunk. Chunks are written one file each (idempotent by
   * update id and index); when all are there the payload is assembled, its
   * hash checked against the update id, and the update becomes servable.
   */
  receiveUpload(model: string, id: string, index: number, count: number, data: Uint8Array): Promise<UploadProgress> {
    const prev = this.locks.get(id) ?? Promise.resolve();
    const next = prev.catch(ignoreBecause("the previous chunk's failure went to its own caller")).then(() => this.receiveUploadLocked(model, id, index, count, data));
    this.locks.set(id, next);
    void next
      .finally(() => {
        if (this.locks.get(id) === next) this.locks.delete(id);
      })
      .catch(ignoreBecause('the caller gets this failure from `next` itself'));
    return next;
  }

  private async receiveUploadLocked(model: string, id: string, index: number, count: number, data: Uint8Array): Promise<UploadProgress> {
    if (!isUpdateId(id)) throw new StoreError('bad-id', `bad update id ${id}`);
    const done = await this.meta(id);
    if (done) return { stored: true, count: done.chunks, have: done.chunks, missing: [] };
    const dir = path.join(this.dir, 'uploads', id);
    await fs.mkdir(dir, { recursive: true });
    const countFile = path.join(dir, 'count');
    const known = await readJson<number>(countFile);
    if (known !== undefined && known !== count) {
      await fs.rm(dir, { recursive: true, force: true });
      this.uploads.delete(id);
      throw new StoreError('inconsistent-upload', `upload ${id} changed its chunk count from ${known} to ${count}; restart it`);
    }
    if (known === undefined) await writeFileAtomic(countFile, JSON.stringify(count));
    let present = this.uploads.get(id);
    if (!present) {
      present = new Set((await fs.readdir(dir)).filter((f) => /^\d+$/.test(f)).map(Number));
      this.uploads.set(id, present);
    }
    if (!present.has(index)) {
      await writeFileReplacing(path.join(dir, String(index)), data);
      present.add(index);
    }
    const missing: number[] = [];
    for (let i = 0; i < count && missing.length < 1024; i++) if (!present.has(i)) missing.push(i);
    if (missing.length > 0) return { stored: false, count, have: present.size, missing };
    this.uploads.delete(id);
    return this.assemble(model, id, count, dir);
  }

  private async assemble(model: string, id: string, count: number, dir: string): Promise<UploadProgress> {
    const parts: Uint8Array[] = [];
    for (let i = 0; i < count; i++) parts.push(new Uint8Array(await fs.readFile(path.join(dir, String(i)))));
    const chunkSize = parts[0].byteLength;
    for (let i = 0; i < count - 1; i++) {
      if (parts[i].byteLength !== chunkSize) {
        await fs.rm(dir, { recursive: true, force: true });
        throw new StoreError('inconsistent-upload', `upload ${id}: chunk ${i} has ${parts[i].byteLength} bytes, chunk 0 has ${chunkSize}`);
      }
    }
    const payload = Buffer.concat(parts);
    if (updateIdOf(payload) !== id) {
      await fs.rm(dir, { recursive: true, force: true });
      throw new StoreError('hash-mismatch', `upload ${id}: the assembled payload hashes to ${updateIdOf(payload)}; restart the upload`);
    }
    const meta = await this.putPayload(model, payload, chunkSize);
    await fs.rm(dir, { recursive: true, force: true });
    return { stored: true, count: meta.chunks, have: meta.chunks, missing: [] };
  }

  private releaseFile(group: string, model: string): string {
    if (!isTopicSegment(group) || !isTopicSegment(model)) throw new TypeError('bad group or model');
    return path.join(this.dir, 'releases', group, `${model}.cbor`);
  }

  async putRelease(group: string, model: string, bytes: Uint8Array): Promise<void> {
    const f = this.releaseFile(group, model);
    await fs.mkdir(path.dirname(f), { recursive: true });
    await writeFileAtomic(f, bytes);
  }

  async getRelease(group: string, model: string): Promise<Uint8Array | undefined> {
    const f = this.releaseFile(group, model);
    return (await exists(f)) ? new Uint8Array(await fs.readFile(f)) : undefined;
  }

  async deleteRelease(group: string, model: string): Promise<void> {
    await fs.rm(this.releaseFile(group, model), { force: true });
  }

  async releases(): Promise<Array<{ group: string; model: string; bytes: Uint8Array }>> {
    const out: Array<{ group: string; model: string; bytes: Uint8Array }> = [];
    const root = path.join(this.dir, 'releases');
    // Only what releaseFile() could have written: a stray file or a name outside the identifier rule is skipped, not fatal.
    for (const group of await fs.readdir(root, { withFileTypes: true })) {
      if (!group.isDirectory() || !isTopicSegment(group.name)) continue;
      for (const f of await fs.readdir(path.join(root, group.name))) {
        const model = f.slice(0, -5);
        if (!f.endsWith('.cbor') || !isTopicSegment(model)) continue;
        out.push({ group: group.name, model, bytes: new Uint8Array(await fs.readFile(path.join(root, group.name, f))) });
      }
    }
    return out;
  }

  /**
   * Remove every update that no stored release names any more, and uploads
   * untouched for `staleUploadMs`. A device mid-transfer of an update that a
   * release still names is not affected.
   */
  async gc(opts: { dryRun?: boolean; staleUploadMs?: number; now?: number } = {}): Promise<{ removed: string[]; kept: string[]; staleUploads: string[] }> {
    const named = new Set<string>();
    for (const r of await this.releases()) {
      for (const id of releaseUpdateIds(r.bytes)) named.add(id);
    }
    const removed: string[] = [];
    const kept: string[] = [];
    for (const id of await fs.readdir(path.join(this.dir, 'updates'))) {
      if (!isUpdateId(id)) continue;
      if (named.has(id)) {
        kept.push(id);
        continue;
      }
      removed.push(id);
      if (!opts.dryRun) {
        const h = this.handles.get(id);
        this.handles.delete(id);
        await h?.then((o) => o.close()).catch(ignoreBecause('the update is being removed; a handle that did not open or close holds nothing'));
        this.metas.delete(id);
        this.lists.delete(id);
        await fs.rm(path.join(this.dir, 'updates', id), { recursive: true, force: true });
      }
    }
    const staleUploads = await this.expireUploads({ maxAgeMs: opts.staleUploadMs, now: opts.now, dryRun: opts.dryRun });
    return { removed, kept, staleUploads };
  }

  /**
   * Removes uploads that received no chunk for `maxAgeMs` (default UPLOAD_TTL_MS): an upload that
   * never finishes must not hold disk space for long. The update server sweeps them on a timer.
   */
  async expireUploads(opts: { maxAgeMs?: number; now?: number; dryRun?: boolean } = {}): Promise<string[]> {
    const stale: string[] = [];
    const now = opts.now ?? Date.now();
    for (const id of await fs.readdir(path.join(this.dir, 'uploads'))) {
      if (this.locks.has(id)) continue; // a chunk is being written right now
      const st = await fs.stat(path.join(this.dir, 'uploads', id)).catch(ignoreBecause('removed meanwhile (completed or swept): nothing to expire'));
      if (!st || now - st.mtimeMs < (opts.maxAgeMs ?? UPLOAD_TTL_MS)) continue;
      stale.push(id);
      if (!opts.dryRun) {
        this.uploads.delete(id);
        await fs.rm(path.join(this.dir, 'uploads', id), { recursive: true, force: true });
      }
    }
    return stale;
  }

  async close(): Promise<void> {
    const open = [...this.handles.values()];
    this.handles.clear();
    for (const h of open) await h.then((o) => o.close()).catch(ignoreBecause('closing the store: a handle that did not open or close holds nothing'));
  }
}

/** The update ids a stored release names (none when it does not parse). */
function releaseUpdateIds(bytes: Uint8Array): string[] {
  try {
    return decodeRelease(bytes).steps.map((s) => s.updateId);
  } catch {
    return [];
  }
}
