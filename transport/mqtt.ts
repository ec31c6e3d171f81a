import { MQTT_DEFAULTS } from './defaults.ts';
import { IoError, UsageError } from '../platform/errors.ts';
import net from 'node:net';
import tls from 'node:tls';
import { MqttClient, type ISubscriptionMap } from 'mqtt';
import type { WireStats } from '../protocol/status.ts';
import { describeBreach, limitIncoming } from './packet-limit.ts';
import { PartialKeeper, type PartialPublish, type PartialRule } from './partial-publish.ts';
import type { MessageHandler, PublishOptions, SubscribeOptions, Transport } from './types.ts';
import { connectCause, type ConnectCause } from './connect-errors.ts';
import { mqttPacketBytes, type SentPacket } from './packet-size.ts';
import { keepAliveOnPublishes } from './keepalive.ts';
import { brokerServers, clientOptions, DEFAULT_MAX_INCOMING_PACKET, fromEnvFile, resendMap, type MqttTransportOptions } from './mqtt-options.ts';
import { urlWithoutLogin } from '../util/url-login.ts';
import { TcpConnections } from './tcp-connections.ts';

export { DEFAULT_MAX_INCOMING_PACKET, type MqttTransportOptions } from './mqtt-options.ts';

export class MqttTransport implements Transport {
  private readonly client: MqttClient;
  private readonly messageHandlers: MessageHandler[] = [];
  private readonly connectHandlers: Array<() => void> = [];
  private readonly disconnectHandlers: Array<(reason: string) => void> = [];
  private failures = 0;
  private closing = false;
  private bytesInDone = 0;
  private bytesOutDone = 0;
  private connects = 0;
  private socket: net.Socket | undefined;
  private serverIndex = 0;
  private readonly servers: Array<{ host: string; port: number; secure: boolean }>;
  private readonly closeGraceMs: number;
  /** Opens the TCP connections, times their handshakes, and keeps a probe's as the spare for the next connect. */
  private readonly connections = new TcpConnections();
  /** The connection is being dropped on purpose to reconnect at once (`reconnect`). */
  private quick = false;
  /** Nudges sent (`nudge`). */
  nudges = 0;
  private keepalive: { pongs: () => number } | undefined;
  /** Reconnects asked for by the owner (a silent connection while the link was up). */
  quickReconnects = 0;
  /** The current connection is one `reconnect` made. */
  reconnectedQuickly = false;
  private quickPending = false;
  /** Why the broker last refused the login, if it did. */
  refusal: string | undefined;
  /** Why the last attempt to connect failed, if it did; cleared by a connection. */
  lastCause: ConnectCause | undefined;
  /** Failed attempts in a row with a cause, since the last connection. */
  private causedFailures = 0;
  /** Connections closed because the broker sent a packet over maxIncomingPacket (the last reason in `oversized`). */
  oversizedPackets = 0;
  oversized: string | undefined;
  /** Where received bytes went besides new messages (simulations break a transfer's overhead down with it). */
  readonly loss = { partialBytesDropped: 0, partialBytesKept: 0, retainedBytesIn: 0 };
  /** MQTT packets written, by type (`publish <labelTopic>` for publishes): count and bytes (simulations break the uplink down with it). */
  readonly sent: Record<string, { packets: number; bytes: number }> = {};
  /** The current connection's packet scanner (how much of a packet is under way). */
  private scanner: { partialBytes: number } | undefined;
  /** What of a PUBLISH under way is kept at a close (`keepPartial`), the current connection's keeper, and the last one cut short. */
  private partialRule: PartialRule | undefined;
  private keeper: PartialKeeper | undefined;
  private cutShort: PartialPublish | undefined;
  /** Retained bytes the current connection brought (each connect brings them again). */
  private retainedThisConnection = 0;

  private constructor(opts: MqttTransportOptions) {
    this.closeGraceMs = opts.closeGraceMs ?? MQTT_DEFAULTS.closeGraceMs;
    const servers = (this.servers = brokerServers(opts));
    const tlsFiles = servers.some((x) => x.secure)
      ? { ca: opts.tls?.ca ?? fromEnvFile('FLEET_TLS_CA'), cert: opts.tls?.cert ?? fromEnvFile('FLEET_TLS_CERT'), key: opts.tls?.key ?? fromEnvFile('FLEET_TLS_KEY') }
      : undefined;
    const maxIncoming = opts.maxIncomingPacket ?? DEFAULT_MAX_INCOMING_PACKET;
    const min = opts.reconnectMinMs ?? MQTT_DEFAULTS.reconnectMinMs;
    const max = opts.reconnectMaxMs ?? MQTT_DEFAULTS.reconnectMaxMs;
    this.client = new MqttClient(() => this.openStream(tlsFiles, maxIncoming), clientOptions(opts, min));
    this.onClientEvents(min, max, opts);
    const label = opts.labelTopic;
    this.client.on('packetsend', (packet: SentPacket) => {
      const key = packet.cmd === 'publish' ? `publish ${label && packet.topic !== undefined ? label(packet.topic) : ''}`.trim() : packet.cmd;
      const e = (this.sent[key] ??= { packets: 0, bytes: 0 });
      e.packets++;
      e.bytes += mqttPacketBytes(packet);
    });
  }

  /** The stream for the next attempt: a TCP socket (TLS over it for mqtts), to the next server in turn, its incoming packets bounded. */
  private openStream(tlsFiles: tls.ConnectionOptions | undefined, maxIncoming: number): net.Socket | tls.TLSSocket {
    const { host, port, secure } = this.currentServer();
    const tlsOpts = secure ? tlsFiles : undefined;
    // The raw TCP socket carries the counters (what the link carries, TLS records included).
    const raw = this.connections.takeSpare() ?? this.connections.open(host, port);
    this.socket = raw;
    const stream = tlsOpts ? tls.connect({ socket: raw, ...tlsOpts, servername: net.isIP(host) ? undefined : host }) : raw;
    const keeper = new PartialKeeper(() => this.partialRule);
    const scanner = limitIncoming(
      stream,
      () => maxIncoming,
      (b) => {
        this.oversizedPackets++;
        this.oversized = describeBreach(b);
        stream.destroy();
      },
      keeper,
    );
    this.scanner = scanner;
    this.keeper = keeper;
    raw.on('close', () => {
      this.bytesInDone += raw.bytesRead;
      this.bytesOutDone += raw.bytesWritten;
      // The part of a packet read when the connection closed is thrown away (TLS: of the decrypted stream),
      // but for what `keepPartial` keeps of a PUBLISH, for the owner to resume from.
      const cut = keeper.closed();
      if (cut) this.cutShort = cut;
      this.loss.partialBytesKept += cut?.bytes.byteLength ?? 0;
      this.loss.partialBytesDropped += scanner.partialBytes - (cut?.bytes.byteLength ?? 0);
      if (this.keeper === keeper) this.keeper = undefined;
      if (this.socket === raw) this.socket = undefined;
    });
    return stream;
  }

  /** Connect, close (backoff with jitter, next server), error (the cause) and message handlers of the client. */
  private onClientEvents(min: number, max: number, opts: MqttTransportOptions): void {
    this.client.on('connect', () => {
      this.retainedThisConnection = 0;
      this.failures = 0;
      this.lastCause = undefined;
      this.causedFailures = 0;
      this.connects++;
      this.reconnectedQuickly = this.quickPending;
      this.quickPending = false;
      this.client.options.reconnectPeriod = min;
      for (const h of this.connectHandlers) h();
    });
    this.client.on('close', () => {
      if (this.closing) return;
      this.reconnectedQuickly = false;
      if (this.quick) {
        // Dropped on purpose while the link is up: the same server, at once (the period was set by reconnect()).
        this.quick = false;
        this.quickPending = true;
        this.client.options.reconnectPeriod = min;
        for (const h of this.disconnectHandlers) h('reconnecting: the connection was silent while the link was up');
        return;
      }
      this.quickPending = false;
      // Another node of the cluster for the next attempt (round robin).
      this.serverIndex++;
      this.failures++;
      // Exponential backoff with full jitter, capped.
      const ceiling = Math.min(max, min * 2 ** Math.min(this.failures, 16));
      this.client.options.reconnectPeriod = Math.max(min, Math.round(Math.random() * ceiling));
      for (const h of this.disconnectHandlers) h('connection closed');
    });
    this.client.on('error', (e: Error & { code?: number | string }) => {
      // Errors surface as close + reconnect; the owner sees onDisconnect with the cause.
      const cause = connectCause(e, this.currentServer().host);
      if (!cause) return;
      this.lastCause = cause;
      this.causedFailures++;
      if (e.code === 4 || e.code === 5) this.refusal = cause.message;
      for (const h of this.disconnectHandlers) h(cause.message);
    });
    this.keepalive = keepAliveOnPublishes(this.client, opts.keepaliveSeconds ?? MQTT_DEFAULTS.keepaliveSeconds);
    this.client.on('message', (topic, payload, packet) => {
      const bytes = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
      if (packet.retain === true) {
        this.loss.retainedBytesIn += packet.length ?? bytes.byteLength;
        this.retainedThisConnection += packet.length ?? bytes.byteLength;
      }
      for (const h of this.messageHandlers) h(topic, bytes, packet.retain === true);
    });
  }

  /**
   * Starts connecting at once; resolves on the first CONNACK. Rejects, naming
   * the cause, at once when retrying cannot help (unknown host, TLS, login
   * refused), after three failed attempts in a row with a cause (refused,
   * unreachable: a few seconds), or after `firstConnectTimeoutMs` if given.
   */
  static async connect(opts: MqttTransportOptions, firstConnectTimeoutMs?: number): Promise<MqttTransport> {
    const t = new MqttTransport(opts);
    if (t.connected) return t;
    const where = urlWithoutLogin(opts.url);
    let settled = false;
    await new Promise<void>((resolve, reject) => {
      const fail = (why: string): void => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        void t.close();
        reject(new IoError('cannot-connect', `cannot connect to ${where}: ${why}`));
      };
      const timer = firstConnectTimeoutMs ? setTimeout(() => fail(t.lastCause ? t.lastCause.message : `no answer within ${firstConnectTimeoutMs} ms`), firstConnectTimeoutMs) : undefined;
      t.client.once('connect', () => {
        settled = true;
        if (timer) clearTimeout(timer);
        resolve();
      });
      t.onDisconnect(() => {
        if (settled) return;
        const cause = t.lastCause;
        if (cause && !t.client.connected && (cause.definitive || t.causedFailures >= 3)) fail(cause.message);
      });
    });
    return t;
  }

  /** Creates the transport without waiting for a connection (long-running agents). */
  static start(opts: MqttTransportOptions): MqttTransport {
    return new MqttTransport(opts);
  }

  stats(): WireStats {
    return {
      bytesIn: this.bytesInDone + (this.socket?.bytesRead ?? 0),
      bytesOut: this.bytesOutDone + (this.socket?.bytesWritten ?? 0),
      connects: this.connects,
    };
  }

  handshakeMs(): number {
    return this.connections.handshakeMs();
  }

  probe(timeoutMs: number): Promise<boolean> {
    if (this.closing || !this.client.connected) return Promise.resolve(false);
    const { host, port } = this.currentServer();
    return this.connections.probe(host, port, timeoutMs, () => this.closing);
  }

  /** A PINGREQ now (its PINGRESP, queued behind whatever the broker is sending, keeps the keepalive too). */
  nudge(): void {
    if (this.closing || !this.client.connected) return;
    this.nudges++;
    this.client.sendPing();
  }

  reconnectCost(): number {
    return (this.scanner?.partialBytes ?? 0) - (this.keeper?.resumable() ?? 0) + this.retainedThisConnection;
  }

  resumableBytes(): number {
    return this.keeper?.resumable() ?? 0;
  }

  keepPartial(rule: PartialRule | undefined): void {
    this.partialRule = rule;
    if (!rule) this.cutShort = undefined;
  }

  takePartial(): PartialPublish | undefined {
    const p = this.cutShort;
    this.cutShort = undefined;
    return p;
  }

  retainedBytes(): number {
    return this.retainedThisConnection;
  }

  pongs(): number {
    return this.keepalive?.pongs() ?? 0;
  }

  reconnect(reason: string): void {
    if (this.closing || !this.client.connected || this.quick) return;
    this.quick = true;
    this.quickReconnects++;
    // mqtt.js arms its reconnect timer with the period in force when the connection closes.
    this.client.options.reconnectPeriod = 1;
    this.client.stream?.destroy(new Error(reason));
  }

  /** The server of the current connection, or of the next attempt (round robin over the cluster's nodes). */
  private currentServer(): { host: string; port: number; secure: boolean } {
    return this.servers[this.serverIndex % this.servers.length];
  }

  /** host:port of the server this transport is (or was last) connected to. */
  get server(): string {
    const s = this.currentServer();
    return `${s.host}:${s.port}`;
  }

  get connected(): boolean {
    return this.client.connected;
  }

  publish(topic: string, payload: Uint8Array | string, opts: PublishOptions = {}): Promise<void> {
    const body = typeof payload === 'string' ? Buffer.from(payload) : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    return new Promise((resolve, reject) => {
      this.client.publish(topic, body, { qos: opts.qos ?? 1, retain: opts.retain ?? false }, (err) => (err ? reject(err) : resolve()));
    });
  }

  subscribe(filters: string | string[], qos: 0 | 1 = 1, opts: SubscribeOptions = {}): Promise<void> {
    // mqtt.js sends nothing for a filter it already holds at this QoS (it re-subscribes those itself on a
    // reconnect) and answers at once; `resend` makes it send the SUBSCRIBE and wait for this SUBACK.
    const list = [filters].flat();
    const request: string[] | ISubscriptionMap = opts.resend ? resendMap(list, qos) : list;
    return new Promise((resolve, reject) => {
      this.client.subscribe(request, { qos }, (err) => {
        // mqtt.js fails a SUBACK with any failure code (0x80, MQTT 3.1.1 §3.9.3) as a plain Error, never as a grant.
        if (err && /^Subscribe error/.test(err.message)) return reject(new UsageError('subscription-refused', `broker refused subscription to ${list.join(', ')}`));
        if (err) return reject(err);
        resolve();
      });
    });
  }

  unsubscribe(filters: string | string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.client.unsubscribe(filters, (err) => (err ? reject(err) : resolve()));
    });
  }

  onMessage(handler: MessageHandler): () => void {
    this.messageHandlers.push(handler);
    return () => {
      const i = this.messageHandlers.indexOf(handler);
      if (i >= 0) this.messageHandlers.splice(i, 1);
    };
  }

  onConnect(handler: () => void): void {
    this.connectHandlers.push(handler);
  }

  onDisconnect(handler: (reason: string) => void): void {
    this.disconnectHandlers.push(handler);
  }

  /**
   * Disconnects cleanly (DISCONNECT after the unacknowledged publishes are
   * acked), but never waits longer than `graceMs`: then, or at once when not
   * connected, the unacknowledged publishes fail ("Message removed") and the
   * socket is destroyed without DISCONNECT, so the broker sends the last will.
   */
  close(graceMs = this.closeGraceMs): Promise<void> {
    this.closing = true;
    const c = this.client;
    const force = (): void => {
      for (const id of Object.keys(c.outgoing)) c.removeOutgoingMessage(Number(id));
      c.stream?.destroy();
      this.socket?.destroy();
      this.connections.takeSpare()?.destroy();
    };
    if (!c.connected) force();
    return new Promise((resolve) => {
      const timer = setTimeout(
        () => {
          force();
          // mqtt.js waits for 'outgoingEmpty' before it finishes a clean end; nothing is outgoing any more.
          c.emit('outgoingEmpty');
          resolve();
        },
        Math.max(0, graceMs),
      );
      c.end(!c.connected, {}, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
