import { resolveOperatorConfig } from './defaults.ts';
import { UsageError } from '../platform/errors.ts';
import { randomBytes } from 'node:crypto';
import type http from 'node:http';
import { gzipSync } from 'node:zlib';
import type { Logger } from '../util/log.ts';
import { dashboardBundle } from './browser/bundle.ts';
import { dashboardPage } from './dashboard-page.ts';

/**
 * The dashboard page in its MQTT-over-WebSocket mode, as a request handler that
 * `fleet broker --http` (operator/broker-metrics.ts serveMetrics) and `fleet
 * dashboard --ws URL` (operator/dashboard-server.ts) mount:
 *   GET /              the page, pointed at the broker's WebSocket listener
 *   GET /dashboard.js  the view model + mqtt.js for the browser (one script, built once, gzip when asked)
 * The browser logs in itself (a `viewer` user: read only); no credential is in
 * what is served. Nothing is fetched from anywhere else.
 */

export interface LiveDashboardOptions {
  /** The broker's WebSocket listener as the browser must reach it (`fleet dashboard --ws URL`). */
  wsUrl?: string;
  /** Or only its port: the page then uses the host name the browser used for the page (`fleet broker --ws-port`). */
  wsPort?: number;
  prefix?: string;
  /** Silent after this (ms; default 60 000). */
  staleMs?: number;
  title?: string;
  log: Logger;
}

/** Handles the request when it is for the page or its script (returns true); leaves anything else to the caller. */
export type PageHandler = (req: http.IncomingMessage, res: http.ServerResponse, pathname: string) => boolean;

const SCRIPT = 'dashboard.js';

/** `ws://host:port` for the page: the configured URL, or the page's own host name with the listener's port. */
export function pageWsUrl(o: Pick<LiveDashboardOptions, 'wsUrl' | 'wsPort'>, hostHeader: string | undefined): string | null {
  if (o.wsUrl) return o.wsUrl;
  if (o.wsPort === undefined) return null;
  const name = (hostHeader ?? '127.0.0.1').replace(/:\d+$/, '') || '127.0.0.1';
  return `ws://${name}:${o.wsPort}`;
}

export function liveDashboard(o: LiveDashboardOptions): PageHandler {
  if (o.wsUrl) {
    const u = new URL(o.wsUrl);
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new UsageError('bad-url', `--ws wants a ws:// or wss:// URL, not ${o.wsUrl}`);
    if (u.username || u.password) throw new UsageError('login-in-url', '--ws must not carry a login: the browser asks for it');
  }
  if (!o.wsUrl && o.wsPort === undefined) o.log.warn('the dashboard page has no broker WebSocket listener to use: start the broker with --ws-port P');
  const staleMs = resolveOperatorConfig({ staleMs: o.staleMs }).staleMs;
  let gz: Buffer | undefined;
  let logged = false;
  return (req, res, pathname) => {
    if (pathname === '/' || pathname === '/index.html') {
      const ws = pageWsUrl(o, req.headers.host);
      const nonce = randomBytes(16).toString('base64');
      const connect = ws ? ` ${new URL(ws).origin}` : '';
      // worker-src blob: mqtt.js keeps its keep-alive timer in a small worker it makes from a blob (timers in background tabs are throttled).
      res.writeHead(200, {
        'content-type': 'text/html; charset=utf-8',
        'cache-control': 'no-store',
        'x-frame-options': 'DENY',
        'referrer-policy': 'no-referrer',
        'content-security-policy': `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'${connect}; worker-src blob:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
      });
      res.end(
        req.method === 'HEAD'
          ? undefined
          : dashboardPage({
              title: o.title,
              nonce,
              live: {
                ws,
                prefix: o.prefix ?? 'fleet',
                staleMs,
                script: SCRIPT,
                problem: ws ? null : 'this broker has no WebSocket listener: start it with --ws-port P (fleet broker --http PORT --ws-port P)',
              },
            }),
      );
      return true;
    }
    if (pathname === `/${SCRIPT}`) {
      dashboardBundle().then(
        (b) => {
          if (!logged) {
            logged = true;
            o.log.info('dashboard script built', { bytes: b.code.length, ms: b.ms });
          }
          const gzip = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
          if (gzip) gz ??= gzipSync(b.code);
          const body = gzip ? gz! : Buffer.from(b.code);
          res.writeHead(200, {
            'content-type': 'text/javascript; charset=utf-8',
            'cache-control': 'no-cache',
            'x-content-type-options': 'nosniff',
            'content-length': body.byteLength,
            vary: 'accept-encoding',
            ...(gzip ? { 'content-encoding': 'gzip' } : {}),
          });
          res.end(req.method === 'HEAD' ? undefined : body);
        },
        (e: unknown) => {
          o.log.error('dashboard script unavailable', { error: (e as Error).message });
          res.writeHead(503, { 'content-type': 'text/plain' });
          res.end(`${(e as Error).message}\n`);
        },
      );
      return true;
    }
    if (pathname === '/favicon.ico') {
      res.writeHead(204);
      res.end();
      return true;
    }
    return false;
  };
}
