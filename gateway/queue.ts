import { ignoreBecause } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs-atomic.ts';

/** One message waiting to go upstream. */
export interface QueuedMessage {
  topic: string;
  payload: Uint8Array;
  retain: boolean;
}

interface Entry extends QueuedMessage {
  /** Byte offset just past this entry's line in the log. */
  end: number;
}

/**
 * An ordered, durable queue on disk: an append-only log of JSON lines
 * (`queue.log`) and the byte offset of the first message not yet delivered
 * (`queue.cursor`, replaced atomically). A message is appended (and fsynced)
 * before it counts as queued; the cursor only moves past messages the
 * upstream broker acknowledged, in order. A crash re-delivers at most the
 * messages in flight (at least once, never out of order, none lost). The log
 * is emptied when everything in it has been delivered.
 */
export class DiskQueue {
  private readonly logFile: string;
  private readonly cursorFile: string;
  private entries: Entry[] = [];
  private size = 0;
  private cursor = 0;
  private tail: Promise<void> = Promise.resolve();
  private handle: fs.FileHandle | undefined;
  /** Messages appended since the queue was opened (for status and tests). */
  appended = 0;
  delivered = 0;

  constructor(dir: string) {
    this.logFile = path.join(dir, 'queue.log');
    this.cursorFile = path.join(dir, 'queue.cursor');
  }

  async open(): Promise<void> {
    await fs.mkdir(path.dirname(this.logFile), { recursive: true });
    const text = await fs.readFile(this.logFile).catch(() => Buffer.alloc(0));
    const cur = Number((await fs.readFile(this.cursorFile, 'utf8').catch(() => '0')).trim()) || 0;
    // A torn last line (power cut mid-append) is dropped: it was never acknowledged to anyone.
    let good = 0;
    let at = 0;
    while (at < text.byteLength) {
      const nl = text.indexOf(10, at);
      if (nl < 0) break;
      const line = text.subarray(at, nl).toString('utf8');
      at = nl + 1;
      try {
        const j = JSON.parse(line) as { t: string; p: string; r: boolean };
        if (at > cur) this.entries.push({ topic: j.t, payload: new Uint8Array(Buffer.from(j.p, 'base64')), retain: j.r === true, end: at });
        good = at;
      } catch {
        break;
      }
    }
    if (good < text.byteLength) await fs.truncate(this.logFile, good).catch(ignoreBecause('a torn tail left in place is skipped again on the next open'));
    this.size = good;
    this.cursor = Math.min(cur, good);
    this.handle = await fs.open(this.logFile, 'a');
  }

  /** Messages not yet delivered. */
  get length(): number {
    return this.entries.length;
  }

  /** The first `n` undelivered messages, in order. */
  peek(n: number): QueuedMessage[] {
    return this.entries.slice(0, n).map(({ topic, payload, retain }) => ({ topic, payload, retain }));
  }

  /** Append durably; appends are serialised in call order. */
  push(m: QueuedMessage): Promise<void> {
    const next = this.tail.then(async () => {
      const line = Buffer.from(JSON.stringify({ t: m.topic, p: Buffer.from(m.payload).toString('base64'), r: m.retain }) + '\n');
      await this.handle!.write(line);
      await this.handle!.datasync();
      this.size += line.byteLength;
      this.entries.push({ ...m, end: this.size });
      this.appended++;
    });
    this.tail = next.catch(ignoreBecause('the caller gets this failure from `next`; the queue goes on'));
    return next;
  }

  /** The first `n` messages were delivered: move the cursor past them (and empty the log when all are). */
  ack(n: number): Promise<void> {
    const next = this.tail.then(async () => {
      const done = this.entries.splice(0, n);
      if (done.length === 0) return;
      this.delivered += done.length;
      this.cursor = done[done.length - 1].end;
      if (this.entries.length === 0) {
        // Truncate first: a crash before the cursor is rewritten leaves a cursor past the end, read as "all delivered".
        await this.handle!.truncate(0);
        this.size = 0;
        this.cursor = 0;
      }
      await writeFileAtomic(this.cursorFile, String(this.cursor));
    });
    this.tail = next.catch(ignoreBecause('the caller gets this failure from `next`; the queue goes on'));
    return next;
  }

  async close(): Promise<void> {
    await this.tail;
    await this.handle?.close();
    this.handle = undefined;
  }
}
