import type { PacketBodySink } from './packet-limit.ts';

/** The payload received of a PUBLISH that a connection's close cut short, and its topic. */
export interface PartialPublish {
  topic: string;
  bytes: Uint8Array;
}

/** What a PUBLISH under way is kept for (`Transport.keepPartial`). */
export interface PartialRule {
  /** Topics whose PUBLISH is kept (a device's own frames topic). */
  match: (topic: string) => boolean;
  /** The most payload bytes kept (the largest frame the owner accepts); what comes after is not kept. */
  maxBytes: number;
  /** Less payload than this is not worth keeping (`take` gives nothing). */
  minBytes: number;
}

/** Longest topic read to decide (MQTT allows 65,535 bytes; ours are under 300). */
const MAX_TOPIC_BYTES = 1024;
const PUBLISH = 3;

/**
 * Follows the PUBLISH packets of one MQTT byte stream (a PacketScanner's sink) and keeps the payload
 * of the one under way, when its topic matches the rule, in one buffer of at most `maxBytes`: bytes
 * a connection's close throws away today, which the owner can resume from (a chunk frame's tail,
 * docs/protocol.md §4.1). Nothing else is buffered (other packets, other topics: only counted past).
 */
export class PartialKeeper implements PacketBodySink {
  /** The rule in force, read at each PUBLISH's header (the owner may set it while a connection is up). */
  constructor(private readonly ruleNow: () => PartialRule | undefined) {}
  private rule: PartialRule | undefined;
  /** 0 idle; 1 topic length; 2 topic; 3 packet id; 4 payload kept; 5 skipping. */
  private phase = 0;
  private need = 0;
  private packetId = false;
  private remaining = 0;
  private topicLen = 0;
  private readonly head: number[] = [];
  private topic = '';
  private buf = new Uint8Array(0);
  private kept = 0;

  start(type: number, flags: number, length: number): void {
    this.rule = this.ruleNow();
    this.kept = 0;
    this.head.length = 0;
    this.remaining = length;
    this.phase = this.rule && type === PUBLISH && length > 2 ? 1 : 5;
    this.need = 2;
    // QoS 1 or 2 (flags bits 1-2): a packet id follows the topic.
    this.packetId = ((flags >> 1) & 3) > 0;
  }

  body(bytes: Uint8Array): void {
    let i = 0;
    while (i < bytes.length && this.phase !== 5) {
      if (this.phase === 4) {
        const room = Math.min(bytes.length - i, this.buf.length - this.kept);
        this.buf.set(bytes.subarray(i, i + room), this.kept);
        this.kept += room;
        return;
      }
      this.head.push(bytes[i++]);
      if (this.head.length < this.need) continue;
      this.advance();
    }
  }

  /** The head bytes of the current phase are in: the next phase. */
  private advance(): void {
    const h = this.head;
    if (this.phase === 1) {
      this.topicLen = (h[0] << 8) | h[1];
      this.phase = this.topicLen === 0 || this.topicLen > MAX_TOPIC_BYTES ? 5 : 2;
      this.need = this.topicLen;
    } else if (this.phase === 2) {
      this.topic = Buffer.from(h).toString('utf8');
      this.phase = this.rule?.match(this.topic) ? 3 : 5;
      this.need = this.packetId ? 2 : 0;
    } else {
      this.phase = 4;
    }
    h.length = 0;
    if (this.phase === 3 && this.need === 0) this.phase = 4;
    if (this.phase !== 4) return;
    const payload = this.remaining - 2 - this.topicLen - (this.packetId ? 2 : 0);
    const size = Math.max(0, Math.min(payload, this.rule?.maxBytes ?? 0));
    if (this.buf.length < size || this.buf.length > 2 * size) this.buf = new Uint8Array(size);
    this.kept = 0;
  }

  end(): void {
    this.phase = 0;
    this.kept = 0;
  }

  /** Payload bytes of the PUBLISH under way that a close now would keep (0 unless at least the rule's minimum). */
  resumable(): number {
    return this.phase === 4 && this.kept >= (this.rule?.minBytes ?? Infinity) ? this.kept : 0;
  }

  /** The connection closed: what came of the PUBLISH under way, when kept (a copy; this keeper is done). */
  closed(): PartialPublish | undefined {
    const n = this.resumable();
    const cut = n > 0 ? { topic: this.topic, bytes: this.buf.slice(0, n) } : undefined;
    this.phase = 5;
    this.buf = new Uint8Array(0);
    return cut;
  }
}
