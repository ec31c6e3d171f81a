import { describe, expect, it } from 'vitest';
import type { SsConnection } from '../../platform/tcp-senders.ts';
import { pinnedOf, senderPinned, senderSampler, type SenderSample } from '../../simulations/sender-pacing.ts';
import { SS } from '../support/ss-sample.ts';

const conn = (peer: string, sendQ: number, bbrBwBps: number | null, localPort = 1883): SsConnection => ({ localPort, peer, peerAddress: peer, peerPort: 0, sendQ, bbrBwBps, pacingGain: bbrBwBps === null ? null : 1 });

describe('the server side’s TCP senders in a simulation (ss -tin)', () => {
  it('counts the time a connection with bytes queued sat at or below an eighth of the link, and its longest stretch', () => {
    // 512 kbit/s: pinned at or below 64 kbit/s. Peer a: pinned for three 1-s spans, a break, then one more.
    const samples: SenderSample[] = [
      { t: 0, connections: [conn('a', 5000, 11_736), conn('b', 5000, 400_000)] },
      { t: 1000, connections: [conn('a', 5000, 11_736), conn('b', 0, 10_000)] },
      { t: 2000, connections: [conn('a', 5000, 64_000), conn('other-port', 5000, 1000, 8080)] },
      { t: 3000, connections: [conn('a', 5000, 300_000)] },
      { t: 4000, connections: [conn('a', 5000, 20_000)] },
      { t: 5000, connections: [conn('a', 0, 20_000)] },
    ];
    expect(senderPinned(samples, { port: 1883, downKbit: 512, everyMs: 1000 })).toEqual({
      belowKbit: 64,
      connections: 2,
      pinnedConnections: 1,
      pinnedSeconds: 4,
      longestPinnedSeconds: 3,
      samples: 6,
    });
  });

  it('a gap between samples counts for at most two intervals (a reading the machine delayed is not all pinned time)', () => {
    const samples: SenderSample[] = [
      { t: 0, connections: [conn('a', 5000, 1000)] },
      { t: 10_000, connections: [conn('a', 5000, 1000)] },
    ];
    expect(senderPinned(samples, { port: 1883, downKbit: 512, everyMs: 1000 })?.pinnedSeconds).toBe(2);
  });

  it('nothing to say without a BBR connection from the port: another congestion control, or no connection', () => {
    const cubic: SenderSample[] = [{ t: 0, connections: [conn('a', 5000, null)] }];
    expect(senderPinned(cubic, { port: 1883, downKbit: 512, everyMs: 1000 })).toBeNull();
    expect(senderPinned([{ t: 0, connections: [conn('a', 5000, 1000, 9999)] }], { port: 1883, downKbit: 512, everyMs: 1000 })).toBeNull();
    expect(senderPinned([], { port: 1883, downKbit: 512, everyMs: 1000 })).toBeNull();
  });

  it('a sampler reads the link’s ss output through the run, and what it took gives the figures', async () => {
    let reads = 0;
    const sampler = senderSampler({ senderTcpInfo: async () => (reads++, SS) });
    sampler.start();
    await new Promise((r) => setTimeout(r, 2600));
    await sampler.stop();
    expect(reads).toBeGreaterThanOrEqual(2);
    const figures = pinnedOf(sampler, 32541, 512);
    // Peer 33458 is pinned in every sample (11.7 kbit/s, bytes queued); 53894 is not (146 kbit/s > 64).
    expect(figures).toMatchObject({ connections: 4, pinnedConnections: 1, samples: reads });
    expect(figures!.pinnedSeconds).toBeGreaterThanOrEqual(1);
  });
});
