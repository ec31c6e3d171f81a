import { promises as fs } from 'node:fs';
import type { Frame } from '../protocol/frames.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import { Download, type DownloadOptions } from './download.ts';
import type { AgentPorts } from './agent-config.ts';
import type { ResolvedAgentConfig } from './defaults.ts';
import { DeviceError } from './reasons.ts';
import type { DeviceStorage } from './storage.ts';

/** What every step's Download takes, plus the steps and where their files go. */
export interface FetcherOptions extends Omit<DownloadOptions, 'step' | 'files' | 'wireBytesIn' | 'onFail'> {
  steps: ReleaseStep[];
  storage: DeviceStorage;
  onFail: (e: unknown) => void;
}

/** Fetches the payloads of a release's steps one after the other, each a resumable Download. */
export class Fetcher {
  private index = 0;
  private current: Download | undefined;
  private doneBytes = 0;
  private closed = false;
  private badBefore = 0;
  private dupBefore = 0;
  private requestsBefore = 0;

  constructor(private readonly o: FetcherOptions) {}

  get totalBytes(): number {
    return this.o.steps.reduce((a, s) => a + s.size, 0);
  }
  get receivedBytes(): number {
    return this.doneBytes + (this.current?.receivedBytes ?? 0);
  }
  get progress(): number {
    return this.totalBytes ? this.receivedBytes / this.totalBytes : 1;
  }
  get updateId(): string | null {
    return (this.o.steps[Math.min(this.index, this.o.steps.length - 1)] ?? undefined)?.updateId ?? null;
  }
  get badChunks(): number {
    return this.badBefore + (this.current?.badChunks ?? 0);
  }
  get duplicateChunks(): number {
    return this.dupBefore + (this.current?.duplicateChunks ?? 0);
  }
  get requestsSent(): number {
    return this.requestsBefore + (this.current?.requestsSent ?? 0);
  }
  bytesPerSecond(now: number): number {
    return this.current?.link.bytesPerSecond(now) ?? 0;
  }
  silenceMs(): number {
    return this.current?.silenceMs() ?? 0;
  }

  async start(): Promise<void> {
    await this.next();
  }

  private async next(): Promise<void> {
    if (this.closed) return;
    if (this.index >= this.o.steps.length) {
      this.o.onComplete();
      return;
    }
    const step = this.o.steps[this.index];
    const files = await this.o.storage.openDownload(step);
    const d: Download = new Download({
      step,
      files,
      transport: this.o.transport,
      topics: this.o.topics,
      model: this.o.model,
      deviceId: this.o.deviceId,
      clock: this.o.clock,
      log: this.o.log,
      maxWindow: this.o.maxWindow,
      idleMs: this.o.idleMs,
      stallMs: this.o.stallMs,
      maxBadCopies: this.o.maxBadCopies,
      wireBytesIn: this.o.transport.stats ? () => this.o.transport.stats!().bytesIn : undefined,
      onProgress: this.o.onProgress,
      onComplete: () => {
        void (async () => {
          if (this.current !== d) return;
          await d.close();
          this.doneBytes += step.size;
          this.badBefore += d.badChunks;
          this.dupBefore += d.duplicateChunks;
          this.requestsBefore += d.requestsSent;
          this.current = undefined;
          this.index++;
          await this.next();
        })().catch((e: unknown) => this.o.onFail(e));
      },
      onFail: (e) => {
        if (this.current === d) this.o.onFail(e);
      },
    });
    this.current = d;
    await d.start();
  }

  onFrame(f: Frame): void {
    this.current?.onFrame(f);
  }

  resend(): void {
    this.current?.resend();
  }

  async close(): Promise<void> {
    this.closed = true;
    const d = this.current;
    this.current = undefined;
    if (d) {
      // Keep what it counted and received for the status.
      this.badBefore += d.badChunks;
      this.dupBefore += d.duplicateChunks;
      this.requestsBefore += d.requestsSent;
      this.doneBytes += d.receivedBytes;
    }
    await d?.close();
  }
}

/** The agent's settings a fetch uses (resolved: device/defaults.ts). */
export function fetcherFor(
  steps: ReleaseStep[],
  cfg: Pick<ResolvedAgentConfig, 'model' | 'deviceId' | 'window' | 'idleMs' | 'stallMs' | 'maxBadCopies'>,
  io: Pick<AgentPorts, 'storage' | 'transport' | 'topics' | 'clock' | 'log'>,
  on: Pick<FetcherOptions, 'onProgress' | 'onComplete' | 'onFail'>,
): Fetcher {
  return new Fetcher({
    steps,
    storage: io.storage,
    transport: io.transport,
    topics: io.topics,
    model: cfg.model,
    deviceId: cfg.deviceId,
    clock: io.clock,
    log: io.log,
    maxWindow: cfg.window,
    idleMs: cfg.idleMs,
    stallMs: cfg.stallMs,
    maxBadCopies: cfg.maxBadCopies,
    ...on,
  });
}

/** `no-space` unless the disk holds the payloads and a new model beside the running one. */
export async function checkSpace(storage: DeviceStorage, steps: ReleaseStep[], runningModel: string): Promise<void> {
  const modelSize = (await fs.stat(runningModel)).size;
  const need = steps.reduce((x, s) => x + s.size, 0) + modelSize;
  const free = await storage.freeBytes();
  if (free < need) throw new DeviceError('no-space', `${free} bytes free, ${need} needed`);
}
