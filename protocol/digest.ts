import { createHash, type Hash } from 'node:crypto';
import { ProtocolError } from './errors.ts';
import { type Dtype, dtypeSize, isDtype } from './dtypes.ts';
import { isWellFormedName, readSafetensors, shapeSize } from './safetensors.ts';

/**
 * The model digest (docs/protocol.md §7.2): SHA-256 over, for each tensor in the order of the UTF-8
 * bytes of its name (Buffer.compare order):
 *
 *   u64le(len(nameUtf8)) ‖ nameUtf8 ‖ u64le(len(dtypeAscii)) ‖ dtypeAscii ‖
 *   u64le(rank) ‖ u64le(dim_0) ‖ … ‖ u64le(dim_{rank-1}) ‖ raw tensor bytes
 *
 * as lowercase hex. The header's order, whitespace, layout and metadata do not
 * enter it.
 */

export interface DigestTensorInfo {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
}

function u64le(n: number): Uint8Array {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, n % 0x100000000, true);
  dv.setUint32(4, Math.floor(n / 0x100000000), true);
  return b;
}

function checkInfo(info: DigestTensorInfo): number {
  if (typeof info.name !== 'string' || !isWellFormedName(info.name)) {
    throw new ProtocolError('malformed-model', `tensor name ${JSON.stringify(info.name)} is not a well-formed string`);
  }
  if (!isDtype(info.dtype)) throw new ProtocolError('malformed-model', `tensor ${JSON.stringify(info.name)}: unknown dtype ${JSON.stringify(info.dtype)}`);
  if (!Array.isArray(info.shape)) throw new ProtocolError('malformed-model', `tensor ${JSON.stringify(info.name)}: shape is not an array`);
  return shapeSize(info.shape, `tensor ${JSON.stringify(info.name)} shape`) * dtypeSize(info.dtype);
}

/** The bytes hashed before a tensor's raw data. */
export function tensorDigestPrefix(info: DigestTensorInfo): Uint8Array {
  checkInfo(info);
  const name = Buffer.from(info.name, 'utf8');
  const dtype = Buffer.from(info.dtype, 'ascii');
  const parts: Uint8Array[] = [u64le(name.byteLength), name, u64le(dtype.byteLength), dtype, u64le(info.shape.length)];
  for (const d of info.shape) parts.push(u64le(d));
  return Buffer.concat(parts);
}

/**
 * Streaming digest: add tensors in name order (UTF-8 bytes), each with all of
 * its raw bytes, possibly in several pieces via beginTensor/update.
 */
export class ModelDigest {
  private readonly hash: Hash = createHash('sha256');
  private last: Buffer | undefined;
  private remaining = 0;
  private current = '';
  private result: string | undefined;

  /** Start a tensor whose bytes follow via update(); throws if out of name order. */
  beginTensor(info: DigestTensorInfo): void {
    if (this.result !== undefined) throw new ProtocolError('malformed-model', 'digest already finished');
    if (this.remaining !== 0) throw new ProtocolError('malformed-model', `tensor ${JSON.stringify(this.current)} is missing ${this.remaining} bytes`);
    const bytes = checkInfo(info);
    const key = Buffer.from(info.name, 'utf8');
    if (this.last !== undefined && Buffer.compare(this.last, key) >= 0) {
      throw new ProtocolError('malformed-model', `tensor ${JSON.stringify(info.name)} is out of name order or repeated`);
    }
    this.last = key;
    this.current = info.name;
    this.remaining = bytes;
    this.hash.update(tensorDigestPrefix(info));
  }

  /** More raw bytes of the current tensor. */
  update(data: Uint8Array): void {
    if (data.byteLength > this.remaining) {
      throw new ProtocolError('malformed-model', `tensor ${JSON.stringify(this.current)} has more bytes than its shape`);
    }
    this.remaining -= data.byteLength;
    this.hash.update(data);
  }

  /** A whole tensor at once; must come in name order; throws if out of order or the size does not match the shape. */
  addTensor(info: DigestTensorInfo, data: Uint8Array): void {
    this.beginTensor(info);
    if (data.byteLength !== this.remaining) {
      throw new ProtocolError('malformed-model', `tensor ${JSON.stringify(info.name)}: ${data.byteLength} bytes, shape needs ${this.remaining}`);
    }
    this.update(data);
  }

  /** Lowercase hex SHA-256. Idempotent; no tensors may be added after. */
  digest(): string {
    if (this.result === undefined) {
      if (this.remaining !== 0) throw new ProtocolError('malformed-model', `tensor ${JSON.stringify(this.current)} is missing ${this.remaining} bytes`);
      this.result = this.hash.digest('hex');
    }
    return this.result;
  }
}

/** The digest of a set of tensors in any order (sorted here). */
export function modelDigest(tensors: ReadonlyArray<DigestTensorInfo & { data: Uint8Array }>): string {
  const keyed = tensors.map((t) => ({ t, key: Buffer.from(t.name, 'utf8') }));
  keyed.sort((a, b) => Buffer.compare(a.key, b.key));
  const d = new ModelDigest();
  for (const { t } of keyed) d.addTensor(t, t.data);
  return d.digest();
}

/** The digest of a safetensors file held in memory. */
export function safetensorsDigest(bytes: Uint8Array): string {
  return modelDigest(readSafetensors(bytes).tensors);
}
