import { IoError } from '../platform/errors.ts';
import path from 'node:path';
import { sha256Hex } from '../protocol/chunks.ts';
import { decodeFrame } from '../protocol/frames.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import type { Topics } from '../protocol/topics.ts';
import type { ContentStore } from '../server/content-store.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import type { Clock } from '../platform/clock.ts';
import { Download } from '../device/download.ts';
import { DeviceStorage } from '../device/storage.ts';
import type { NeededUpdate } from './release-needs.ts';

export interface UpstreamFetcherOptions {
  upstream: Transport;
  topics: Topics;
  /** The gateway's id on upstream request/frame topics (like a device id). */
  fetcherId: string;
  /** Partial downloads (payload, bitmap, chunk list) live here. */
  dir: string;
  /** Complete payloads go here: the site's update server serves them. */
  store: ContentStore;
  clock: Clock;
  log: Logger;
  maxWindow: number;
  idleMs: number;
  stallMs: number;
  maxBadCopies: number;
  /** A payload is held locally now. */
  onStored: (updateId: string) => void;
  /** A chunk arrived (for budget accounting and status). */
  onProgress: () => void;
}

export interface FetchState {
  updateId: string;
  model: string;
  bytes: number;
  totalBytes: number;
  lastError: string | null;
}

interface Job {
  model: string;
  need: NeededUpdate;
  /** Payload bytes held on disk (updated as chunks arrive). */
  bytes: number;
  lastError: string | null;
  failures: number;
  notBefore: number;
}

/**
 * Fetches each needed update once from upstream, one at a time, with the
 * device's resumable windowed transfer (device/download.ts): its own bitmap
 * and chunk list on disk, every chunk checked against the signed chunk list.
 * `pause()` stops asking (what arrived stays on disk); `resume()` starts again
 * from the bitmap. A complete payload goes into the site's content store.
 */
export class UpstreamFetcher {
  private readonly jobs = new Map<string, Job>();
  private current: { id: string; d: Download } | undefined;
  private readonly storage: DeviceStorage;
  private allowed = false;
  private retryTimer: unknown;
  private closed = false;
  private drainTimer: unknown;
  /** The link went while the current Download was kept (linkLost()): its frames are subscribed again before it asks. */
  private lost = false;
  /** What the Download publishes through: requests are swallowed while paused (see pause()). */
  private readonly gated: Transport;
  /** Payload bytes received from upstream (new, verified chunks), since start. */
  payloadBytes = 0;

  constructor(private readonly o: UpstreamFetcherOptions) {
    this.storage = new DeviceStorage(o.dir);
    const up = o.upstream;
    // Everything the upstream transport offers (the silence watch's probe, nudge, reconnect, the kept
    // part of a cut frame …), bound to it, so a Transport method added later reaches the fetch too;
    // only two differ: requests are swallowed while paused, and so is the silence watch's probe (a
    // Download kept through a lost link would spend its reconnects on a connection that is not there).
    const publish: Transport['publish'] = (topic, payload, opts) => (this.allowed ? up.publish(topic, payload, opts) : Promise.resolve());
    const probe = up.probe ? (ms: number) => (this.allowed ? up.probe!(ms) : Promise.resolve(false)) : undefined;
    this.gated = new Proxy(up, {
      get: (target, key) => {
        if (key === 'publish') return publish;
        if (key === 'probe') return probe;
        const v: unknown = Reflect.get(target, key, target);
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    // Its frames, of every model, subscribed once the connection is up (the client restores it after a
    // reconnect): a release's fetch then asks at once, without first waiting a round trip for a SUBACK
    // (0.3–0.7 s on a 300 ms link). At QoS 0, as a device takes them (protocol.md §1): at QoS 1 every
    // chunk cost a PUBACK on the uplink, and a clean session drops what was in flight at a disconnect
    // either way.
    const subscribeFrames = (): void =>
      void o.upstream.subscribe(o.topics.framesForAnyModel(o.fetcherId), 0).catch((e: unknown) => {
        o.log.debug('frame subscription deferred to the next connect', { error: String(e) });
      });
    o.upstream.onConnect(subscribeFrames);
    if (o.upstream.connected) subscribeFrames();
    o.upstream.onMessage((topic, payload) => {
      const p = o.topics.parse(topic);
      if (p?.kind !== 'frames' || p.deviceId !== o.fetcherId || !this.current || p.updateId !== this.current.id) return;
      try {
        this.current.d.onFrame(decodeFrame(payload));
      } catch (e) {
        o.log.warn('malformed frame from upstream', { error: (e as Error).message });
      }
    });
  }

  /** Fetch this update (no-op when it is held or already wanted). */
  async want(model: string, need: NeededUpdate): Promise<void> {
    if (this.jobs.has(need.updateId) || (await this.o.store.meta(need.updateId))) return;
    this.jobs.set(need.updateId, { model, need, bytes: 0, lastError: null, failures: 0, notBefore: 0 });
    this.o.log.info('will fetch from upstream', { updateId: need.updateId, size: need.size });
    this.kick();
  }

  /**
   * Stop wanting updates no pending release names any more (a newer release replaced the one
   * that needed them): the budget is not spent on them. What arrived stays on disk.
   */
  async keepOnly(needed: Set<string>): Promise<void> {
    for (const id of [...this.jobs.keys()]) {
      if (needed.has(id)) continue;
      this.jobs.delete(id);
      this.o.log.info('no release needs this update any more; not fetching it', { updateId: id });
      if (this.current?.id === id) {
        await this.stopCurrent();
        this.kick();
      }
    }
  }

  /** Updates wanted and not yet held, with what is on disk. */
  state(): FetchState[] {
    return [...this.jobs.entries()].map(([id, j]) => ({
      updateId: id,
      model: j.model,
      bytes: this.current?.id === id ? this.current.d.receivedBytes : j.bytes,
      totalBytes: j.need.size,
      lastError: j.lastError,
    }));
  }

  get busy(): boolean {
    return this.jobs.size > 0;
  }

  get active(): boolean {
    return this.current !== undefined;
  }

  /**
   * Stop asking upstream (window closed, budget used, link down): what arrived
   * stays on disk. With `drainMs`, chunks already asked for (and paid for) are
   * still taken for that long; only new requests stop at once.
   */
  async pause(drainMs = 0): Promise<void> {
    this.allowed = false;
    if (this.drainTimer) this.o.clock.clearTimeout(this.drainTimer);
    this.drainTimer = undefined;
    if (drainMs <= 0 || !this.current) {
      await this.stopCurrent();
      return;
    }
    this.drainTimer = this.o.clock.setTimeout(() => {
      this.drainTimer = undefined;
      if (!this.allowed) void this.stopCurrent();
    }, drainMs);
  }

  /**
   * The upstream link went (or the silence watch reconnects it): stop asking, but keep the current
   * Download, with what it measured of the link (round trip, rate, window), for up to `holdMs`; if
   * the link is back by then, `resume()` goes on with it as a device does after a reconnect (frames
   * subscribed again, then `resend()`). A new Download started again at a window of 4.
   */
  async linkLost(holdMs: number): Promise<void> {
    if (this.current) this.lost = true;
    await this.pause(holdMs);
  }

  resume(): void {
    if (this.allowed) return;
    this.allowed = true;
    if (this.drainTimer) this.o.clock.clearTimeout(this.drainTimer);
    this.drainTimer = undefined;
    const c = this.current;
    if (!c) {
      this.kick();
      return;
    }
    if (!this.lost) {
      // Still draining: ask again for everything outstanding (requests made while paused were swallowed).
      c.d.resend();
      return;
    }
    this.lost = false;
    this.o.log.info('the link is back: the fetch goes on with what it measured of it', { updateId: c.id });
    // Only once the frames' subscription is in place on this connection (`resend`: the client would
    // count it as held and answer at once): a request that reached the server first had its answer
    // dropped by the broker, and the fetch waited for an idle timeout.
    const resend = (): void => {
      if (this.current === c && this.allowed) c.d.resend();
    };
    void this.o.upstream.subscribe(this.o.topics.framesForAnyModel(this.o.fetcherId), 0, { resend: true }).then(resend, resend);
  }

  private async stopCurrent(): Promise<void> {
    const c = this.current;
    this.current = undefined;
    this.lost = false;
    if (!c) return;
    const j = this.jobs.get(c.id);
    if (j) j.bytes = c.d.receivedBytes;
    await c.d.close();
  }

  private kick(): void {
    if (this.closed || !this.allowed || this.current) return;
    const now = this.o.clock.now();
    const next = [...this.jobs.entries()].find(([, j]) => j.notBefore <= now);
    if (!next) {
      const soonest = Math.min(...[...this.jobs.values()].map((j) => j.notBefore));
      if (Number.isFinite(soonest) && !this.retryTimer) {
        this.retryTimer = this.o.clock.setTimeout(
          () => {
            this.retryTimer = undefined;
            this.kick();
          },
          Math.max(50, soonest - now),
        );
      }
      return;
    }
    void this.startJob(next[0], next[1]).catch((e: unknown) => this.failed(next[0], e));
  }

  private async startJob(id: string, j: Job): Promise<void> {
    const step: ReleaseStep = {
      updateId: id,
      from: null,
      to: '0'.repeat(64),
      size: j.need.size,
      sha256: j.need.sha256,
      chunkSize: j.need.chunkSize,
      chunks: j.need.chunks,
      listSha256: j.need.listSha256,
    };
    const files = await this.storage.openDownload(step);
    let seen = 0;
    if (this.current || !this.allowed || this.closed) {
      await files.close();
      return;
    }
    const d: Download = new Download({
      step,
      files,
      transport: this.gated,
      topics: this.o.topics,
      model: j.model,
      deviceId: this.o.fetcherId,
      clock: this.o.clock,
      log: this.o.log,
      maxWindow: this.o.maxWindow,
      idleMs: this.o.idleMs,
      stallMs: this.o.stallMs,
      maxBadCopies: this.o.maxBadCopies,
      wireBytesIn: this.o.upstream.stats ? () => this.o.upstream.stats!().bytesIn : undefined,
      // The site's one fetch, alone on the upstream link: a silent reconnect may cost a chunk and the
      // retained messages (the device's share of the payload allowed none at 256 KiB), and a silence
      // before the first chunk is not ten devices queueing behind each other (issue 20, sixth pass).
      aloneOnLink: true,
      unmeasuredSilenceFactor: 1,
      onProgress: () => {
        // Per Download: what it held when it started is not counted again.
        const now = d.receivedBytes;
        if (now > seen) this.payloadBytes += now - seen;
        seen = now;
        j.bytes = now;
        this.o.onProgress();
      },
      onComplete: () => void this.completed(id, j, d).catch((e: unknown) => this.failed(id, e)),
      onFail: (e) => this.failed(id, e),
    });
    this.current = { id, d };
    seen = j.bytes = d.receivedBytes;
    this.o.log.info('fetching from upstream', { updateId: id, held: j.bytes, size: j.need.size });
    await d.start();
  }

  private async completed(id: string, j: Job, d: Download): Promise<void> {
    if (this.current?.d !== d) return;
    const payload = await d.readPayload();
    this.current = undefined;
    await d.close();
    if (sha256Hex(payload) !== j.need.sha256) {
      // Every chunk matched the signed list, so this cannot happen unless the disk lies: start over.
      await this.storage.removeDownload(id);
      throw new IoError('payload-hash-mismatch', `payload ${id} does not hash to the release's sha256 after assembly; fetching it again`);
    }
    const meta = await this.o.store.putPayload(j.model, payload, j.need.chunkSize);
    if (meta.listSha256 !== j.need.listSha256) this.o.log.warn('stored chunk list differs from the release (chunk size?)', { updateId: id });
    await this.storage.removeDownload(id);
    this.jobs.delete(id);
    this.o.log.info('update held locally', { updateId: id, size: j.need.size });
    this.o.onStored(id);
    this.kick();
  }

  private failed(id: string, e: unknown): void {
    const j = this.jobs.get(id);
    const msg = e instanceof Error ? e.message : String(e);
    this.o.log.warn('upstream fetch failed; will retry', { updateId: id, error: msg });
    if (j) {
      j.lastError = msg;
      j.failures++;
      j.notBefore = this.o.clock.now() + Math.min(60_000, 1000 * 2 ** Math.min(j.failures, 6));
    }
    void this.stopCurrent().then(() => this.kick());
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) this.o.clock.clearTimeout(this.retryTimer);
    if (this.drainTimer) this.o.clock.clearTimeout(this.drainTimer);
    await this.stopCurrent();
  }

  /** Where partial downloads live (for status and tests). */
  downloadDir(updateId: string): string {
    return path.join(this.o.dir, 'downloads', updateId);
  }
}
