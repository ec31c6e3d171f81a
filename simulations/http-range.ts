/**
 * The HTTP baseline of `sim:fleet --compare-http`: what most update systems do, a static
 * file served with Range support and fetched by a client that resumes (`curl -C -` in a loop).
 *
 * - `parseRange` / `createRangeServer`: Node's own HTTP server, one file, single byte ranges
 *   (`bytes=a-b`, `bytes=a-`, `bytes=-n`), 206 with Content-Range, 416 when unsatisfiable,
 *   200 for the whole file. Multi-range requests get the whole file (RFC 9110 §14.2 allows it).
 * - `fetchWithResume`: the curl loop. Each attempt resumes from the bytes on disk; an attempt
 *   that receives nothing for `idleSeconds` is ended by curl (`--speed-limit 1 --speed-time`)
 *   and the loop tries again after `retryMs`, like an update agent's retry.
 *
 * Run as a script, it serves a file until killed: `http-range.ts FILE HOST PORT` (prints "ready").
 */
import type { ChildProcess } from 'node:child_process';
import { createReadStream, promises as fs } from 'node:fs';
import http from 'node:http';

export type RangeAnswer = { status: 200; start: 0; end: number } | { status: 206; start: number; end: number } | { status: 416 };

/** What to send for a Range header against a file of `size` bytes (end inclusive). */
export function parseRange(header: string | undefined, size: number): RangeAnswer {
  const whole = { status: 200 as const, start: 0 as const, end: size - 1 };
  if (header === undefined) return whole;
  const m = /^bytes=(\d{0,20})-(\d{0,20})$/.exec(header.trim());
  if (!m) return whole; // a syntax we do not serve (multi-range, other units): the whole file
  const [a, b] = [m[1], m[2]];
  if (a === '' && b === '') return whole;
  let start: number;
  let end: number;
  if (a === '') {
    const n = Number(b);
    if (n === 0) return { status: 416 };
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
    if (b !== '' && Number(b) < start) return whole; // invalid range: ignore the header
  }
  if (start >= size) return { status: 416 };
  return { status: 206, start, end };
}

export interface RangeServerStats {
  requests: number;
  bytesSent: number;
  /** The Range header of each request ('' for none), the last 100. */
  ranges: string[];
}

/** An HTTP server for one file at `/payload` (GET and HEAD). */
export function createRangeServer(file: string, size: number): { server: http.Server; stats: RangeServerStats } {
  const stats: RangeServerStats = { requests: 0, bytesSent: 0, ranges: [] };
  const server = http.createServer((req, res) => {
    stats.requests++;
    stats.ranges.push(String(req.headers.range ?? '').slice(0, 100));
    if (stats.ranges.length > 100) stats.ranges.shift();
    req.socket.setNoDelay(true);
    if (req.url !== '/payload' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-length': '0' }).end();
      return;
    }
    const r = parseRange(req.headers.range, size);
    if (r.status === 416) {
      res.writeHead(416, { 'content-range': `bytes */${size}`, 'content-length': '0' }).end();
      return;
    }
    const headers: Record<string, string> = { 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream', 'content-length': String(r.end - r.start + 1) };
    if (r.status === 206) headers['content-range'] = `bytes ${r.start}-${r.end}/${size}`;
    res.writeHead(r.status, headers);
    if (req.method === 'HEAD' || size === 0) {
      res.end();
      return;
    }
    const stream = createReadStream(file, { start: r.start, end: r.end });
    stream.on('data', (c) => (stats.bytesSent += c.length));
    stream.on('error', () => res.destroy());
    res.on('close', () => stream.destroy());
    stream.pipe(res);
  });
  server.on('clientError', (_e, socket) => socket.destroy());
  return { server, stats };
}

/** Starts a child process; the caller's `exec` decides where (a namespace, or this host). */
export type Spawner = (cmd: string, args: string[]) => ChildProcess;

export interface ResumeOptions {
  spawn: Spawner;
  url: string;
  outFile: string;
  size: number;
  /** An attempt that receives nothing for this long ends (curl --speed-time). */
  idleSeconds: number;
  /** Pause between attempts. */
  retryMs: number;
  /** Give up after this long. */
  deadlineMs: number;
}

export interface ResumeResult {
  ok: boolean;
  attempts: number;
  bytes: number;
  ms: number;
}

/** The curl loop: `curl -C -` until the file has `size` bytes. */
export async function fetchWithResume(o: ResumeOptions): Promise<ResumeResult> {
  const t0 = Date.now();
  let attempts = 0;
  const have = async (): Promise<number> => (await fs.stat(o.outFile).catch(() => ({ size: 0 }))).size;
  while ((await have()) < o.size && Date.now() - t0 < o.deadlineMs) {
    attempts++;
    const args = ['-sS', '-C', '-', '--connect-timeout', String(o.idleSeconds), '--speed-limit', '1', '--speed-time', String(o.idleSeconds), '-o', o.outFile, o.url];
    const child = o.spawn('curl', args);
    child.stdout?.resume();
    child.stderr?.resume();
    const left = o.deadlineMs - (Date.now() - t0);
    const timer = setTimeout(() => child.pid !== undefined && process.kill(child.pid, 'SIGKILL'), Math.max(0, left));
    const code = await new Promise<number | null>((r) => {
      child.once('exit', r);
      child.once('error', () => r(-1));
    });
    clearTimeout(timer);
    if (code !== 0 && (await have()) < o.size) await new Promise((r) => setTimeout(r, o.retryMs));
  }
  const bytes = await have();
  return { ok: bytes === o.size, attempts, bytes, ms: Date.now() - t0 };
}

async function main(): Promise<void> {
  const [file, host, port] = process.argv.slice(2);
  if (!file || !host || !port) {
    process.stderr.write('usage: http-range.ts FILE HOST PORT\n');
    process.exit(2);
  }
  const size = (await fs.stat(file)).size;
  const { server } = createRangeServer(file, size);
  server.listen(Number(port), host, () => process.stdout.write('ready\n'));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
