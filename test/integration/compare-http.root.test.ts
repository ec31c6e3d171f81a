import { describe, expect, it } from 'vitest';
import { runFleetSim } from '../../simulations/fleet.ts';
import { resolveLink } from '../../simulations/link-profiles.ts';
import { NetnsLink } from '../../simulations/netns-link.ts';
import { congestionControls } from '../../simulations/tcp-sysctls.ts';

const available = NetnsLink.available();
if (!available.ok) console.warn(`skipping sim:fleet --compare-http: ${available.reason}`);

describe.skipIf(!available.ok)('sim:fleet --compare-http on a delayed profile (root)', () => {
  it('both the fleet devices and the HTTP resume clients end with the exact payload, over the same delayed, lossy link with a cut', async () => {
    const p = resolveLink('rural-lte-edge', { cuts: '1', 'cut-seconds': '2' });
    const r = await runFleetSim({
      devices: 2,
      size: 48 * 1024,
      lossPercent: p.lossDownPercent,
      lossUpPercent: p.lossUpPercent,
      rateKbit: p.downKbit,
      rateUpKbit: p.upKbit,
      delayMs: p.delayMs,
      jitterMs: p.jitterMs,
      cuts: p.cuts,
      cutSeconds: p.cutSeconds,
      kills: 0,
      kernel: true,
      broker: 'aedes',
      seed: 5,
      timeoutSeconds: 240,
      compareHttp: true,
      profile: p.profile,
      log: () => undefined,
    });
    // Fleet: both devices at `ok` on the update's digest. HTTP: both files' SHA-256 equal the payload's.
    expect(r.completed).toBe(2);
    expect(r.compareHttp?.http.completed).toBe(2);
    expect(r.link).toContain('tun delay line');
    // Both transfers crossed the link: at least the payload went down each time.
    expect(r.wireDown).toBeGreaterThan(2 * r.payloadBytes);
    expect(r.compareHttp!.http.wireDown).toBeGreaterThan(2 * r.payloadBytes);
    // The uplink broken down: the devices' requests and statuses since the release, counted by
    // packet type; the link's uplink up to the last payload on disk is part of the whole.
    expect(r.upSentToDownloaded['publish request'].packets).toBeGreaterThanOrEqual(2);
    expect(r.upSent['publish status'].packets).toBeGreaterThan(r.upSentToDownloaded['publish status'].packets);
    expect(r.wireUpToDownloaded!).toBeGreaterThan(0);
    expect(r.wireUpToDownloaded!).toBeLessThanOrEqual(r.wireUp!);
    expect(r.wireUpPackets!).toBeGreaterThan(0);
    expect(r.compareHttp!.http.wireUpPackets).toBeGreaterThan(0);
    expect(r.compareHttp!.fleetUpToDownloadedPerMiB!).toBeLessThanOrEqual(r.compareHttp!.fleetUpPerMiB);
    expect(r.compareHttp!.fleetOverHttpUpBytesToDownloaded!).toBeLessThanOrEqual(r.compareHttp!.fleetOverHttpUpBytes);
    // The downlink's queue, per transfer: the server side retransmitted (10 % loss down) in both, and
    // tbf's drops are a count (a queue this slow link may or may not overflow).
    expect(r.downQueue!.retransSegs).toBeGreaterThan(0);
    expect(r.compareHttp!.http.downQueue.retransSegs).toBeGreaterThan(0);
    for (const q of [r.downQueue!, r.compareHttp!.http.downQueue]) expect(Number.isInteger(q.tbfDrops) && q.tbfDrops >= 0).toBe(true);
    // The site's own sending, per transfer: its ACKs at least, and of them some sent again or none.
    for (const u of [r.upTcp!, r.compareHttp!.http.upTcp]) {
      expect(u.outSegs).toBeGreaterThan(0);
      expect(u.retransSegs).toBeGreaterThanOrEqual(0);
      expect(u.retransSegs).toBeLessThanOrEqual(u.outSegs);
      expect(u.timeouts + u.lossProbes).toBeGreaterThanOrEqual(0);
    }
    // The server side's senders, sampled with ss through each transfer: each device's connection is
    // seen (the broker's, then the HTTP server's); figures only under BBR, the host's default here or not.
    const bbr = congestionControls().hostDefault === 'bbr';
    for (const s of [r.senderPinned, r.compareHttp!.http.senderPinned]) {
      if (!bbr) {
        expect(s).toBeNull();
        continue;
      }
      expect(s!.connections).toBeGreaterThanOrEqual(2);
      expect(s!.samples).toBeGreaterThan(0);
      expect(s!.belowKbit).toBe(p.downKbit / 8);
      expect(s!.pinnedConnections).toBeLessThanOrEqual(s!.connections);
      expect(s!.longestPinnedSeconds).toBeLessThanOrEqual(s!.pinnedSeconds);
    }
  }, 300_000);
});
