import { describe, expect, it } from 'vitest';
import { parseSs, pinnedOf, senderPinned, senderSampler, type SenderSample, type SsConnection } from '../../simulations/sender-pacing.ts';

// `ss -tin state established dst 10.77.0.2` in the server namespace of a ten-device run at 20 % loss
// (2026-12-07; info lines cut short): a connection pinned at 11.7 kbit/s with 76,744 bytes queued, one
// with nothing queued, and one whose estimate is the link's. The last two are made up: a cubic
// connection (no BBR estimate) and ss's older unit form (`bw:1.5Mbps`).
const SS = `Recv-Q Send-Q Local Address:Port  Peer Address:Port Process
0      76744      10.77.0.1:32541    10.77.0.2:33458
\t bbr wscale:10,10 rto:1676 rtt:213.814/308.262 ato:40 mss:1448 cwnd:2 ssthresh:8 bytes_acked:95622 bbr:(bw:11736bps,mrtt:0.065,pacing_gain:1,cwnd_gain:1) send 108356bps pacing_rate 11616bps notsent:70952
0      0          10.77.0.1:32541    10.77.0.2:53898
\t bbr wscale:10,10 rto:792 rtt:439.399/43.13 ato:40 mss:1448 cwnd:7 bbr:(bw:251826024bps,mrtt:0.046,pacing_gain:1,cwnd_gain:2) send 184543bps
0      30313      10.77.0.1:32541    10.77.0.2:53894
\t bbr wscale:10,10 rto:1540 rtt:556.346/174.039 mss:1448 cwnd:5 bbr:(bw:146376bps,mrtt:0.023,pacing_gain:1,cwnd_gain:2) send 104108bps
0      4000       10.77.0.1:32542    10.77.0.2:40100
\t cubic wscale:10,10 rto:204 rtt:3.1/1.5 mss:1448 cwnd:10 send 37367bps
0      9000       [::ffff:10.77.0.1]:32541    [::ffff:10.77.0.2]:40200
\t bbr wscale:7,7 rto:204 bbr:(bw:1.5Mbps,mrtt:0.1,pacing_gain:2.88672,cwnd_gain:2.88672)
`;

const conn = (peer: string, sendQ: number, bbrBwBps: number | null, localPort = 1883): SsConnection => ({ localPort, peer, sendQ, bbrBwBps });

describe('the server side’s TCP senders in a simulation (ss -tin)', () => {
  it('reads each connection’s queue, ends and BBR estimate from ss’s output', () => {
    expect(parseSs(SS)).toEqual([
      { localPort: 32541, peer: '10.77.0.2:33458', sendQ: 76744, bbrBwBps: 11736 },
      { localPort: 32541, peer: '10.77.0.2:53898', sendQ: 0, bbrBwBps: 251826024 },
      { localPort: 32541, peer: '10.77.0.2:53894', sendQ: 30313, bbrBwBps: 146376 },
      { localPort: 32542, peer: '10.77.0.2:40100', sendQ: 4000, bbrBwBps: null },
      { localPort: 32541, peer: '[::ffff:10.77.0.2]:40200', sendQ: 9000, bbrBwBps: 1500000 },
    ]);
    expect(parseSs('')).toEqual([]);
    expect(parseSs('Recv-Q Send-Q Local Address:Port  Peer Address:Port Process\n')).toEqual([]);
  });

  it('an estimate on an unindented line is not taken for the connection above it', () => {
    expect(parseSs('0 10 10.77.0.1:1883 10.77.0.2:5000\nbbr:(bw:1000bps,mrtt:1)\n')).toEqual([conn('10.77.0.2:5000', 10, null)]);
  });

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
