import type { ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { NetnsLink } from '../../simulations/netns-link.ts';

// Root-only: the TUN delay line (simulations/delay-line.py) between two namespaces.
// Bounds are lower bounds only (a loaded machine makes things slower, never faster).
const available = NetnsLink.available();
if (!available.ok) console.warn(`delay-line tests skipped: ${available.reason}`);

const SERVER = `require('net').createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(7777, process.argv[1], () => console.log('ready'))`;
// Connects, measures one 1-byte round trip, then sends N bytes up and reads them back.
const CLIENT = `
const [host, n] = process.argv.slice(1);
const data = require('crypto').randomBytes(Number(n));
const t0 = Date.now();
const s = require('net').connect(7777, host, () => {
  const connectMs = Date.now() - t0; const t1 = Date.now();
  s.write('x');
  s.once('data', () => {
    const rttMs = Date.now() - t1; const t2 = Date.now(); const parts = []; let got = 0;
    s.write(data);
    s.on('data', (d) => { parts.push(d); got += d.length;
      if (got >= data.length) { console.log(JSON.stringify({ connectMs, rttMs, echoMs: Date.now() - t2, ok: Buffer.concat(parts).equals(data) })); process.exit(0); } });
  });
});
s.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(1); });`;

function output(child: ChildProcess, ms: number): Promise<string> {
  return new Promise((resolve) => {
    let out = '';
    child.stdout?.on('data', (d) => (out += String(d)));
    const t = setTimeout(() => child.pid !== undefined && process.kill(child.pid, 'SIGKILL'), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(out);
    });
  });
}

describe.skipIf(!available.ok)('NetnsLink with a delay (TUN delay line, root)', () => {
  let link: NetnsLink | undefined;
  afterEach(async () => {
    await link?.destroy();
    link = undefined;
  });

  it('every round trip takes at least twice the one-way delay, the uplink has its own rate, and bytes arrive intact', async () => {
    link = await NetnsLink.create({ name: 'dl' + Math.random().toString(36).slice(2, 7), delayMs: 120, jitterMs: 10, rateKbit: 1000, rateUpKbit: 128 });
    const srv = link.exec('srv', process.execPath, ['-e', SERVER, link.srvAddress]);
    await new Promise((r) => srv.stdout!.once('data', r));
    const out = await output(link.exec('site', process.execPath, ['-e', CLIENT, link.srvAddress, String(32_000)]), 60_000);
    const v = JSON.parse(out.trim());
    console.log(`delay line 120 ms ± 10, 1000/128 kbit/s: ${out.trim()}`);
    expect(v.ok).toBe(true);
    // Jitter is ±10 ms per packet: a round trip is at least 2 × (120 − 10) ms.
    expect(v.connectMs).toBeGreaterThanOrEqual(220);
    expect(v.rttMs).toBeGreaterThanOrEqual(220);
    // 32 000 bytes up at 128 kbit/s, less tbf's burst of 6160 B, take at least 1.6 s (at the 1000 kbit/s
    // of the downlink they would take 0.26 s).
    expect(v.echoMs).toBeGreaterThanOrEqual(1500);
    const c = await link.counters();
    expect(c.txBytes).toBeGreaterThan(32_000);
    expect(c.rxBytes).toBeGreaterThan(32_000);
  }, 90_000);

  it('cut() stops the delayed link and restore() brings it back; destroy() ends the delay line', async () => {
    const l = (link = await NetnsLink.create({ name: 'dl' + Math.random().toString(36).slice(2, 7), delayMs: 50 }));
    const srv = l.exec('srv', process.execPath, ['-e', SERVER, l.srvAddress]);
    await new Promise((r) => srv.stdout!.once('data', r));
    await l.cut();
    const down = await output(l.exec('site', process.execPath, ['-e', CLIENT, l.srvAddress, '10']), 3000);
    expect(down.includes('"ok":true')).toBe(false);
    await l.restore();
    const up = await output(l.exec('site', process.execPath, ['-e', CLIENT, l.srvAddress, '10']), 20_000);
    expect(JSON.parse(up.trim()).ok).toBe(true);
    await l.destroy();
    link = undefined;
    const { execFileSync } = await import('node:child_process');
    const ps = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' });
    expect(ps).not.toContain(`delay-line.py ${l.srvNs}`);
  }, 60_000);
});
