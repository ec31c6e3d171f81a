import { decodeTensorItem, FactorScratch, PayloadDecoder, type Payload, type PayloadLimits, type TensorDelta } from '../protocol/lowrank.ts';
import type { StreamedItem } from '../protocol/cbor-stream.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { readExactly } from './model-file.ts';
import { nodeFs, type FileHandlePort, type FsPort } from '../platform/fs-port.ts';

/** Where apply gets each tensor's delta: by name, one at a time. */
export interface DeltaSource {
  /** The names of the tensors the payload changes. */
  readonly names: ReadonlySet<string>;
  /** A reader of the deltas (decoding into `scratch` when given); closed when the apply is done. */
  open(scratch?: FactorScratch): Promise<DeltaReader>;
}

export interface DeltaReader {
  delta(name: string): Promise<TensorDelta>;
  close(): Promise<void>;
}

/** A payload already in memory (tools, tests) as a DeltaSource. */
export function memoryDeltas(payload: Payload): DeltaSource {
  const byName = new Map(payload.tensors.map((t) => [t.name, t]));
  return {
    names: new Set(byName.keys()),
    open: async () => ({ delta: async (name) => byName.get(name)!, close: async () => undefined }),
  };
}

const CHUNK = 64 * 1024;

/**
 * A low-rank payload on disk, decoded and checked without ever being held
 * whole (protocol/lowrank.ts PayloadDecoder): `verify` reads it once in 64 KiB
 * chunks (the CBOR subset, the map, each tensor's place), then each tensor's
 * item once more to check it; apply reads each item again as it reaches that
 * tensor. At most one tensor's item and its decoded factors are in memory.
 */
export class PayloadFile implements DeltaSource {
  private constructor(
    readonly file: string,
    readonly base: string,
    readonly target: string,
    private readonly at: ReadonlyMap<string, StreamedItem>,
    private readonly fsys: FsPort,
    /** Where the payload starts in the file (after an update file's header; 0 for a bare payload). */
    private readonly start: number,
  ) {}

  get names(): ReadonlySet<string> {
    return new Set(this.at.keys());
  }

  /** Decode and check the payload in `file` as decodePayload would (the same reason codes). */
  static async verify(file: string, fsys: FsPort = nodeFs, limits: PayloadLimits = {}, start = 0): Promise<PayloadFile> {
    const h = await fsys.open(file, 'r');
    try {
      const size = (await h.stat()).size - start;
      if (limits.maxBytes !== undefined && size > limits.maxBytes) throw new ProtocolError('payload-too-large', `${size} bytes, limit ${limits.maxBytes}`);
      const decoder = new PayloadDecoder(limits);
      const chunk = new Uint8Array(CHUNK);
      for (let pos = 0; pos < size;) {
        const { bytesRead } = await h.read(chunk, 0, Math.min(CHUNK, size - pos), start + pos);
        if (bytesRead === 0) break;
        decoder.push(chunk.subarray(0, bytesRead));
        pos += bytesRead;
      }
      const outline = decoder.end();
      const at = new Map<string, StreamedItem>();
      const buf = new ItemBuffer(start);
      // Each delta is checked and dropped: its bytes go to arrays reused from tensor to tensor.
      const scratch = new FactorScratch({ reuseBytes: true });
      for (const item of outline.items) at.set(decoder.tensor(item, await buf.read(h, item), scratch).name, item);
      return new PayloadFile(file, outline.base, outline.target, at, fsys, start);
    } finally {
      await h.close();
    }
  }

  /** Each delta read is valid until the next one (its arrays are the scratch's, reused). */
  async open(scratch = new FactorScratch({ reuseBytes: true })): Promise<DeltaReader> {
    const h = await this.fsys.open(this.file, 'r');
    const buf = new ItemBuffer(this.start);
    return {
      delta: async (name) => {
        const item = this.at.get(name);
        if (!item) throw new ProtocolError('shape-mismatch', `the payload has no tensor ${JSON.stringify(name)}`);
        return decodeTensorItem(item, await buf.read(h, item), scratch);
      },
      close: () => h.close(),
    };
  }
}

/** One buffer for every item read, grown to the largest (the decoded delta copies what it keeps). */
class ItemBuffer {
  private buf = new Uint8Array(0);

  constructor(private readonly start: number) {}

  async read(h: FileHandlePort, item: StreamedItem): Promise<Uint8Array> {
    if (this.buf.byteLength < item.length) this.buf = new Uint8Array(item.length);
    try {
      return await readExactly(h, item.length, this.start + item.offset, this.buf);
    } catch (e) {
      // The file was verified: shorter now means it changed under us.
      if (e instanceof ProtocolError) throw new ProtocolError('malformed-payload', `tensors[${item.index}]: the payload file is shorter than when it was read`);
      throw e;
    }
  }
}
