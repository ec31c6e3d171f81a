import { nodeFs, type FileHandlePort, type FsPort } from '../platform/fs-port.ts';
import { ModelDigest } from '../protocol/digest.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { headerByteLength, parseSafetensorsHeader, type SafetensorsHeader, type TensorInfo } from '../protocol/safetensors.ts';

/** Read only the header of a safetensors file. */
export async function readModelHeader(h: FileHandlePort): Promise<SafetensorsHeader> {
  const { size } = await h.stat();
  if (size < 8) throw new ProtocolError('malformed-model', `file of ${size} bytes is shorter than the 8-byte header length`);
  const prefix = new Uint8Array(8);
  await h.read(prefix, 0, 8, 0);
  const n = headerByteLength(prefix);
  if (8 + n > size) throw new ProtocolError('malformed-model', 'header longer than the file');
  const head = new Uint8Array(8 + n);
  await h.read(head, 0, 8 + n, 0);
  return parseSafetensorsHeader(head, size);
}

export async function readExactly(h: FileHandlePort, length: number, position: number, into?: Uint8Array): Promise<Uint8Array> {
  // `into`: a buffer of the caller's to reuse, at least as large (the result is a view of it).
  const buf = into && into.byteLength >= length ? into.subarray(0, length) : new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await h.read(buf, got, length - got, position + got);
    if (bytesRead === 0) throw new ProtocolError('malformed-model', 'file shorter than its header says');
    got += bytesRead;
  }
  return buf;
}

/**
 * A safetensors file opened for reading one tensor at a time, so that a
 * model never has to sit in memory whole.
 */
export class ModelFile {
  readonly format = 'safetensors' as const;

  private constructor(
    readonly path: string,
    private readonly h: FileHandlePort,
    readonly header: SafetensorsHeader,
    readonly fileSize: number,
  ) {}

  static async open(path: string, fsys: FsPort = nodeFs): Promise<ModelFile> {
    const h = await fsys.open(path, 'r');
    try {
      return new ModelFile(path, h, await readModelHeader(h), (await h.stat()).size);
    } catch (e) {
      await h.close();
      throw e;
    }
  }

  get tensors(): TensorInfo[] {
    return this.header.tensors;
  }

  info(name: string): TensorInfo | undefined {
    return this.header.tensors.find((t) => t.name === name);
  }

  async read(t: TensorInfo, into?: Uint8Array): Promise<Uint8Array> {
    return readExactly(this.h, t.end - t.begin, this.header.dataStart + t.begin, into);
  }

  /** `length` bytes of the data section from `offset` (into `into` when it is large enough). */
  async readRange(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    return readExactly(this.h, length, this.header.dataStart + offset, into);
  }

  /** The model digest from the digest of its tensors: for safetensors, the same. */
  digestOf(tensorDigest: string): string {
    return tensorDigest;
  }

  /** Total bytes of tensor data. */
  get dataBytes(): number {
    return this.header.tensors.reduce((a, t) => a + (t.end - t.begin), 0);
  }

  async close(): Promise<void> {
    await this.h.close();
  }
}

/** Most bytes the digest of a model file reads at once: its memory does not grow with a tensor's size. */
const DIGEST_PIECE = 256 * 1024;

/** The digest of a model file, read tensor by tensor, each in pieces of at most 256 KiB through one buffer. */
export async function digestModelFile(file: string, fsys: FsPort = nodeFs): Promise<string> {
  const m = await ModelFile.open(file, fsys);
  try {
    const d = new ModelDigest();
    const buf = new Uint8Array(
      Math.min(
        DIGEST_PIECE,
        m.tensors.reduce((a, t) => Math.max(a, t.end - t.begin), 0),
      ),
    );
    for (const t of m.tensors) {
      d.beginTensor(t);
      for (let at = t.begin; at < t.end;) {
        const n = Math.min(buf.byteLength, t.end - at);
        d.update(await m.readRange(at, n, buf));
        at += n;
      }
    }
    return d.digest();
  } finally {
    await m.close();
  }
}
