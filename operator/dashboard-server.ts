import { resolveOperatorConfig, type OperatorConfig } from './defaults.ts';
import { UsageError } from '../platform/errors.ts';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../util/log.ts';
import { liveDashboard } from './dashboard-live.ts';
import { dashboardPage } from './dashboard-page.ts';
import type { FleetView, ViewChange } from './fleet-view.ts';
import { METRICS_CONTENT_TYPE, renderMetrics } from './metrics.ts';

/**
 * `fleet dashboard`: node:http only.
 *   GET /              the page (fed by /events; with `live`, by MQTT over WebSocket in the browser)
 *   GET /dashboard.js  with `live`: the page's script (view model + mqtt.js, operator/dashboard-live.ts)
 *   GET /events        Server-Sent Events: `snapshot` (everything), then `device` / `rollout` changes
 *   GET /api/devices   JSON rows (?group=G)
 *   GET /api/rollouts  JSON rows (?group=G)
 *   GET /metrics       Prometheus text
 * Without a view (`live` only) the last four answer 404.
 * Bound to 127.0.0.1 unless told otherwise. On a loopback address, requests
 * must name a loopback host (a DNS-rebinding page cannot read the fleet).
 */

export interface DashboardOptions {
  /** The server-side view (over --broker): /events, /api/*, /metrics. Optional with `live`. */
  view?: FleetView;
  /** The page connects itself to this broker WebSocket listener (`--ws URL`) instead of /events. */
  live?: { wsUrl: string; prefix?: string; staleMs?: number };
  port?: number;
  host?: string;
  log: Logger;
  title?: string;
  /** How often the view's clock-dependent fields are refreshed (ms; 0: never). Default 1000. */
  refreshMs?: number;
  /** SSE keep-alive comment interval (ms). Default 15 000. */
  heartbeatMs?: number;
}

export interface RunningDashboard {
  url: string;
  port: number;
  /** Open SSE streams. */
  clients(): number;
  close(): Promise<void>;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|\[::1\]|::1)$/i;
/** A client that has this much unsent is dropped; its EventSource reconnects and gets a fresh snapshot. */
const MAX_BUFFERED = 4 * 1024 * 1024;

function json(res: http.ServerResponse, body: unknown): void {
  res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

/** GET /events: a snapshot, then each change, with keep-alive comments; a client too slow to read is dropped. */
function serveEvents(o: DashboardOptions, c: OperatorConfig, streams: Set<http.ServerResponse>, view: FleetView, req: http.IncomingMessage, res: http.ServerResponse): void {
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  res.socket?.setNoDelay(true);
  let id = 0;
  const send = (event: string, data: unknown): void => {
    if (res.writableLength > MAX_BUFFERED) {
      o.log.warn('dashboard client too slow; dropped', { remote: req.socket.remoteAddress });
      res.destroy();
      return;
    }
    res.write(`event: ${event}\nid: ${++id}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  res.write('retry: 2000\n\n');
  const s = view.snapshot();
  send('snapshot', { time: s.time, devices: s.devices, rollouts: s.rollouts });
  const off = view.onChange((changes: ViewChange[]) => {
    for (const c of changes) {
      if (c.kind === 'device') send('device', { device: c.device, row: c.row, time: view.now() });
      else send('rollout', { rollout: c.rollout, row: c.row, time: view.now() });
    }
  });
  const beat = setInterval(() => res.write(': keep-alive\n\n'), c.sseHeartbeatMs);
  streams.add(res);
  const done = (): void => {
    off();
    clearInterval(beat);
    streams.delete(res);
  };
  res.on('close', done);
  req.on('close', done);
}

/** GET / : the page with the current snapshot, under a per-response CSP nonce. */
function servePage(o: DashboardOptions, view: FleetView, res: http.ServerResponse): void {
  const nonce = randomBytes(16).toString('base64');
  res.writeHead(200, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'x-frame-options': 'DENY',
    'content-security-policy': `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
  });
  const snap = view.snapshot();
  res.end(dashboardPage({ title: o.title, nonce, initial: { time: snap.time, devices: snap.devices, rollouts: snap.rollouts } }));
}

/** The paths the server-side view answers. */
function serveView(o: DashboardOptions, c: OperatorConfig, streams: Set<http.ServerResponse>, view: FleetView, u: URL, req: http.IncomingMessage, res: http.ServerResponse): void {
  const group = u.searchParams.get('group') ?? undefined;
  switch (u.pathname) {
    case '/':
    case '/index.html':
      return servePage(o, view, res);
    case '/events':
      return serveEvents(o, c, streams, view, req, res);
    case '/api/devices':
      return json(res, view.devices(group));
    case '/api/rollouts':
      return json(res, view.rollouts(group));
    case '/metrics':
      res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE, 'cache-control': 'no-store' });
      res.end(renderMetrics(view.snapshot()));
      return;
    case '/favicon.ico':
      res.writeHead(204);
      res.end();
      return;
    default:
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: try /, /events, /api/devices, /api/rollouts, /metrics\n');
  }
}

/** Answers (and ends) a request no path may serve: a non-loopback Host on a loopback listener, or a method other than GET/HEAD. */
function refused(loopback: boolean, req: http.IncomingMessage, res: http.ServerResponse): boolean {
  if (loopback) {
    const h = (req.headers.host ?? '').replace(/:\d+$/, '');
    if (!LOOPBACK.test(h)) {
      res.writeHead(421, { 'content-type': 'text/plain' });
      res.end('this dashboard only answers to a loopback host name (127.0.0.1, localhost)\n');
      return true;
    }
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' });
    res.end('method not allowed\n');
    return true;
  }
  return false;
}

export async function startDashboard(o: DashboardOptions): Promise<RunningDashboard> {
  // The dashboard's settings, resolved once.
  const c = resolveOperatorConfig({ dashboardPort: o.port, refreshMs: o.refreshMs, sseHeartbeatMs: o.heartbeatMs });
  const host = o.host ?? '127.0.0.1';
  const loopback = LOOPBACK.test(host);
  const streams = new Set<http.ServerResponse>();
  const view = o.view;
  const page = o.live ? liveDashboard({ ...o.live, title: o.title, log: o.log }) : undefined;
  if (!view && !page) throw new UsageError('no-source', 'startDashboard needs a view (--broker) or live (--ws)');

  const server = http.createServer((req, res) => {
    try {
      const u = new URL(req.url ?? '/', 'http://dashboard.invalid');
      res.setHeader('x-content-type-options', 'nosniff');
      res.setHeader('referrer-policy', 'no-referrer');
      if (refused(loopback, req, res)) return;
      if (page?.(req, res, u.pathname)) return;
      if (!view) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found: this dashboard is fed in the browser (MQTT over WebSocket); /events, /api and /metrics need --broker\n');
        return;
      }
      serveView(o, c, streams, view, u, req, res);
    } catch (e) {
      o.log.error('dashboard request failed', { error: (e as Error).message, url: req.url });
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    }
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(c.dashboardPort, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const refreshMs = c.refreshMs;
  const refresh = refreshMs > 0 && view ? setInterval(() => view.refresh(), refreshMs) : undefined;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shownHost}:${port}/`,
    port,
    clients: () => streams.size,
    async close() {
      clearInterval(refresh);
      for (const s of streams) s.end();
      await new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      });
    },
  };
}
