import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createRangeServer, fetchWithResume, parseRange, type RangeServerStats } from '../../simulations/http-range.ts';
import { LinkProxy } from '../../simulations/link-proxy.ts';

describe('parseRange', () => {
  it('serves single byte ranges, suffixes and open ends; refuses what starts past the end', () => {
    expect(parseRange(undefined, 100)).toEqual({ status: 200, start: 0, end: 99 });
    expect(parseRange('bytes=10-19', 100)).toEqual({ status: 206, start: 10, end: 19 });
    expect(parseRange('bytes=90-', 100)).toEqual({ status: 206, start: 90, end: 99 });
    expect(parseRange('bytes=90-500', 100)).toEqual({ status: 206, start: 90, end: 99 });
    expect(parseRange('bytes=-10', 100)).toEqual({ status: 206, start: 90, end: 99 });
    expect(parseRange('bytes=-500', 100)).toEqual({ status: 206, start: 0, end: 99 });
    expect(parseRange('bytes=100-', 100)).toEqual({ status: 416 });
    expect(parseRange('bytes=-0', 100)).toEqual({ status: 416 });
    // What it does not serve, it ignores (the whole file), as RFC 9110 allows.
    expect(parseRange('bytes=0-1,5-6', 100)).toEqual({ status: 200, start: 0, end: 99 });
    expect(parseRange('bytes=20-10', 100)).toEqual({ status: 200, start: 0, end: 99 });
    expect(parseRange('items=0-1', 100)).toEqual({ status: 200, start: 0, end: 99 });
    expect(parseRange('bytes=99999999999999999-', 100)).toEqual({ status: 416 });
  });
});

describe('the HTTP range server and the resuming client (loopback)', () => {
  let dir = '';
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  async function serve(bytes: Buffer): Promise<{ port: number; stats: RangeServerStats }> {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'http-range-'));
    const file = path.join(dir, 'payload');
    await fs.writeFile(file, bytes);
    const { server, stats } = createRangeServer(file, bytes.length);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise<void>((r) => server.close(() => r())));
    server.on('connection', (s) => closers.push(async () => void s.destroy()));
    return { port: (server.address() as AddressInfo).port, stats };
  }

  function get(port: number, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
    return new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: '/payload', headers, agent: false }, (res) => {
          const parts: Buffer[] = [];
          res.on('data', (d: Buffer) => parts.push(d));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
        })
        .on('error', reject);
    });
  }

  it('answers 206 with Content-Range for a range, 200 for the whole file, 416 past the end', async () => {
    const bytes = randomBytes(5000);
    const { port } = await serve(bytes);
    const part = await get(port, { range: 'bytes=1000-1999' });
    expect(part.status).toBe(206);
    expect(part.headers['content-range']).toBe('bytes 1000-1999/5000');
    expect(part.body.equals(bytes.subarray(1000, 2000))).toBe(true);
    const whole = await get(port, {});
    expect(whole.status).toBe(200);
    expect(whole.body.equals(bytes)).toBe(true);
    const past = await get(port, { range: 'bytes=5000-' });
    expect(past.status).toBe(416);
    expect(past.headers['content-range']).toBe('bytes */5000');
  });

  it('the curl loop resumes after the link is taken down mid-transfer and ends with the exact bytes', async () => {
    const bytes = randomBytes(200_000);
    const { port, stats } = await serve(bytes);
    const proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: port, bytesPerSecond: 100_000 });
    await proxy.start();
    closers.push(() => proxy.stop());
    const outFile = path.join(dir, 'out');
    const cut = (async () => {
      while ((await fs.stat(outFile).catch(() => ({ size: 0 }))).size < 50_000) await new Promise((r) => setTimeout(r, 20));
      proxy.takeDown();
      await new Promise((r) => setTimeout(r, 300));
      proxy.restore();
    })();
    const r = await fetchWithResume({
      spawn: (cmd, args) => spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }),
      url: `http://127.0.0.1:${proxy.port}/payload`,
      outFile,
      size: bytes.length,
      idleSeconds: 10,
      retryMs: 200,
      deadlineMs: 60_000,
    });
    await cut;
    expect(r).toMatchObject({ ok: true, bytes: bytes.length });
    expect(r.attempts).toBeGreaterThanOrEqual(2);
    expect((await fs.readFile(outFile)).equals(bytes)).toBe(true);
    // It resumed: every request after the first asked for the rest only, from where the file ended.
    expect(stats.ranges[0]).toBe('');
    const resumes = stats.ranges.slice(1).map((h) => Number(/^bytes=(\d+)-$/.exec(h)?.[1]));
    expect(resumes.length).toBeGreaterThanOrEqual(1);
    expect(Math.max(...resumes)).toBeGreaterThanOrEqual(50_000);
  }, 90_000);
});
