import http from 'node:http';
import type net from 'node:net';
import type { Aedes } from 'aedes';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { parseStatus, type DeviceStatus } from '../protocol/status.ts';
import type { Topics } from '../protocol/topics.ts';
import type { UpdateServerStats } from '../server/update-server.ts';
import { connectableHost, listen } from '../platform/listen.ts';
import type { Logger } from '../util/log.ts';
import type { PageHandler } from './dashboard-live.ts';

/**
 * `fleet broker --http PORT`: the broker's own metrics at `GET /metrics`
 * (Prometheus text, prom-client on a Registry of its own, never the global one).
 *
 * - clients: aedes `connectedClients`.
 * - bytes: every MQTT socket's `bytesWritten` / `bytesRead` (live sockets
 *   plus what closed ones had carried), so protocol overhead is counted too.
 *   The in-process update server's loopback connection is a socket like any.
 * - messages in: aedes `publish` events from clients (not the broker's own
 *   `$SYS`), by topic kind (`Topics.parse`; `other` for foreign topics).
 * - messages out: every message handed to a client for delivery (wrapped
 *   `authorizeForward`, which aedes calls once per subscriber and message,
 *   after the ACL), by topic kind.
 * - update server: chunks served, requests, bad requests, uploads (its `stats`).
 * - devices: by model, group, digest (running) and state, from the retained
 *   statuses: those the persistence held at start, then every status publish.
 */

export interface BrokerMetricsOptions {
  aedes: Aedes;
  topics: Topics;
  /** The in-process update server's counters (undefined: none runs). */
  updateStats: () => UpdateServerStats | undefined;
  /** Also the default process metrics (CPU, memory, event loop), prefixed fleet_broker_ (default true). */
  processMetrics?: boolean;
}

/** Sets a counter to a running total read at scrape time. */
function total(c: Counter, v: number): void {
  c.reset();
  if (v > 0) c.inc(v);
}

export class BrokerMetrics {
  readonly registry = new Registry();
  private readonly sockets = new Set<net.Socket>();
  private closedOut = 0;
  private closedIn = 0;
  private readonly statuses = new Map<string, DeviceStatus>();
  /** Devices whose status arrived live before the persistence's retained one was read (the live one wins). */
  private readonly seenLive = new Set<string>();
  private readonly msgIn: Counter<'kind'>;
  private readonly msgOut: Counter<'kind'>;
  private readonly offs: Array<() => void> = [];

  constructor(private readonly o: BrokerMetricsOptions) {
    const r = this.registry;
    this.trafficMetrics(r);
    this.msgIn = new Counter({ name: 'fleet_broker_messages_in_total', help: 'PUBLISH messages received from clients, by topic kind.', labelNames: ['kind'], registers: [r] });
    this.msgOut = new Counter({ name: 'fleet_broker_messages_out_total', help: 'Messages handed to a subscriber for delivery (one per subscriber and message), by topic kind.', labelNames: ['kind'], registers: [r] });
    this.updateServerMetrics(r);
    this.deviceMetrics(r);
    if (o.processMetrics !== false) collectDefaultMetrics({ register: r, prefix: 'fleet_broker_' });
    this.countMessages();
  }

  /** Connected clients and the bytes over their sockets. */
  private trafficMetrics(r: Registry): void {
    const aedes = this.o.aedes;
    // prom-client calls collect() with the metric as `this`: these read the collector's own state.
    const bytesOut = (): number => this.closedOut + [...this.sockets].reduce((n, s) => n + s.bytesWritten, 0);
    const bytesIn = (): number => this.closedIn + [...this.sockets].reduce((n, s) => n + s.bytesRead, 0);
    new Gauge({
      name: 'fleet_broker_connected_clients',
      help: 'MQTT clients connected now (aedes connectedClients).',
      registers: [r],
      collect() {
        this.set(aedes.connectedClients);
      },
    });
    new Counter({
      name: 'fleet_broker_bytes_out_total',
      help: 'Bytes written to MQTT client sockets (bytesWritten; protocol overhead included).',
      registers: [r],
      collect() {
        total(this, bytesOut());
      },
    });
    new Counter({
      name: 'fleet_broker_bytes_in_total',
      help: 'Bytes read from MQTT client sockets (bytesRead).',
      registers: [r],
      collect() {
        total(this, bytesIn());
      },
    });
  }

  /** The in-process update server's counters. */
  private updateServerMetrics(r: Registry): void {
    const o = this.o;
    const stat = (name: string, help: string, key: keyof UpdateServerStats): void => {
      new Counter({
        name,
        help,
        registers: [r],
        collect() {
          total(this, o.updateStats()?.[key] ?? 0);
        },
      });
    };
    stat('fleet_update_server_chunks_served_total', 'Chunks the in-process update server sent to devices.', 'chunksSent');
    stat('fleet_update_server_requests_total', 'Chunk and chunk-list requests from devices.', 'requests');
    stat('fleet_update_server_bad_requests_total', 'Requests that could not be decoded.', 'badRequests');
    stat('fleet_update_server_unknown_updates_total', 'Requests naming an update the server does not hold.', 'unknownUpdates');
    stat('fleet_update_server_upload_chunks_total', 'Upload chunks received from publishers.', 'uploadChunks');
    stat('fleet_update_server_uploads_total', 'Uploads stored whole.', 'uploadsStored');
  }

  /** Devices by model, group, digest and state, from the retained statuses. */
  private deviceMetrics(r: Registry): void {
    const statuses = (): Iterable<DeviceStatus> => this.statuses.values();
    new Gauge({
      name: 'fleet_broker_devices',
      help: 'Devices by model, group, running digest and state (retained statuses).',
      labelNames: ['model', 'group', 'digest', 'state'],
      registers: [r],
      collect() {
        this.reset();
        for (const s of statuses()) this.inc({ model: s.model, group: s.group, digest: s.running, state: s.state });
      },
    });
  }

  /** Counts messages in (publish events) and out (authorizeForward), and keeps retained statuses; undone by close. */
  private countMessages(): void {
    const { aedes, topics } = this.o;
    const kind = (topic: string): string => topics.parse(topic)?.kind ?? 'other';
    const onPublish = (packet: { topic: string; payload: Buffer | string; retain?: boolean }, client: unknown): void => {
      if (client) this.msgIn.inc({ kind: kind(packet.topic) });
      const p = topics.parse(packet.topic);
      if (p?.kind === 'status' && packet.retain) {
        this.seenLive.add(p.deviceId);
        this.status(p.deviceId, typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload);
      }
    };
    aedes.on('publish', onPublish);
    this.offs.push(() => aedes.removeListener('publish', onPublish));
    const forward = aedes.authorizeForward;
    aedes.authorizeForward = (client, packet) => {
      const out = forward.call(aedes, client, packet);
      if (out && !packet.topic.startsWith('$SYS')) this.msgOut.inc({ kind: kind(packet.topic) });
      return out;
    };
    this.offs.push(() => {
      aedes.authorizeForward = forward;
    });
  }

  /** Counts a client socket's bytes (call for every accepted socket). */
  trackSocket(s: net.Socket): void {
    this.sockets.add(s);
    s.once('close', () => {
      this.closedOut += s.bytesWritten;
      this.closedIn += s.bytesRead;
      this.sockets.delete(s);
    });
  }

  /** Reads the retained statuses the persistence holds (after a restart they come from disk, not from publishes). */
  async loadRetained(): Promise<void> {
    const persistence = (this.o.aedes as unknown as { persistence: { createRetainedStream(pattern: string): AsyncIterable<{ topic: string; payload: Buffer }> } }).persistence;
    const stream = persistence.createRetainedStream(this.o.topics.allStatuses());
    for await (const packet of stream) {
      const p = this.o.topics.parse(packet.topic);
      if (p?.kind === 'status' && !this.seenLive.has(p.deviceId)) this.status(p.deviceId, packet.payload);
    }
  }

  private status(device: string, payload: Uint8Array): void {
    const s = payload.byteLength ? parseStatus(payload) : null;
    if (s && s.device === device) this.statuses.set(device, s);
    else if (!payload.byteLength) this.statuses.delete(device); // cleared
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  close(): void {
    for (const off of this.offs.splice(0)) off();
    this.registry.clear();
  }
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|\[::1\]|::1)$/i;

/**
 * `GET /metrics` on node:http, and with `page` whatever it serves (the dashboard
 * page and its script, operator/dashboard-live.ts). On a loopback address, only
 * requests naming a loopback host are answered (DNS rebinding).
 */
export async function serveMetrics(m: BrokerMetrics, o: { port: number; host?: string; log: Logger; page?: PageHandler }): Promise<{ url: string; port: number; close(): Promise<void> }> {
  const host = o.host ?? '127.0.0.1';
  const loopback = LOOPBACK.test(host);
  const server = http.createServer((req, res) => {
    const name = (req.headers.host ?? '').replace(/:\d+$/, '');
    if (loopback && !LOOPBACK.test(name)) {
      res.writeHead(421, { 'content-type': 'text/plain' });
      res.end('metrics answer only to a loopback host name\n');
      return;
    }
    const path = new URL(req.url ?? '/', 'http://metrics.invalid').pathname;
    const read = req.method === 'GET' || req.method === 'HEAD';
    if (read && o.page?.(req, res, path)) return;
    if (!read || path !== '/metrics') {
      res.writeHead(read ? 404 : 405, { 'content-type': 'text/plain' });
      res.end(o.page ? 'GET / (dashboard), GET /metrics\n' : 'GET /metrics\n');
      return;
    }
    m.text().then(
      (body) => {
        res.writeHead(200, { 'content-type': m.registry.contentType, 'cache-control': 'no-store' });
        res.end(body);
      },
      (e: unknown) => {
        o.log.error('metrics failed', { error: String(e) });
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('metrics failed\n');
      },
    );
  });
  const port = await listen(server, o.port, host);
  const local = connectableHost(host);
  const shown = local.includes(':') ? `[${local}]` : local;
  return {
    url: `http://${shown}:${port}/metrics`,
    port,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}
