/**
 * What the old-board suite runs under a foreign node (foreign-node.ts): a probe (crypto + TCP on
 * loopback) and a real device update with the compiled device bundle. Each returns what it measured.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stopChild } from '../../platform/child-process.ts';
import { type ForeignNode, type ForeignRun, type MemoryPeaks, runForeign, spawnForeign, trackHighWater } from './foreign-node.ts';
import { currentDigest, GROUP, MODEL, publish, StatusWatch, type Fixture } from './harness.ts';
import type { MemoryCap } from './memory-cap.ts';

export const PROBE = fileURLToPath(new URL('./old-board-probe.mjs', import.meta.url));

export interface ProbeResult extends Omit<ForeignRun, 'stdout'> {
  /** What the probe reported (its own view: guest arch, guest RSS). */
  reply: { sha256: string; bytes: number; arch: string; version: string; rss: number; heapUsed: number; ms: number };
  /** SHA-256 of the bytes this process sent, to compare with reply.sha256. */
  sentSha256: string;
}

/**
 * Serves `bytes` random bytes (length-prefixed) on a loopback port, runs `node old-board-probe.mjs PORT`
 * with the foreign node and returns its answer. The server is closed before this returns.
 */
export async function runProbe(node: ForeignNode, o: { cap?: MemoryCap; bytes?: number; timeoutMs?: number } = {}): Promise<ProbeResult> {
  const data = randomBytes(o.bytes ?? 4 << 20);
  const sentSha256 = createHash('sha256').update(data).digest('hex');
  let replyText = '';
  const server = net.createServer((s) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    s.write(len);
    s.write(data);
    s.on('data', (b: Buffer) => {
      if (replyText.length < 64 * 1024) replyText += b.toString('utf8');
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  try {
    const port = (server.address() as net.AddressInfo).port;
    const r = await runForeign(node, [PROBE, String(port)], { cap: o.cap, timeoutMs: o.timeoutMs ?? 300_000 });
    let reply: ProbeResult['reply'];
    try {
      reply = JSON.parse(replyText.trim());
    } catch {
      throw new Error(`the probe under ${node.label} sent no JSON line (exit ${r.code ?? r.signal}, oom kills ${r.oomKills}): ${r.stderr.slice(-2000)}`);
    }
    const { stdout: _, ...run } = r;
    return { ...run, reply, sentSha256 };
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
}

/** The arguments after the bundle: the same device flags as harness spawnDevice gives `fleet device`. */
export function deviceArgs(f: Fixture, id: string): string[] {
  return ['device', '--id', id, '--model', MODEL, '--group', GROUP, '--dir', path.join(f.dir, id), '--trust', f.trustFile, '--broker', f.url, '--initial', f.baseFile, '--idle-ms', '1000'];
}

/** Memory figures as MemoryPeaks: under qemu the host view includes the translator; the cgroup peak includes the model files' page cache. */
export interface DeviceUpdateResult extends MemoryPeaks {
  /** Start of the process to its first `idle` status (connected, provisioned). */
  idleMs: number;
  /** Publish to the `ok` status on the target digest. */
  updateMs: number;
  /** Update payload bytes the device reports holding. */
  bytes: number;
  /** What the device's MQTT socket carried since it started (its own counters), when it reports them. */
  wire: { bytesIn: number; bytesOut: number } | null;
  running: string;
  diskDigest: string;
}

/**
 * `node BUNDLE device …` under the foreign node against the fixture's in-process broker: waits for
 * idle, publishes the fixture's update, waits for `ok` on the target digest. The device process is
 * stopped by PID (f.close() stops it too); its output is in f.dir/ID.log.
 */
export async function runDeviceUpdate(f: Fixture, node: ForeignNode, bundle: string, o: { id: string; cap?: MemoryCap; idleTimeoutMs?: number; updateTimeoutMs?: number }): Promise<DeviceUpdateResult> {
  const watch = await StatusWatch.start(f);
  const t0 = performance.now();
  const child = spawnForeign(node, [bundle, ...deviceArgs(f, o.id)], { cap: o.cap });
  f.children.push(child);
  const hwm = trackHighWater(child.pid!);
  const anon = o.cap?.trackAnon();
  const log = createWriteStream(path.join(f.dir, `${o.id}.log`), { flags: 'a' });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  const exited = new Promise<never>((_, reject) => child.once('exit', (c, s) => reject(new Error(`the device under ${node.label} exited (${c ?? s}) before it was done; see ${path.join(f.dir, `${o.id}.log`)}`))));
  exited.catch(() => {});
  try {
    await Promise.race([watch.until(o.id, (s) => s.state === 'idle', o.idleTimeoutMs ?? 180_000), exited]);
    const idleMs = performance.now() - t0;
    const t1 = performance.now();
    await publish(f);
    const s = await Promise.race([watch.until(o.id, (s) => s.state === 'ok' && s.running === f.update.targetDigest, o.updateTimeoutMs ?? 300_000), exited]);
    const updateMs = performance.now() - t1;
    const diskDigest = await currentDigest(f, o.id);
    const cgroupPeakBytes = o.cap ? await o.cap.peakBytes() : null;
    await stopChild(child, 10_000);
    return {
      idleMs,
      updateMs,
      bytes: s.bytes,
      wire: s.wire && { bytesIn: s.wire.bytesIn, bytesOut: s.wire.bytesOut },
      running: s.running,
      diskDigest,
      hwmBytes: hwm.stop(),
      anonPeakBytes: hwm.anonPeak(),
      cgroupPeakBytes,
      cgroupAnonPeakBytes: anon?.stop() ?? null,
      oomKills: o.cap ? await o.cap.oomKills() : 0,
    };
  } finally {
    hwm.stop();
    anon?.stop();
    await stopChild(child, 10_000);
  }
}
