import { describe, expect, it } from 'vitest';
import { NetnsLink } from '../../simulations/netns-link.ts';
import { runGatewaySim } from '../../simulations/gateway.ts';

const available = NetnsLink.available();
if (!available.ok) console.warn(`skipping the gateway kernel-link suite: ${available.reason} (run it as root with nftables and tc)`);

describe.skipIf(!available.ok)('a site gateway behind a real lossy link (network namespaces, nftables drop, tbf rate cap)', () => {
  it('4 devices, 10 % loss both ways, 512 kbit/s, a cut while the gateway fetches: all ok, about one payload over the link', async () => {
    const r = await runGatewaySim({
      devices: 4,
      size: 96 * 1024,
      lossPercent: 10,
      rateKbit: 512,
      cuts: 1,
      cutSeconds: 2,
      proxy: false,
      timeoutSeconds: 100,
      log: () => undefined,
    });
    expect(r.note).toBeNull();
    expect(r.gateway.completed).toBe(4);
    expect(r.direct!.completed).toBe(4);
    expect(r.gateway.cuts).toBe(1);
    expect(r.gateway.upstreamFetchedPayloadBytes).toBe(r.payloadBytes);
    // One payload (plus the release, requests' acks and framing) through the gateway's socket;
    // the 1.10 is for 256 KiB, where the fixed costs weigh less.
    expect(r.gatewayOverPayload).toBeLessThan(1.2);
    expect(r.directOverPayload).toBeGreaterThanOrEqual(4);
    expect(r.linkDownRatio!).toBeLessThan(0.5);
  }, 240_000);

  it('clean link, 4 devices started after the release (the direct phase): each receives about one payload, no chunk twice', async () => {
    const r = await runGatewaySim({ devices: 4, size: 96 * 1024, lossPercent: 0, rateKbit: 512, cuts: 0, cutSeconds: 2, proxy: false, timeoutSeconds: 100, log: () => undefined });
    expect(r.direct!.completed).toBe(4);
    // A device started while the release was retained fetched it twice over (a second fetch beside
    // the first, the list and first window asked again): 1.2–1.6 payloads a device at 256 KiB.
    expect(r.direct!.devicesSaw!.duplicateChunks).toBeLessThanOrEqual(1);
    expect(r.direct!.devicesSaw!.maxOverPayload).toBeLessThan(1.1);
    expect(r.directOverPayload).toBeLessThan(4 * 1.05);
  }, 240_000);
});
