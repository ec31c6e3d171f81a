import { describe, expect, it } from 'vitest';
import type { DeviceEnd } from '../../simulations/sim-support.ts';
import { CounterSampler, sumSent } from '../../simulations/uplink.ts';

const end = (sent: DeviceEnd['sent'], before: DeviceEnd['sent'], toDownloaded?: DeviceEnd['sent']): DeviceEnd =>
  ({
    device: 'd',
    state: 'ok',
    running: '',
    reason: null,
    wire: { bytesIn: 0, bytesOut: 0, connects: 1 },
    stats: { duplicateChunks: 0, badChunks: 0 },
    time: 0,
    sent,
    sentBeforeStarted: before,
    sentToDownloaded: toDownloaded,
  }) as DeviceEnd;

describe('the uplink breakdown of a simulation', () => {
  it('sums the devices’ packets by type from their release taken: what they sent while connecting and idle is left out', () => {
    const a = end(
      { subscribe: { packets: 2, bytes: 100 }, 'publish status': { packets: 6, bytes: 3600 }, 'publish request': { packets: 4, bytes: 360 } },
      { subscribe: { packets: 2, bytes: 100 }, 'publish status': { packets: 1, bytes: 500 } },
    );
    const b = end({ 'publish status': { packets: 3, bytes: 1500 }, 'publish request': { packets: 1, bytes: 90 } }, {}, { 'publish status': { packets: 1, bytes: 500 } });
    expect(sumSent([a, b], 'sent')).toEqual({ 'publish status': { packets: 8, bytes: 4600 }, 'publish request': { packets: 5, bytes: 450 } });
    expect(sumSent([b], 'sentToDownloaded')).toEqual({ 'publish status': { packets: 1, bytes: 500 } });
  });

  it('a sampler gives the first reading taken at or after a moment, none when it took none since', async () => {
    let n = 0;
    const s = new CounterSampler(async () => ({ rxBytes: 0, rxPackets: 0, txBytes: ++n, txPackets: 0 }), 20);
    // Waits for readings rather than for a fixed time: a loaded machine may delay the timer.
    const until = async (f: () => boolean): Promise<void> => {
      const deadline = Date.now() + 20_000;
      while (!f() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    };
    const t0 = Date.now();
    s.start();
    await until(() => s.at(t0) !== undefined);
    const mid = Date.now() + 1;
    await until(() => s.at(mid) !== undefined);
    await s.stop();
    const first = s.at(t0)!.txBytes;
    const later = s.at(mid)!.txBytes;
    expect(first).toBe(1);
    expect(later).toBeGreaterThan(first);
    expect(s.at(Date.now() + 1000)).toBeUndefined();
  });
});
