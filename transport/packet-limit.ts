/**
 * A maximum MQTT packet size enforced while the bytes arrive, before any MQTT
 * parser buffers a packet. mqtt-packet (used by Aedes and mqtt.js) collects a
 * whole packet in memory before it looks at it, and MQTT 3.1.1 has no
 * negotiated maximum: a fixed header declaring 268 MB of remaining length makes
 * it hold 268 MB. The scanner reads only each fixed header (one type byte, one
 * to four length bytes) and skips over the body, so it holds no packet data.
 */
import type { Readable } from 'node:stream';

/** The largest remaining length MQTT can encode (four length bytes; MQTT 3.1.1 §2.2.3). */
export const MQTT_MAX_REMAINING = 268_435_455;

/** Why a stream was cut off. */
export type PacketLimitReason = 'packet-too-large' | 'malformed-length';

export interface PacketLimitBreach {
  reason: PacketLimitReason;
  /** Packet type (the fixed header's upper nibble: 1 CONNECT, 3 PUBLISH …). */
  type: number;
  /** The remaining length declared (0 for a malformed length). */
  declared: number;
  /** The limit in force when the header was read. */
  limit: number;
}

/** Sees each packet's body as it passes (transport/partial-publish.ts keeps a PUBLISH under way). */
export interface PacketBodySink {
  /** A fixed header was read: the packet's type, its flags (the lower nibble) and its remaining length. */
  start(type: number, flags: number, length: number): void;
  /** The next bytes of the body (a view into the stream's chunk: copy what is kept). */
  body(bytes: Uint8Array): void;
  /** The whole body has passed. */
  end(): void;
}

/**
 * Follows the packet boundaries of one MQTT byte stream. `feed` returns the first
 * breach (and stops following: the stream is to be closed), or undefined.
 */
export class PacketScanner {
  /** Body bytes of the current packet still to pass. */
  private skip = 0;
  /** 0: expecting a type byte; 1..4: reading length byte n. */
  private lenBytes = 0;
  private type = 0;
  private flags = 0;
  private length = 0;
  private multiplier = 1;
  private broken = false;
  packets = 0;
  /** Bytes of the packet under way received so far (0 between packets): what a close now throws away. */
  partialBytes = 0;

  /** `limit()` is read at each header: the limit may change as the connection moves on (login). */
  constructor(
    private readonly limit: () => number,
    private readonly sink?: PacketBodySink,
  ) {}

  feed(chunk: Uint8Array): PacketLimitBreach | undefined {
    if (this.broken) return undefined;
    let i = 0;
    while (i < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        this.sink?.body(chunk.subarray(i, i + n));
        this.skip -= n;
        i += n;
        this.partialBytes = this.skip > 0 ? this.partialBytes + n : 0;
        if (this.skip === 0) this.sink?.end();
        continue;
      }
      const b = chunk[i++]!;
      this.partialBytes++;
      if (this.lenBytes === 0) {
        this.type = b >> 4;
        this.flags = b & 0x0f;
        this.length = 0;
        this.multiplier = 1;
        this.lenBytes = 1;
        continue;
      }
      this.length += (b & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      if (b & 0x80) {
        if (this.lenBytes === 4) return this.breach('malformed-length', 0);
        this.lenBytes++;
        continue;
      }
      this.lenBytes = 0;
      const limit = this.limit();
      if (this.length > limit) return this.breach('packet-too-large', this.length, limit);
      this.skip = this.length;
      this.sink?.start(this.type, this.flags, this.length);
      if (this.skip === 0) {
        this.partialBytes = 0;
        this.sink?.end();
      }
      this.packets++;
    }
    return undefined;
  }

  private breach(reason: PacketLimitReason, declared: number, limit = this.limit()): PacketLimitBreach {
    this.broken = true;
    return { reason, type: this.type, declared, limit };
  }
}

/**
 * Watches every chunk `stream` hands to its reader (the 'data' event fires for
 * every chunk, also for readers that call `read()`), and calls `onBreach` on the
 * first packet over `limit()`; `onBreach` must destroy the stream. The reader
 * receives at most the chunk that carried the header, never the declared body.
 * Attach it after the reader (so a reader using 'readable' keeps the stream paused).
 */
export function limitIncoming(stream: Readable, limit: () => number, onBreach: (b: PacketLimitBreach) => void, sink?: PacketBodySink): PacketScanner {
  const scanner = new PacketScanner(limit, sink);
  stream.on('data', (chunk: Buffer) => {
    const b = scanner.feed(chunk);
    if (b) onBreach(b);
  });
  return scanner;
}

export function describeBreach(b: PacketLimitBreach): string {
  return b.reason === 'malformed-length' ? `malformed remaining length in a packet of type ${b.type}` : `packet of type ${b.type} declares ${b.declared} bytes, over the limit of ${b.limit}`;
}

/** MQTT's remaining-length encoding (1 to 4 bytes), for tools that write packets by hand. */
export function encodeRemainingLength(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

/** A fixed header of a packet of `type` (1 CONNECT, 3 PUBLISH …) declaring `length` bytes to follow. */
export function fixedHeader(type: number, length: number): Buffer {
  return Buffer.concat([Buffer.from([type << 4]), encodeRemainingLength(length)]);
}
