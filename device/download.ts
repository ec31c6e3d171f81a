import { isSystemError } from '../platform/errors.ts';
import { chunkMatches, chunkRange, sha256Hex } from '../protocol/chunks.ts';
import { encodeRequest, type ChunkFrame, type Frame } from '../protocol/frames.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import type { Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import type { Clock } from '../platform/clock.ts';
import { LinkEstimator } from './link-estimator.ts';
import type { SilenceWatch } from './silence-watch.ts';
import { ChunkResume, RESUME_MIN_BYTES } from './chunk-resume.ts';
import { chunkPacketBytes, downloadSilenceWatch } from './download-watch.ts';
import { ChunkRequests } from './chunk-requests.ts';
import { DownloadTimers } from './download-timers.ts';
import { DeviceError, storageError } from './reasons.ts';
import type { DownloadFiles } from './storage.ts';

export interface DownloadOptions {
  step: ReleaseStep;
  files: DownloadFiles;
  transport: Transport;
  topics: Topics;
  model: string;
  deviceId: string;
  clock: Clock;
  log: Logger;
  /** Most chunks requested and not yet received (the window adapts below this). */
  maxWindow: number;
  /** When nothing arrives for this long (at least; it grows with the round trip), ask again for what is outstanding. */
  idleMs: number;
  /** No new chunk for this long: the download fails with `download-stalled` (what was received stays). */
  stallMs: number;
  /** This many copies of one chunk that do not match the list: the source is corrupt. */
  maxBadCopies: number;
  /** Bytes the connection has received so far: while they grow, a big frame is still on its way. */
  wireBytesIn?: () => number;
  /** The least silence of the socket, while chunks are asked for, before a fresh connection is tried (silence-watch.ts); default 2000 ms. */
  probeSilenceMs?: number;
  /**
   * The only transfer on its link (a gateway's one upstream fetch): a silent reconnect may cost up to
   * one chunk's packet (the most a cut mid-frame throws away; with a transport that keeps a cut frame
   * for `resend` to resume, its head and RESUME_MIN_BYTES) plus the retained messages this
   * connection brought (measured by the transport), whatever the payload's size. Without it the
   * reconnects' bytes are bounded by `DEVICE_DEFAULTS.silentReconnectBudget` of the payload, which
   * on a payload of a few hundred KiB allows none: ten devices sharing a link, where a silence is as
   * likely congestion, keep that.
   */
  aloneOnLink?: boolean;
  /** Before the first chunk, the least silence is this many times `probeSilenceMs` (silence-watch.ts; default 4). */
  unmeasuredSilenceFactor?: number;
  onProgress: () => void;
  onComplete: () => void;
  /** A DeviceError (a failed write is `storage-error`), or, from a bug, whatever was thrown. */
  onFail: (e: unknown) => void;
}

/** Re-exported: tests and callers take it from here, with the Download. */
export { chunkPacketBytes };

/**
 * Fetches one update's chunk list, then its missing chunks by windowed
 * requests (what to ask: chunk-requests.ts); checks each chunk against the list
 * on arrival and writes it and its bitmap bit to disk. Re-asks for what is
 * outstanding when the link goes quiet (download-timers.ts) or reconnects
 * (never a per-chunk timer). Duplicates are harmless.
 */
export class Download {
  badChunks = 0;
  duplicateChunks = 0;
  requestsSent = 0;
  /** Chunks completed from a prefix a reconnect cut and its tail (checked against the list), and joins that did not match. */
  resumedChunks = 0;
  resumeMismatches = 0;
  /** Probe markers (one-byte tails, ChunkRequests.markers) that came back while their probe was out. */
  markersAnswered = 0;
  /** What is asked for, on its way or being written, and what to ask for next. */
  private readonly requests: ChunkRequests;
  private readonly timers: DownloadTimers;
  private lastProgressAt: number;
  private readonly badCopies = new Map<number, number>();
  readonly link: LinkEstimator;
  private writes: Promise<void> = Promise.resolve();
  private finished = false;
  /**
   * Chunks that arrived before the chunk list was checked and saved (the first request asks
   * for the list and the first window together, saving a round trip): checked once it is.
   */
  private early: ChunkFrame[] = [];
  /** Reconnects at once when the socket is silent while the link is up (a peer backing off after a cut). */
  private watch: SilenceWatch | undefined;
  /** A chunk's first bytes a reconnect cut, asked for from there (protocol.md §4.2 `tail`). */
  private readonly resume: ChunkResume;

  constructor(private readonly o: DownloadOptions) {
    this.link = new LinkEstimator({ minWindow: Math.min(2, o.maxWindow), maxWindow: o.maxWindow, initialWindow: Math.min(4, o.maxWindow), minIdleMs: o.idleMs });
    this.lastProgressAt = o.clock.now();
    this.requests = new ChunkRequests(o.files, (i) => {
      const [b, e] = chunkRange(o.step.size, o.step.chunkSize, i);
      return e - b;
    });
    this.timers = new DownloadTimers(o, {
      idleMs: () => this.link.idleTimeoutMs,
      idle: (idleMs) => this.idle(idleMs),
      stalled: () => this.fail(new DeviceError('download-stalled', `no chunk for ${Math.round(this.silenceMs() / 1000)} s; ${this.receivedChunks} of ${this.o.step.chunks} chunks kept`)),
    });
    const topic = o.topics.frames(o.model, o.step.updateId, o.deviceId);
    this.resume = new ChunkResume(o.step, topic);
    // What of a frame a close cuts is kept, to be asked for from there (`resend`): at most one chunk's packet.
    o.transport.keepPartial?.({ match: (t) => t === topic, maxBytes: chunkPacketBytes(o.step, topic), minBytes: RESUME_MIN_BYTES });
  }

  /** Milliseconds since the last verified chunk (or the start). */
  silenceMs(): number {
    return this.o.clock.now() - this.lastProgressAt;
  }

  get step(): ReleaseStep {
    return this.o.step;
  }

  get receivedChunks(): number {
    return this.o.files.bitmap.count;
  }

  get receivedBytes(): number {
    const { step, files } = this.o;
    if (files.bitmap.complete) return step.size;
    const lastHeld = files.bitmap.has(step.chunks - 1);
    const full = files.bitmap.count - (lastHeld ? 1 : 0);
    return full * step.chunkSize + (lastHeld ? step.size - (step.chunks - 1) * step.chunkSize : 0);
  }

  /** Re-check what a previous run left on disk, then start asking. */
  async start(): Promise<void> {
    const { files, step } = this.o;
    if (files.list && sha256Hex(files.list) !== step.listSha256) files.list = undefined;
    if (files.list) {
      let dropped = 0;
      for (let i = 0; i < step.chunks; i++) {
        if (!files.bitmap.has(i)) continue;
        const [b, e] = chunkRange(step.size, step.chunkSize, i);
        if (!chunkMatches(files.list, i, await files.readRange(b, e - b))) {
          files.bitmap.clear(i);
          dropped++;
        }
      }
      if (dropped) {
        await files.saveBitmap();
        this.o.log.warn('resumed download had chunks that no longer verify; fetching them again', { dropped });
      }
    } else {
      for (let i = 0; i < step.chunks; i++) files.bitmap.clear(i);
    }
    if (files.bitmap.complete && files.list) {
      this.finish();
      return;
    }
    this.timers.armStall();
    this.startWatch();
    this.takeCut();
    this.requestMore();
  }

  /**
   * After a close: the frame it cut, when it was one of ours and enough of it came, is kept and its
   * chunk's index returned (to be asked for from where it stopped); anything else is dropped.
   */
  private takeCut(): number | undefined {
    const p = this.o.transport.takePartial?.();
    if (!p) return undefined;
    const fate = this.resume.offer(p, (i) => this.requests.received(i));
    this.o.log.debug('a frame cut by the reconnect', { ...fate, received: p.bytes.byteLength });
    return 'kept' in fate ? fate.kept : undefined;
  }

  /** Probes and reconnects need a transport that can, and the socket's byte counter (device/download-watch.ts). */
  private startWatch(): void {
    this.watch = downloadSilenceWatch(this.o, {
      link: this.link,
      waiting: () => this.requests.waiting(),
    });
  }

  /** Reconnects the silence watch made. */
  get silentReconnects(): number {
    return this.watch?.reconnects ?? 0;
  }

  /**
   * After a reconnect: what was in flight may be lost, or may still come (see ChunkRequests.held). New chunks
   * are asked for first; the old outstanding ones only if they have not come by the time the first
   * new one does. Without new chunks to ask for (the end of the payload), the last old one is asked first.
   */
  resend(): void {
    if (this.finished) return;
    this.watch?.connected();
    // The chunk whose frame the close cut is lost for sure: its tail is asked for first.
    const cut = this.takeCut();
    const r = this.requests;
    this.o.log.debug('resend after a reconnect', { outstanding: r.outstanding.size, held: r.held.size, probe: r.probe?.index, cut });
    const ask = r.afterReconnect(this.link.window, cut);
    if (ask) this.requestMore(ask);
    else this.askAgain();
  }

  /** Everything outstanding is asked again. */
  private askAgain(): void {
    this.requests.forget();
    this.early = [];
    this.requestMore();
  }

  stop(): void {
    this.finished = true;
    this.watch?.stop();
    this.timers.stop();
  }

  /** Stop, let pending writes land, and close the files (what was received stays on disk). */
  async close(): Promise<void> {
    this.stop();
    await this.writes;
    await this.o.files.close();
  }

  /** The whole payload, once complete. */
  async readPayload(): Promise<Uint8Array> {
    await this.writes;
    return this.o.files.readRange(0, this.o.step.size);
  }

  onFrame(f: Frame): void {
    if (this.finished || f.updateId !== this.o.step.updateId) return;
    this.timers.armIdle();
    if (f.kind === 'error') {
      this.fail(new DeviceError(f.error === 'unknown-update' ? 'unknown-update' : 'malformed-frame', `server answered ${f.error}`));
      return;
    }
    if (f.kind === 'list') {
      if (this.o.files.list) return;
      if (f.count !== this.o.step.chunks || sha256Hex(f.list) !== this.o.step.listSha256) {
        this.fail(new DeviceError('chunk-list-mismatch'));
        return;
      }
      this.enqueue(async () => {
        if (this.o.files.list) return;
        await this.o.files.saveList(f.list);
        const early = this.early;
        this.early = [];
        for (const c of early) this.onFrame(c);
        this.requestMore();
      });
      return;
    }
    this.onChunk(f);
  }

  private onChunk(frame: ChunkFrame): void {
    // A tail (or a whole copy of a chunk whose prefix is held): the whole chunk, checked below as any.
    const joined = frame.offset !== undefined;
    const data = this.resume.join(frame);
    if (!data) {
      if (this.requests.isMarker(frame)) this.onMarker(frame);
      else this.tailUnusable(frame);
      return;
    }
    const f: ChunkFrame = joined ? { kind: 'chunk', updateId: frame.updateId, index: frame.index, count: frame.count, data } : frame;
    if (!this.o.files.list && this.requests.listRequested && f.count === this.o.step.chunks && this.early.length < this.o.maxWindow) {
      this.early.push(f);
      return;
    }
    // When it answers the probe, the chunks asked for before it and lost are asked again (not it: it is checked below).
    this.requests.arrived(f.index, (lost) => this.askLost(lost));
    const { files, step } = this.o;
    if (!files.list || f.count !== step.chunks) {
      this.requestMore();
      return;
    }
    const [b, e] = chunkRange(step.size, step.chunkSize, f.index);
    if (f.data.byteLength !== e - b || !chunkMatches(files.list, f.index, f.data)) {
      if (joined) {
        // The held prefix or the tail is wrong: both are gone; the chunk is asked for whole.
        this.resumeMismatches++;
        this.o.log.warn('a chunk joined from a cut frame and its tail does not match the chunk list; asking for it whole', { index: f.index });
        this.requestMore([f.index]);
        return;
      }
      this.badChunks++;
      const copies = (this.badCopies.get(f.index) ?? 0) + 1;
      this.badCopies.set(f.index, copies);
      this.o.log.warn('dropped a chunk that does not match the chunk list', { index: f.index, updateId: step.updateId, copies });
      if (copies >= this.o.maxBadCopies) {
        this.fail(new DeviceError('corrupt-source', `chunk ${f.index} arrived ${copies} times and never matched the chunk list`));
        return;
      }
      // Ask for this chunk again at once, whatever the window says.
      this.requestMore([f.index]);
      return;
    }
    if (this.requests.received(f.index)) {
      this.duplicateChunks++;
      this.o.log.debug('chunk', { index: f.index, duplicate: true, bytesIn: this.o.wireBytesIn?.() });
      this.requestMore();
      return;
    }
    this.requests.writing.add(f.index);
    if (joined) this.resumedChunks++;
    this.o.log.debug('chunk', { index: f.index, bytesIn: this.o.wireBytesIn?.(), tail: joined || undefined });
    this.watch?.delivered();
    // The bytes that came now (a tail's, not the joined chunk's): the rate is the link's.
    this.link.arrived(this.o.clock.now(), f.index, frame.data.byteLength);
    this.lastProgressAt = this.o.clock.now();
    this.timers.armStall();
    this.enqueue(async () => {
      await files.writeChunk(f.index, b, f.data);
      this.requests.writing.delete(f.index);
      this.o.onProgress();
      if (files.bitmap.complete) this.finish();
      else this.requestMore();
    });
  }

  /**
   * A probe's marker came back: what was asked for before it (and its chunk) and is still missing was
   * lost, and is asked for again; a marker that answers no probe out is dropped. Before the chunk
   * list is saved it waits with the early chunks (the list frame came ahead of it).
   */
  private onMarker(f: ChunkFrame): void {
    if (!this.o.files.list && this.requests.listRequested && this.early.length < this.o.maxWindow) {
      this.early.push(f);
      return;
    }
    const lost = this.requests.markerAnswered(f.index);
    if (lost === undefined) {
      this.o.log.debug('a probe marker that answers no probe out', { index: f.index });
      return;
    }
    this.markersAnswered++;
    if (lost.length === 0) {
      this.o.log.debug('probe marker: nothing asked before it was lost', { index: f.index });
      this.requestMore();
      return;
    }
    this.askLost(lost, true);
  }

  /** The probe's answer (its chunk, or its marker) came and these, asked for before it, had not: lost, asked again. */
  private askLost(lost: number[], marker?: true): void {
    this.o.log.info('frames asked for before the probe were lost; asking again for them', { lost: lost.length, marker });
    this.requestMore(lost);
  }

  /**
   * A tail that joins no prefix held (asked for before a whole copy came, or its prefix replaced): a
   * duplicate when the chunk is held; else, when it was asked for, the chunk is asked for whole.
   */
  private tailUnusable(f: ChunkFrame): void {
    const asked = this.requests.settle(f.index);
    if (f.count !== this.o.step.chunks) return;
    if (this.requests.received(f.index)) {
      this.duplicateChunks++;
      this.requestMore();
      return;
    }
    if (!asked) return;
    this.o.log.debug('a tail that joins nothing held; asking for the chunk whole', { index: f.index, offset: f.offset });
    this.requestMore([f.index]);
  }

  /** Writes in order; a failed write is a storage error, anything else (a bug, a reason of our own) stays what it is. */
  private enqueue(work: () => Promise<void>): void {
    this.writes = this.writes.then(work).catch((e: unknown) => this.fail(isSystemError(e) ? storageError(e) : e));
  }

  private requestMore(urgent: number[] = []): void {
    if (this.finished) return;
    const window = this.link.window;
    const ask = this.requests.next(window, urgent);
    if (!ask) return;
    const { want, list } = ask;
    this.link.requested(this.o.clock.now(), want);
    this.requestsSent++;
    const tail = this.requests.tails(want, this.resume.tails(want));
    this.o.log.debug('request', { want, list, window, tail: tail.length ? tail : undefined });
    this.o.transport
      // QoS 0 (protocol.md §1): a request lost with a connection is asked again after the reconnect
      // (resend) or the idle timeout; at QoS 1 the MQTT client would also send the old one again on
      // reconnect, and the server would send those chunks twice.
      .publish(this.o.topics.request(this.o.model, this.o.step.updateId, this.o.deviceId), encodeRequest({ want, list, tail }), { qos: 0 })
      .catch((e: unknown) => this.o.log.debug('request not sent (will retry when idle)', { error: String(e) }));
    this.timers.armIdle();
  }

  /**
   * Nothing arrived for a while (download-timers.ts): the last chunk asked for is asked again alone (a
   * probe), or, with a probe already out, that chunk again (the rest stay held: on one connection
   * nothing is lost, only late, and asking everything again sent chunks twice that were still on
   * their way — two of a device's chunks in a ten-device run at 20 % loss, after a reconnect's probe
   * went unanswered for the idle timeout); everything is asked again only with no probe to ask.
   */
  private idle(idleMs: number): void {
    this.link.timedOut();
    const r = this.requests;
    const outstanding = r.outstanding.size;
    const pending = r.probeAgain();
    if (pending !== undefined) {
      this.o.log.info('nothing arrived for a while; asking again for the chunk that tells what was lost, the rest still held', { outstanding: outstanding + r.held.size, idleMs, probe: pending });
      this.requestMore([pending]);
      return;
    }
    const last = r.probeLast();
    if (last === undefined) {
      this.o.log.info('nothing arrived for a while; asking again for what is outstanding', { outstanding: outstanding + r.held.size, idleMs });
      this.askAgain();
      return;
    }
    this.o.log.info('nothing arrived for a while; asking again for the last chunk asked for, before the rest', { outstanding, idleMs });
    this.requestMore([last]);
  }

  private finish(): void {
    if (this.finished) return;
    this.stop();
    this.o.onComplete();
  }

  private fail(e: unknown): void {
    if (this.finished) return;
    this.stop();
    this.o.onFail(e);
  }
}
