/**
 * Encoded frames shared by every device that asks for the same chunk. A
 * frame's bytes depend only on the update and the chunk index (the device is
 * in the topic), and updates are named by their hash, so a cached frame is
 * never stale. With a fleet fetching one update at once, each chunk is read
 * from disk and encoded once, and every publish of it shares one buffer.
 */
export class FrameCache {
  private readonly frames = new Map<string, Promise<Uint8Array | undefined>>();
  private readonly sizes = new Map<string, number>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  /** `maxBytes`: the most frame bytes kept (least recently used go first). */
  constructor(private readonly maxBytes = 16 * 1024 * 1024) {}

  /** The frame for `key`, made by `make` once (concurrent askers share the same promise). */
  get(key: string, make: () => Promise<Uint8Array | undefined>): Promise<Uint8Array | undefined> {
    const have = this.frames.get(key);
    if (have) {
      this.hits++;
      // Most recently used last.
      this.frames.delete(key);
      this.frames.set(key, have);
      return have;
    }
    this.misses++;
    const p = make().then(
      (f) => {
        if (!f || this.frames.get(key) !== p) {
          if (!f) this.frames.delete(key);
          return f;
        }
        this.sizes.set(key, f.byteLength);
        this.bytes += f.byteLength;
        this.evict();
        return f;
      },
      (e: unknown) => {
        this.frames.delete(key);
        throw e;
      },
    );
    this.frames.set(key, p);
    return p;
  }

  private evict(): void {
    for (const key of this.frames.keys()) {
      if (this.bytes <= this.maxBytes) return;
      const size = this.sizes.get(key);
      if (size === undefined) continue; // still being made
      this.frames.delete(key);
      this.sizes.delete(key);
      this.bytes -= size;
    }
  }
}
