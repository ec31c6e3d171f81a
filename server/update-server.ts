import { resolveUpdateServerConfig } from './defaults.ts';
import { decodeFrame, decodeRequest, encodeFrame, encodeReceipt } from '../protocol/frames.ts';
import { FrameCache } from './frame-cache.ts';
import { decodeRelease } from '../protocol/release.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import { ContentStore, StoreError } from './content-store.ts';

export interface UpdateServerOptions {
  transport: Transport;
  store: ContentStore;
  topics: Topics;
  log: Logger;
  /** Most chunks served for one request (a request may name up to MAX_WANT). */
  maxChunksPerRequest?: number;
  /** How long to collect the broker's retained releases after a (re)connect before re-asserting ours. */
  settleMs?: number;
  /** Uploads that received no chunk for this long are removed (default UPLOAD_TTL_MS, 2 h). */
  uploadTtlMs?: number;
  /** How often to look for them (default a quarter of the TTL, at most 10 min). */
  uploadSweepMs?: number;
  /**
   * In a cluster whose nodes share one content store: whether this server is
   * the one (the lease holder) that stores uploads and releases and
   * re-asserts releases. Every server answers chunk requests. Default: always.
   */
  primary?: () => boolean;
}

export interface UpdateServerStats {
  requests: number;
  badRequests: number;
  chunksSent: number;
  /** Of chunksSent, tails (a request's `tail` entry, protocol.md §4.2): the chunk from a byte offset on. */
  tailsSent: number;
  listsSent: number;
  unknownUpdates: number;
  uploadChunks: number;
  uploadsStored: number;
  releasesStored: number;
  releasesReasserted: number;
}

/**
 * The update server: serves chunk lists and chunks to each device on its own
 * topic, stores uploads, mirrors releases and re-asserts them (retained) on
 * every (re)connect so a broker that lost its retained store gets them back.
 */
export class UpdateServer {
  readonly stats: UpdateServerStats = {
    requests: 0,
    badRequests: 0,
    chunksSent: 0,
    tailsSent: 0,
    listsSent: 0,
    unknownUpdates: 0,
    uploadChunks: 0,
    uploadsStored: 0,
    releasesStored: 0,
    releasesReasserted: 0,
  };
  private readonly t: Transport;
  private readonly store: ContentStore;
  private readonly topics: Topics;
  private readonly log: Logger;
  private readonly maxChunks: number;
  /** Encoded frames shared by every device asking for the same chunk. */
  private readonly frames = new FrameCache();
  private readonly settleMs: number;
  /** Release sequence numbers the broker holds, as seen since the last connect. */
  private brokerSeqs = new Map<string, number>();
  private settleTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly uploadTtlMs: number;
  private readonly uploadSweepMs: number;
  private pending = new Set<Promise<unknown>>();
  private readonly primary: () => boolean;

  constructor(o: UpdateServerOptions) {
    this.primary = o.primary ?? (() => true);
    this.t = o.transport;
    this.store = o.store;
    this.topics = o.topics;
    this.log = o.log;
    // The one resolved config (the options over server/defaults.ts's table).
    const c = resolveUpdateServerConfig(o);
    this.maxChunks = c.maxChunksPerRequest;
    this.settleMs = c.settleMs;
    this.uploadTtlMs = c.uploadTtlMs;
    this.uploadSweepMs = c.uploadSweepMs;
  }

  async start(): Promise<void> {
    await this.store.init();
    this.t.onMessage((topic, payload, retained) => this.track(this.onMessage(topic, payload, retained)));
    this.t.onConnect(() => this.afterConnect());
    // A broker not reachable yet (or gone as we subscribe) is waited for, as a device does: the
    // transport subscribes again on reconnect. A refusal (an ACL) still fails the start.
    await this.t.subscribe([this.topics.allRequests(), this.topics.allUploads(), this.topics.allReleases()], 1).catch((e: unknown) => {
      if (/refused/.test(String(e))) throw e;
      this.log.warn('subscribe failed; will retry on reconnect', { error: String(e) });
    });
    if (this.t.connected) this.afterConnect();
    this.sweepTimer = setInterval(() => this.track(this.sweepUploads()), this.uploadSweepMs);
    this.sweepTimer.unref();
    this.track(this.sweepUploads());
  }

  /** This server has just become the primary (took the cluster lease): re-assert what the broker lacks. */
  becamePrimary(): void {
    if (this.settleTimer) clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => this.track(this.reassertReleases()), this.settleMs);
  }

  private async sweepUploads(): Promise<void> {
    if (!this.primary()) return;
    const gone = await this.store.expireUploads({ maxAgeMs: this.uploadTtlMs });
    if (gone.length) this.log.warn('abandoned uploads removed', { uploads: gone, ttlMs: this.uploadTtlMs });
  }

  /** Resolves when every message handled so far has been answered. */
  async idle(): Promise<void> {
    while (this.pending.size) await Promise.allSettled([...this.pending]);
  }

  async stop(): Promise<void> {
    if (this.settleTimer) clearTimeout(this.settleTimer);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.idle();
    await this.store.close();
  }

  private track(p: Promise<unknown>): void {
    this.pending.add(p);
    void p.catch((e: unknown) => this.log.error('handler failed', { error: String(e) })).finally(() => this.pending.delete(p));
  }

  private afterConnect(): void {
    this.brokerSeqs = new Map();
    if (this.settleTimer) clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => this.track(this.reassertReleases()), this.settleMs);
  }

  private async reassertReleases(): Promise<void> {
    if (!this.primary()) return;
    for (const r of await this.store.releases()) {
      const seq = releaseSeq(r.bytes);
      const onBroker = this.brokerSeqs.get(`${r.group}/${r.model}`);
      if (seq === undefined || (onBroker !== undefined && onBroker >= seq)) continue;
      await this.t.publish(this.topics.release(r.group, r.model), r.bytes, { qos: 1, retain: true });
      this.stats.releasesReasserted++;
      this.log.info('re-asserted release', { group: r.group, model: r.model, seq });
    }
  }

  private async onMessage(topic: string, payload: Uint8Array, retained: boolean): Promise<void> {
    const p = this.topics.parse(topic);
    if (!p) return;
    if (p.kind === 'request') return this.onRequest(p.model, p.updateId, p.deviceId, payload);
    if (p.kind === 'upload') return this.primary() ? this.onUpload(p.model, p.updateId, payload) : undefined;
    if (p.kind === 'release') return this.onRelease(p.group, p.model, payload, retained);
  }

  private async onRequest(model: string, updateId: string, deviceId: string, payload: Uint8Array): Promise<void> {
    this.stats.requests++;
    const to = this.topics.frames(model, updateId, deviceId);
    let req;
    try {
      req = decodeRequest(payload);
    } catch (e) {
      this.stats.badRequests++;
      this.log.warn('bad request', { deviceId, updateId, error: (e as Error).message });
      await this.t.publish(to, encodeFrame({ kind: 'error', updateId, error: 'bad-request' }), { qos: 1 });
      return;
    }
    const meta = await this.store.meta(updateId);
    if (!meta || meta.model !== model) {
      this.stats.unknownUpdates++;
      await this.t.publish(to, encodeFrame({ kind: 'error', updateId, error: 'unknown-update' }), { qos: 1 });
      return;
    }
    const sends: Promise<void>[] = [];
    if (req.list) {
      const frame = await this.frames.get(`${updateId}:list`, async () => {
        const list = await this.store.list(updateId);
        return list && encodeFrame({ kind: 'list', updateId, count: meta.chunks, list });
      });
      if (frame) {
        sends.push(this.t.publish(to, frame, { qos: 1 }));
        this.stats.listsSent++;
      }
    }
    const tails = new Map(req.tail);
    for (const index of new Set(req.want.slice(0, this.maxChunks))) {
      const offset = tails.get(index);
      const frame = offset === undefined ? undefined : await this.tailFrame(updateId, index, meta.chunks, offset);
      const whole =
        frame ??
        (await this.frames.get(`${updateId}:${index}`, async () => {
          const data = await this.store.readChunk(updateId, index);
          return data && encodeFrame({ kind: 'chunk', updateId, index, count: meta.chunks, data });
        }));
      if (!whole) continue;
      sends.push(this.t.publish(to, whole, { qos: 1 }));
      this.stats.chunksSent++;
      if (frame) this.stats.tailsSent++;
    }
    await Promise.all(sends);
  }

  /**
   * Chunk `index` from byte `offset` on (protocol.md §4.1), or undefined when the offset is not inside
   * the chunk (at or past its end): the chunk is then sent whole. Not cached: a tail's offset is where
   * one device's connection broke.
   */
  private async tailFrame(updateId: string, index: number, count: number, offset: number): Promise<Uint8Array | undefined> {
    const data = await this.store.readChunk(updateId, index);
    if (!data || offset >= data.byteLength) return undefined;
    return encodeFrame({ kind: 'chunk', updateId, index, count, offset, data: data.subarray(offset) });
  }

  private async onUpload(model: string, updateId: string, payload: Uint8Array): Promise<void> {
    const receiptTopic = this.topics.uploadReceipt(model, updateId);
    let f;
    try {
      f = decodeFrame(payload);
    } catch (e) {
      this.log.warn('bad upload frame', { updateId, error: (e as Error).message });
      return;
    }
    if (f.kind !== 'chunk' || f.updateId !== updateId) return;
    this.stats.uploadChunks++;
    try {
      const progress = await this.store.receiveUpload(model, updateId, f.index, f.count, f.data);
      if (progress.stored) this.stats.uploadsStored++;
      // Confirm when stored; report what is missing when the last chunk arrived without the rest.
      if (progress.stored || f.index === f.count - 1) {
        await this.t.publish(receiptTopic, encodeReceipt({ updateId, ...progress }), { qos: 1 });
        if (progress.stored) this.log.info('update stored', { model, updateId });
      }
    } catch (e) {
      if (!(e instanceof StoreError)) throw e;
      this.log.warn('upload refused', { updateId, error: e.message });
      await this.t.publish(receiptTopic, encodeReceipt({ updateId, stored: false, count: f.count, have: 0, missing: [], error: e.message }), { qos: 1 });
    }
  }

  /**
   * Keeps the broker's latest release per group and model, for re-assertion
   * after a broker restart. A live release replaces the stored one whatever
   * its seq (the server holds no trust file, and an unsigned seq edited up
   * must not pin the store to it); a retained one (replayed at connect, maybe
   * by a broker restored from an older snapshot) only when its seq is higher.
   */
  private async onRelease(group: string, model: string, payload: Uint8Array, retained: boolean): Promise<void> {
    const key = `${group}/${model}`;
    if (payload.byteLength === 0) {
      // An empty retained payload withdraws the release.
      this.brokerSeqs.delete(key);
      if (!this.primary()) return;
      await this.store.deleteRelease(group, model);
      this.log.info('release withdrawn', { group, model });
      return;
    }
    const seq = releaseSeq(payload);
    if (seq === undefined) {
      this.log.warn('ignoring malformed release', { group, model });
      return;
    }
    this.brokerSeqs.set(key, Math.max(seq, this.brokerSeqs.get(key) ?? -1));
    if (!this.primary()) return;
    const stored = await this.store.getRelease(group, model);
    const storedSeq = stored ? releaseSeq(stored) : undefined;
    if (!retained || storedSeq === undefined || seq > storedSeq) {
      await this.store.putRelease(group, model, payload);
      this.stats.releasesStored++;
    }
  }
}

/** The sequence number of a release, without checking signatures (devices do that). */
function releaseSeq(bytes: Uint8Array): number | undefined {
  try {
    return decodeRelease(bytes).seq;
  } catch {
    return undefined;
  }
}
