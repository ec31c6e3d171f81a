import { describe, expect, it } from 'vitest';
import { parseSs, plainAddress, type SsConnection } from '../../platform/tcp-senders.ts';
import { SS } from '../support/ss-sample.ts';

const row = (localPort: number, peerAddress: string, peerPort: number, sendQ: number, bbrBwBps: number | null, pacingGain: number | null, peer = `${peerAddress}:${peerPort}`): SsConnection => ({
  localPort,
  peer,
  peerAddress,
  peerPort,
  sendQ,
  bbrBwBps,
  pacingGain,
});

describe('a host’s TCP senders from ss -tin', () => {
  it('reads each connection’s queue, ends, BBR estimate and pacing gain', () => {
    expect(parseSs(SS)).toEqual([
      row(32541, '10.77.0.2', 33458, 76744, 11736, 1),
      row(32541, '10.77.0.2', 53898, 0, 251826024, 1),
      row(32541, '10.77.0.2', 53894, 30313, 146376, 1),
      row(32542, '10.77.0.2', 40100, 4000, null, null),
      row(32541, '10.77.0.2', 40200, 9000, 1500000, 2.88672, '[::ffff:10.77.0.2]:40200'),
    ]);
    expect(parseSs('')).toEqual([]);
    expect(parseSs('Recv-Q Send-Q Local Address:Port  Peer Address:Port Process\n')).toEqual([]);
  });

  it('an estimate on an unindented line is not taken for the connection above it; one without a gain has none', () => {
    expect(parseSs('0 10 10.77.0.1:1883 10.77.0.2:5000\nbbr:(bw:1000bps,mrtt:1)\n')).toEqual([row(1883, '10.77.0.2', 5000, 10, null, null)]);
    expect(parseSs('0 10 10.77.0.1:1883 10.77.0.2:5000\n\t bbr:(bw:1000bps,mrtt:1)\n')).toEqual([row(1883, '10.77.0.2', 5000, 10, 1000, null)]);
  });

  it('an address as a socket or ss gives it: no brackets, no IPv4-mapped prefix', () => {
    expect(plainAddress('[::ffff:10.77.0.2]')).toBe('10.77.0.2');
    expect(plainAddress('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(plainAddress('[2001:db8::1]')).toBe('2001:db8::1');
    expect(plainAddress('10.0.0.1')).toBe('10.0.0.1');
  });
});
