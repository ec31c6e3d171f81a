import { describe, expect, it } from 'vitest';
import { NetnsLink } from '../../simulations/netns-link.ts';
import { runFleetSim } from '../../simulations/fleet.ts';

const available = NetnsLink.available();
if (!available.ok) console.warn(`skipping the kernel-level loss suite: ${available.reason} (CI runs it as root with nftables installed)`);

describe.skipIf(!available.ok)('a site behind a real lossy link (network namespaces, nftables drop, tbf rate cap)', () => {
  it('every device completes and acks with 20 % loss both ways, 1 Mbit/s and a cut, without paying much extra on the wire', async () => {
    const r = await runFleetSim({
      devices: 4,
      size: 256 * 1024,
      lossPercent: 20,
      rateKbit: 1000,
      cuts: 1,
      cutSeconds: 2,
      kills: 0,
      kernel: true,
      broker: 'aedes',
      seed: 3,
      timeoutSeconds: 150,
      log: () => undefined,
    });
    expect(r.completed).toBe(4);
    expect(r.cuts).toBe(1);
    // The figure (≤ 1.10 for 10 × 256 KiB) is measured by `npm run sim:fleet`; here, with a
    // 16-chunk payload per device and the other suites loading both cores, a few duplicate chunks
    // after the cut (requests re-sent when the link went silent) cost up to ~1.26 (measured). This
    // bound still catches re-requests on a live socket (which cost 1.7–2.9× before they were fixed).
    expect(r.overheadMax).toBeLessThan(1.45);
  }, 180_000);
});
