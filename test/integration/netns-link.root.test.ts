import { execFileSync, type ChildProcess } from 'node:child_process';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NetnsLink } from '../../simulations/netns-link.ts';
import { congestionControls, hostRtoMaxMs, rtoMaxAvailable } from '../../simulations/tcp-sysctls.ts';

// Root-only: builds two network namespaces joined by a veth pair (addresses
// 10.77.0.0/24 exist only inside them) and impairs the link with nft + tc tbf.
const available = NetnsLink.available();
if (!available.ok) console.warn(`netns-link tests skipped: ${available.reason}`);

const PORT = 7777;
const ECHO_SERVER = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
net.createServer((s) => { s.on('error', () => {}); s.pipe(s); })
  .listen(Number(port), host, () => console.log('ready'));
`;
// Sends N random bytes, waits for all of them to come back, prints a JSON verdict.
const ECHO_CLIENT = `
const net = require('node:net');
const crypto = require('node:crypto');
const [host, port, n] = process.argv.slice(1);
const data = crypto.randomBytes(Number(n));
const chunks = []; let got = 0; const t0 = Date.now(); let tConn = 0;
const s = net.connect(Number(port), host, () => { tConn = Date.now() - t0; s.write(data); });
s.on('data', (c) => {
  chunks.push(c); got += c.length;
  if (got >= data.length) {
    const ok = Buffer.concat(chunks).equals(data);
    console.log(JSON.stringify({ ok, got, connectMs: tConn, ms: Date.now() - t0 }));
    s.destroy(); process.exit(ok ? 0 : 1);
  }
});
s.on('error', (e) => { console.log(JSON.stringify({ ok: false, error: e.code || e.message, ms: Date.now() - t0 })); process.exit(2); });
`;

function tag(): string {
  return 'fl' + Math.random().toString(36).slice(2, 8);
}

/** Collects stdout of a child until it exits; kills it by PID after `ms`. */
function finish(child: ChildProcess, ms: number): Promise<{ code: number | null; out: string; err: string; timedOut: boolean }> {
  return new Promise((resolve) => {
    let out = '';
    let err = '';
    let timedOut = false;
    child.stdout?.on('data', (d) => (out += String(d)));
    child.stderr?.on('data', (d) => (err += String(d)));
    const t = setTimeout(() => {
      timedOut = true;
      try {
        if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }, ms);
    child.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code, out, err, timedOut });
    });
  });
}

async function startEchoServer(link: NetnsLink): Promise<ChildProcess> {
  const srv = link.exec('srv', process.execPath, ['-e', ECHO_SERVER, link.srvAddress, String(PORT)]);
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('echo server did not start')), 10_000);
    let buf = '';
    srv.stdout?.on('data', (d) => {
      buf += String(d);
      if (buf.includes('ready')) {
        clearTimeout(t);
        resolve();
      }
    });
    srv.stderr?.on('data', (d) => (buf += String(d)));
    srv.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`echo server exited ${code}: ${buf}`));
    });
  });
  return srv;
}

function echo(link: NetnsLink, bytes: number, timeoutMs: number) {
  const client = link.exec('site', process.execPath, ['-e', ECHO_CLIENT, link.srvAddress, String(PORT), String(bytes)]);
  return finish(client, timeoutMs);
}

// Connects to the echo server, prints the socket's TCP_CONGESTION (Node cannot read it) and holds it open 3 s.
const CC_CLIENT = `
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.getsockopt(socket.IPPROTO_TCP, 13, 16).split(b'\\0')[0].decode(), flush=True)
time.sleep(3)
`;

/** The congestion control of a fresh connection from the site, and of the server's end of it (from `ss -tin`). */
async function congestionSeen(link: NetnsLink): Promise<{ site: string; srv: string }> {
  const client = link.exec('site', 'python3', ['-c', CC_CLIENT, link.srvAddress, String(PORT)]);
  const site = await new Promise<string>((resolve, reject) => {
    let out = '';
    client.stdout?.on('data', (d) => {
      out += String(d);
      if (out.includes('\n')) resolve(out.trim());
    });
    client.once('exit', (code) => reject(new Error(`python client exited ${code}: ${out}`)));
  });
  const ss = execFileSync('ip', ['netns', 'exec', link.srvNs, 'ss', '-tin', 'state', 'established', `sport = :${PORT}`], { encoding: 'utf8' });
  await finish(client, 5_000);
  const srv = ['bbr', 'cubic', 'reno'].find((cc) => new RegExp(`\\s${cc}\\s`).test(ss)) ?? `none in: ${ss}`;
  return { site, srv };
}

// Connects, says so, waits 1 s (the test drops every packet meanwhile), sends 1 KB and holds the socket open.
const SILENT_SENDER = `
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print('up', flush=True)
time.sleep(1)
s.sendall(b'x' * 1000)
time.sleep(30)
`;

/**
 * The retransmission timer of a connection whose every packet is dropped, `waitMs` after the drops
 * began: `ss -tin`'s `rto:` (ms) and `backoff:` (timeouts so far) of the site's end.
 */
async function backedOffTimer(link: NetnsLink, waitMs: number): Promise<{ rtoMs: number; backoff: number }> {
  const client = link.exec('site', 'python3', ['-c', SILENT_SENDER, link.srvAddress, String(PORT)]);
  try {
    await new Promise<void>((resolve, reject) => {
      client.stdout?.on('data', (d) => String(d).includes('up') && resolve());
      client.once('exit', (code) => reject(new Error(`python sender exited ${code}`)));
    });
    await link.setLoss(100);
    await new Promise((r) => setTimeout(r, waitMs));
    const ss = execFileSync('ip', ['netns', 'exec', link.siteNs, 'ss', '-tin', 'state', 'established', `dport = :${PORT}`], { encoding: 'utf8' });
    const rto = /\brto:(\d+(?:\.\d+)?)/.exec(ss);
    const backoff = /\bbackoff:(\d+)/.exec(ss);
    if (!rto) throw new Error(`no rto in: ${ss}`);
    return { rtoMs: Number(rto[1]), backoff: backoff ? Number(backoff[1]) : 0 };
  } finally {
    if (client.pid !== undefined && client.exitCode === null) process.kill(client.pid, 'SIGKILL');
  }
}

function namespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean);
}

describe.skipIf(!available.ok)('NetnsLink (root, network namespaces)', () => {
  let link: NetnsLink | undefined;

  beforeAll(async () => {
    await NetnsLink.cleanupStale();
  });

  afterEach(async () => {
    await link?.destroy();
    link = undefined;
  });

  it('carries a 200 KB TCP echo intact over 20% loss at 2000 kbit/s', async () => {
    link = await NetnsLink.create({ name: tag(), lossPercent: 20, rateKbit: 2000 });
    await startEchoServer(link);
    const before = { site: await link.tcpStats('site'), srv: await link.tcpStats('srv'), veth: await link.counters() };
    const bytes = 200 * 1024;
    const t0 = Date.now();
    const r = await echo(link, bytes, 90_000);
    const elapsed = Date.now() - t0;
    expect(r.timedOut, r.err).toBe(false);
    const verdict = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(verdict).toMatchObject({ ok: true, got: bytes });
    const site = await link.tcpStats('site');
    const srv = await link.tcpStats('srv');
    const veth = await link.counters();
    const drops = await link.drops();
    const retrans = site.retransSegs - before.site.retransSegs + (srv.retransSegs - before.srv.retransSegs);
    const txBytes = veth.txBytes - before.veth.txBytes;
    const rxBytes = veth.rxBytes - before.veth.rxBytes;
    console.log(
      `echo 200 KB @ 20% loss, 2000 kbit: ${verdict.ms} ms in client (connect ${verdict.connectMs} ms), ` +
        `${elapsed} ms wall; retransmits site=${site.retransSegs - before.site.retransSegs} ` +
        `srv=${srv.retransSegs - before.srv.retransSegs}; nft drops srv=${drops.srv} site=${drops.site}; ` +
        `site veth tx=${txBytes} B / ${veth.txPackets - before.veth.txPackets} pkts, rx=${rxBytes} B / ${veth.rxPackets - before.veth.rxPackets} pkts`,
    );
    expect(retrans).toBeGreaterThan(0);
    expect(drops.srv + drops.site).toBeGreaterThan(0);
    // 200 KB at 2000 kbit/s takes ≥ ~0.8 s per direction even without loss.
    expect(verdict.ms).toBeGreaterThan((bytes * 8) / 2000);

    // Same transfer with loss switched off at runtime: the baseline the lossy run must exceed.
    await link.setLoss(0);
    const b0 = { veth: await link.counters(), site: await link.tcpStats('site'), srv: await link.tcpStats('srv') };
    const base = await echo(link, bytes, 30_000);
    expect(JSON.parse(base.out.trim()).ok).toBe(true);
    const b1 = { veth: await link.counters(), site: await link.tcpStats('site'), srv: await link.tcpStats('srv') };
    const baseBytes = b1.veth.txBytes - b0.veth.txBytes + (b1.veth.rxBytes - b0.veth.rxBytes);
    const baseRetrans = b1.site.retransSegs - b0.site.retransSegs + (b1.srv.retransSegs - b0.srv.retransSegs);
    const baseDrops = await link.drops();
    console.log(`baseline (loss 0): ${JSON.parse(base.out.trim()).ms} ms, retransmits ${baseRetrans}, ` + `site veth ${baseBytes} B vs ${txBytes + rxBytes} B with loss`);
    expect(baseDrops).toEqual({ srv: 0, site: 0 });
    expect(retrans).toBeGreaterThan(baseRetrans);
    expect(txBytes + rxBytes).toBeGreaterThan(baseBytes);
  }, 120_000);

  it('cut() makes connects from site to srv fail; restore() makes them work again', async () => {
    link = await NetnsLink.create({ name: tag() });
    await startEchoServer(link);
    const ok1 = await echo(link, 1024, 10_000);
    expect(JSON.parse(ok1.out.trim()).ok).toBe(true);

    await link.cut();
    const t0 = Date.now();
    const down = await echo(link, 1024, 4_000);
    const failed = down.timedOut || JSON.parse(down.out.trim() || '{}').ok !== true;
    console.log(`during cut: ${down.timedOut ? 'timed out' : down.out.trim()} after ${Date.now() - t0} ms`);
    expect(failed).toBe(true);

    await link.restore();
    const ok2 = await echo(link, 1024, 10_000);
    expect(ok2.timedOut, ok2.err).toBe(false);
    expect(JSON.parse(ok2.out.trim()).ok).toBe(true);
  }, 40_000);

  it('congestion: both ends use the congestion control asked for, and still after a cut', async () => {
    const { available: ccs, hostDefault } = congestionControls();
    const other = ['reno', 'cubic', 'bbr'].find((cc) => cc !== hostDefault && ccs.includes(cc));
    expect(other, `a congestion control besides ${hostDefault} (${ccs.join(', ')})`).toBeDefined();
    link = await NetnsLink.create({ name: tag(), congestion: other });
    expect(link.congestion).toBe(other);
    await startEchoServer(link);
    expect(await congestionSeen(link)).toEqual({ site: other, srv: other });
    await link.cut();
    await link.restore();
    expect(await congestionSeen(link)).toEqual({ site: other, srv: other });
    await expect(NetnsLink.create({ name: tag(), congestion: 'nosuchcc' })).rejects.toThrow(/not available here/);
  }, 40_000);

  it.skipIf(!rtoMaxAvailable())(
    'rtoMaxMs caps the retransmission backoff of connections on the link, in its namespaces only',
    async () => {
      const host = hostRtoMaxMs();
      link = await NetnsLink.create({ name: tag() });
      await startEchoServer(link);
      const uncapped = await backedOffTimer(link, 9_000);
      await link.destroy();
      link = await NetnsLink.create({ name: tag(), rtoMaxMs: 1000 });
      for (const ns of [link.srvNs, link.siteNs]) expect(execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-n', 'net.ipv4.tcp_rto_max_ms'], { encoding: 'utf8' }).trim()).toBe('1000');
      await startEchoServer(link);
      // 17 s: past the ~14.4 s after which the kernel's default tcp_retries2 (15) gives a connection up
      // once its backoff is capped at 1 s (the link raises the retries with the cap; without that, ss has no connection).
      const capped = await backedOffTimer(link, 17_000);
      console.log(`after 9 s of drops: uncapped ${JSON.stringify(uncapped)}; after 17 s capped at 1000 ms: ${JSON.stringify(capped)}`);
      // 0.2 s doubled at each timeout: past 1 s after three, and 9 s in it has doubled more.
      expect(uncapped.backoff).toBeGreaterThanOrEqual(3);
      expect(uncapped.rtoMs).toBeGreaterThan(1000);
      expect(capped.backoff).toBeGreaterThanOrEqual(12);
      expect(capped.rtoMs).toBeLessThanOrEqual(1000);
      expect(hostRtoMaxMs()).toBe(host);
      await expect(NetnsLink.create({ name: tag(), rtoMaxMs: 500 })).rejects.toThrow(/1000-120000/);
    },
    90_000,
  );

  it('destroy() kills its processes and removes both namespaces, idempotently', async () => {
    const l = await NetnsLink.create({ name: tag(), lossPercent: 5, rateKbit: 500 });
    link = l;
    expect(namespaces()).toEqual(expect.arrayContaining([l.srvNs, l.siteNs]));
    const srv = await startEchoServer(l);
    const exited = new Promise<void>((resolve) => srv.once('exit', () => resolve()));
    await l.destroy();
    await exited;
    expect(srv.exitCode !== null || srv.signalCode !== null).toBe(true);
    const after = namespaces();
    expect(after).not.toContain(l.srvNs);
    expect(after).not.toContain(l.siteNs);
    await l.destroy();
    // Veth names were only ever inside the namespaces; the host never saw them.
    expect(execFileSync('ip', ['-br', 'link'], { encoding: 'utf8' })).not.toContain(l.siteIf);
  }, 30_000);
});
