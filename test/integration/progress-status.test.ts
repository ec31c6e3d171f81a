import { describe, expect, it } from 'vitest';
import { DEVICE_DEFAULTS } from '../../device/defaults.ts';
import { OPERATOR_DEFAULTS } from '../../operator/defaults.ts';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { createFixture, publish, spawnDevice, StatusWatch, type Fixture, MEDIUM_LAYERS } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
let proxy: LinkProxy | undefined;
const own = ownAfterEach();

describe('progress statuses while downloading (each costs ~700 B of a narrow uplink)', () => {
  it('one at half the download and one per 30 s, not one per quarter, a second or per 5 %; the states around them are all published', async () => {
    f = own(await createFixture('cadence', { layers: MEDIUM_LAYERS, rank: 16 }));
    // A few seconds of download: long enough that a status a second, per 5 % or per quarter would show.
    proxy = own(new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port, bytesPerSecond: 25_000 }));
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
    // The cadence issue 20 asks for (uplink bytes): at most one status per half of the download and
    // one per 30 s, while a downloading device stays well inside the operators' stale limit.
    const progressStep = 0.5;
    const watchdogMs = 30_000;
    expect(DEVICE_DEFAULTS.watchdogMs).toBeLessThanOrEqual(OPERATOR_DEFAULTS.staleMs / 2);
    // The first (release accepted), one per progressStep short of the end, and one from the watchdog per watchdogMs.
    expect(downloading.length).toBeLessThanOrEqual(1 + Math.ceil(1 / progressStep) - 1 + Math.ceil((seconds * 1000) / watchdogMs));
    for (let k = 2; k < downloading.length; k++) {
      const step = downloading[k].progress - downloading[k - 1].progress;
      const gap = Date.parse(downloading[k].time) - Date.parse(downloading[k - 1].time);
      // Either another progressStep of the download, or the watchdog.
      expect(step >= progressStep - 0.01 || gap >= watchdogMs - 1000, `status ${k}: +${step.toFixed(3)} after ${gap} ms`).toBe(true);
    }
    // The operators still see progress while chunks come: a status part-way, with bytes received.
    expect(downloading.some((s) => s.progress >= progressStep - 0.01 && s.progress < 1)).toBe(true);
    expect(mine.map((s) => s.state)).toEqual(expect.arrayContaining(['downloading', 'verifying', 'ok']));
  }, 180_000);

  it('chunks come and requests go at QoS 0 (protocol.md §1): the device sends no PUBACK per chunk, and the download completes', async () => {
    f = own(await createFixture('frames-qos0'));
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
