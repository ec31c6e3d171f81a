import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { stopChild } from '../../platform/child-process.ts';
import { Bitmap } from '../../protocol/chunks.ts';
import { decodeRequest } from '../../protocol/frames.ts';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { connect, createFixture, currentDigest, MODEL, publish, spawnDevice, StatusWatch, topics, type Fixture, MEDIUM_LAYERS } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
let proxy: LinkProxy | undefined;
const own = ownAfterEach();

/** Every chunk index each device asked for, in order, as the broker saw it. */
async function recordRequests(fx: Fixture): Promise<Array<{ device: string; at: number; want: number[] }>> {
  const seen: Array<{ device: string; at: number; want: number[] }> = [];
  const t = await connect(fx, 'request-recorder');
  t.onMessage((topic, payload) => {
    const p = topics.parse(topic);
    if (p?.kind === 'request') seen.push({ device: p.deviceId, at: Date.now(), want: decodeRequest(payload).want });
  });
  await t.subscribe(topics.allRequests(), 1);
  return seen;
}

/** What the broker saw of one client, in order: its connects, its subscribes to `frames`, its chunk requests. */
function recordBrokerOrder(fx: Fixture, clientId: string, frames: string): string[] {
  const seen: string[] = [];
  const aedes = fx.broker!.aedes;
  aedes.on('client', (c) => c.id === clientId && seen.push('connect'));
  aedes.on('subscribe', (subs, c) => c.id === clientId && subs.some((s) => s.topic === frames) && seen.push('frames-subscribe'));
  aedes.on('publish', (packet, c) => c?.id === clientId && topics.parse(packet.topic)?.kind === 'request' && seen.push('request'));
  return seen;
}

async function heldOnDisk(fx: Fixture, device: string, updateId: string, chunks: number): Promise<Set<number>> {
  const bytes = await fs.readFile(path.join(fx.dir, device, 'downloads', updateId, 'bitmap'));
  const b = new Bitmap(chunks, new Uint8Array(bytes));
  return new Set(Array.from({ length: chunks }, (_, i) => i).filter((i) => b.has(i)));
}

describe('transfers resume where they stopped', () => {
  it('after the link drops mid-transfer: reconnects and asks only for what it lacks', async () => {
    f = own(await createFixture('cut', { layers: MEDIUM_LAYERS, rank: 16 }));
    proxy = own(new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 24_000 }));
    await proxy.start();
    const requests = await recordRequests(f);
    const order = recordBrokerOrder(f, 'fleet-device-cut-1', topics.framesFor(MODEL, 'cut-1'));
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'cut-1', [], proxy.url);
    await watch.until('cut-1', (s) => s.state === 'idle');
    const r = await publish(f);
    const chunks = r.release.steps[0].chunks;
    expect(chunks).toBeGreaterThan(50);
    await watch.until('cut-1', (s) => s.state === 'downloading' && s.progress >= 0.3);
    proxy.takeDown();
    const held = await heldOnDisk(f, 'cut-1', r.updateId, chunks);
    const cutAt = Date.now();
    // An outage of the link, not a wait for anything: the transfer stays cut for a moment.
    await new Promise((res) => setTimeout(res, 1500));
    proxy.restore();
    const s = await watch.until('cut-1', (s) => s.state === 'ok', 60_000);
    expect(s.running).toBe(f.update.targetDigest);
    expect(await currentDigest(f, 'cut-1')).toBe(f.update.targetDigest);
    expect(held.size).toBeGreaterThan(0);
    expect(proxy.connections).toBeGreaterThanOrEqual(2);
    const askedAfter = requests.filter((q) => q.device === 'cut-1' && q.at > cutAt).flatMap((q) => q.want);
    expect(askedAfter.length).toBeGreaterThan(0);
    expect(askedAfter.filter((i) => held.has(i))).toEqual([]);
    // On the connection after the outage, the first request comes after the frames subscription is
    // back: an answer to a request the broker had before it would have had no subscriber.
    const afterCut = order.slice(order.lastIndexOf('connect'));
    expect(afterCut.indexOf('request'), afterCut.join(' ')).toBeGreaterThan(afterCut.indexOf('frames-subscribe'));
    expect(afterCut.indexOf('frames-subscribe'), afterCut.join(' ')).toBeGreaterThan(0);
  });

  it('after the agent is killed (SIGKILL) mid-transfer: restarts from the bitmap on disk', async () => {
    f = own(await createFixture('kill', { layers: MEDIUM_LAYERS, rank: 16 }));
    proxy = own(new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 24_000 }));
    await proxy.start();
    const requests = await recordRequests(f);
    const watch = await StatusWatch.start(f);
    const first = spawnDevice(f, 'kill-1', [], proxy.url);
    await watch.until('kill-1', (s) => s.state === 'idle');
    const r = await publish(f);
    const chunks = r.release.steps[0].chunks;
    await watch.until('kill-1', (s) => s.state === 'downloading' && s.progress >= 0.3);
    const exited = new Promise((res) => first.once('exit', res));
    process.kill(first.pid!, 'SIGKILL');
    await exited;
    const killedAt = Date.now();
    const held = await heldOnDisk(f, 'kill-1', r.updateId, chunks);
    expect(held.size).toBeGreaterThanOrEqual(Math.floor(chunks * 0.3));
    expect(held.size).toBeLessThan(chunks);
    spawnDevice(f, 'kill-1', [], proxy.url);
    const s = await watch.until('kill-1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest, 60_000);
    expect(s.running).toBe(f.update.targetDigest);
    const askedAfter = requests.filter((q) => q.device === 'kill-1' && q.at > killedAt).flatMap((q) => q.want);
    expect(askedAfter.filter((i) => held.has(i))).toEqual([]);
    // Everything not held was asked for after the restart.
    const missing = Array.from({ length: chunks }, (_, i) => i).filter((i) => !held.has(i));
    expect(missing.every((i) => askedAfter.includes(i))).toBe(true);
    await stopChild(first);
  });
});
