import type { WireStats } from '../protocol/status.ts';
import type { PartialPublish, PartialRule } from './partial-publish.ts';

export type { PartialPublish, PartialRule } from './partial-publish.ts';

/**
 * The message transport every role talks through. The MQTT implementation is
 * transport/mqtt.ts; tests can wrap it to drop, delay or corrupt messages.
 */
export interface PublishOptions {
  qos?: 0 | 1;
  retain?: boolean;
}

export type MessageHandler = (topic: string, payload: Uint8Array, retained: boolean) => void;

export interface SubscribeOptions {
  /** Send the SUBSCRIBE even for filters this client already asked for (one a lost connection may have dropped). */
  resend?: boolean;
}

export interface Transport {
  /** Resolves when the broker has acknowledged a QoS 1 publish (or, for QoS 0, when it is written). */
  publish(topic: string, payload: Uint8Array | string, opts?: PublishOptions): Promise<void>;
  /** Resolves when the broker has granted it (or, without `resend`, at once when the session already holds it). */
  subscribe(filters: string | string[], qos?: 0 | 1, opts?: SubscribeOptions): Promise<void>;
  unsubscribe(filters: string | string[]): Promise<void>;
  /** Returns a function that removes the handler. */
  onMessage(handler: MessageHandler): () => void;
  /** Called on every successful (re)connect. */
  onConnect(handler: () => void): void;
  onDisconnect(handler: (reason: string) => void): void;
  readonly connected: boolean;
  /** Bytes through the sockets so far and the number of connects (when the transport can count them). */
  stats?(): WireStats;
  /**
   * Opens a fresh TCP connection to the broker, to learn whether the link carries packets now
   * while the current connection is silent (its peer may be waiting out a backed-off
   * retransmission timer after a cut). Resolves true when it connects within `timeoutMs`; the
   * connection is then kept, briefly, for `reconnect` to use.
   */
  probe?(timeoutMs: number): Promise<boolean>;
  /**
   * Sends one tiny packet on the current connection (MQTT: a PINGREQ). Its TCP segment carries our
   * latest acknowledgement again: a peer whose last ACK from us was lost (it then waits out a
   * backed-off retransmission timer before sending more) goes on at once when this one arrives.
   */
  nudge?(): void;
  /**
   * Bytes a reconnect now would cost on the downlink: the part of a packet under way (thrown away;
   * not what `keepPartial` keeps of it) and the retained messages the new connection brings again
   * (as many as this one brought).
   */
  reconnectCost?(): number;
  /**
   * Keep the payload received so far of a PUBLISH a connection's close cuts short, when its topic
   * matches the rule (a device's own frames topic), at most `maxBytes` of it, for `takePartial`
   * (docs/protocol.md §4.2: the device asks for the rest of the chunk only). Replaces an earlier rule;
   * undefined stops keeping.
   */
  keepPartial?(rule: PartialRule | undefined): void;
  /** The PUBLISH the last close cut short, as `keepPartial` kept it, handed over once (or undefined). */
  takePartial?(): PartialPublish | undefined;
  /** Of the packet under way, the bytes a close now would keep (`keepPartial`): not in `reconnectCost`. */
  resumableBytes?(): number;
  /** Bytes of the retained messages this connection has brought so far (what a new connection brings again). */
  retainedBytes?(): number;
  /**
   * The quickest TCP handshake to the broker so far, ms (0 before any): the link's round trip with
   * the least queue ahead, unlike a chunk's request-to-arrival time, which on a shared link includes
   * every frame queued ahead of it.
   */
  handshakeMs?(): number;
  /** PINGRESPs received so far: one means the broker had sent us everything queued ahead of its PINGREQ. */
  pongs?(): number;
  /** Drops the current connection and connects again at once, on the probed connection when one is ready. */
  reconnect?(reason: string): void;
  /** True while the current connection is one `reconnect` made (the owner knows why the last one closed). */
  readonly reconnectedQuickly?: boolean;
  /** Bounded: `graceMs` (the implementation's default when omitted) is the longest wait for unacknowledged publishes. */
  close(graceMs?: number): Promise<void>;
}
