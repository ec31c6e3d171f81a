import { afterEach, describe, expect, it } from 'vitest';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { createFixture, publish, spawnDevice, StatusWatch, type Fixture, MEDIUM_LAYERS } from '../support/harness.ts';

let f: Fixture | undefined;
let proxy: LinkProxy | undefined;
afterEach(async () => {
  await proxy?.stop();
  await f?.close();
  f = undefined;
  proxy = undefined;
});

describe('progress statuses while downloading (each costs ~700 B of a narrow uplink)', () => {
  it('one per quarter of the download, not one a second or per 5 %; the states around them are all published', async () => {
    f = await createFixture('cadence', { layers: MEDIUM_LAYERS, rank: 16 });
    // A few seconds of download: long enough that a status a second, or one per 5 %, would show.
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 25_000 });
    await proxy.start();
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'cad-1', [], proxy.url);
    await watch.until('cad-1', (s) => s.state === 'idle');
    const from = watch.history.length;
    await publish(f);
    const done = await watch.until('cad-1', (s) => s.state === 'ok', 120_000);
    expect(done.progress).toBe(1);
    const mine = watch.history.slice(from).filter((s) => s.device === 'cad-1');
    const downloading = mine.filter((s) => s.state === 'downloading');
    const seconds = (Date.parse(mine.at(-1)!.time) - Date.parse(downloading[0].time)) / 1000;
    console.log(`${downloading.length} downloading statuses over ${seconds.toFixed(1)} s: ${downloading.map((s) => s.progress.toFixed(2)).join(' ')}`);
    expect(seconds).toBeGreaterThan(2);
    // The first (release accepted), three quarters, and one from the 10 s watchdog per 10 s.
    expect(downloading.length).toBeLessThanOrEqual(4 + Math.ceil(seconds / 10));
    for (let k = 2; k < downloading.length; k++) {
      const step = downloading[k].progress - downloading[k - 1].progress;
      const gap = Date.parse(downloading[k].time) - Date.parse(downloading[k - 1].time);
      // Either a quarter of the download, or the watchdog (10 s).
      expect(step >= 0.24 || gap >= 9000, `status ${k}: +${step.toFixed(3)} after ${gap} ms`).toBe(true);
    }
    expect(mine.map((s) => s.state)).toEqual(expect.arrayContaining(['downloading', 'verifying', 'ok']));
  }, 180_000);

  it('chunks come and requests go at QoS 0 (protocol.md §1): the device sends no PUBACK per chunk, and the download completes', async () => {
    f = await createFixture('frames-qos0');
    let acks = 0;
    const delivered: number[] = [];
    const framesQos: number[] = [];
    const requestQos: number[] = [];
    f.broker!.aedes.on('ack', (_packet, client) => {
      if (client?.id.includes('q0-1')) acks++;
    });
    f.broker!.aedes.on('subscribe', (subs, client) => {
      if (client?.id.includes('q0-1')) for (const s of subs) if (s.topic.includes('/to/')) framesQos.push(s.qos);
    });
    f.broker!.aedes.on('publish', (packet) => {
      if (packet.topic.includes('/to/q0-1')) delivered.push(packet.qos);
      if (packet.topic.includes('/get/q0-1')) requestQos.push(packet.qos);
    });
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'q0-1');
    await watch.until('q0-1', (s) => s.state === 'idle');
    await publish(f);
    await watch.until('q0-1', (s) => s.state === 'ok', 120_000);
    // The update server publishes its frames at QoS 1; the device's subscription delivers them at 0.
    expect(framesQos).toEqual([0]);
    // Requests go up at QoS 0 too: after a reconnect the MQTT client does not send old ones again.
    expect(requestQos.length).toBeGreaterThan(0);
    expect(new Set(requestQos)).toEqual(new Set([0]));
    expect(delivered.length).toBeGreaterThan(3);
    // PUBACKs from the device: its release and trust file at most, none per chunk.
    expect(acks).toBeLessThan(delivered.length / 2);
  }, 180_000);
});
