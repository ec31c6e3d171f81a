import { describe, expect, it } from 'vitest';
import { tcpFloorSeconds } from '../../simulations/compare-http.ts';
import { CLEAN_LINK, describeLink, LINK_PROFILES, LinkSpecError, needsKernel, resolveLink } from '../../simulations/link-profiles.ts';

describe('link profiles and the link flags', () => {
  it('a named profile gives its own numbers, and every profile has a source', () => {
    const s = resolveLink('rural-lte-edge', {});
    expect(s).toMatchObject({ profile: 'rural-lte-edge', downKbit: 512, upKbit: 128, delayMs: 150, lossDownPercent: 10, lossUpPercent: 10 });
    for (const p of LINK_PROFILES) {
      expect(p.source.length).toBeGreaterThan(10);
      expect(p.upKbit).toBeLessThanOrEqual(p.downKbit);
      expect(needsKernel(p)).toBe(true);
    }
    expect(LINK_PROFILES.map((p) => p.name)).toEqual(['rural-3g', 'rural-lte-edge', 'satellite']);
  });

  it('flags override the profile; --rate sets both ways and --rate-up then the uplink alone', () => {
    expect(resolveLink('satellite', { delay: '250', 'loss-up': '3' })).toMatchObject({ delayMs: 250, lossDownPercent: 1, lossUpPercent: 3, downKbit: 1000 });
    expect(resolveLink(undefined, { rate: '512', 'rate-up': '128' })).toMatchObject({ downKbit: 512, upKbit: 128, profile: null });
    expect(resolveLink(undefined, { rate: '512' })).toMatchObject({ downKbit: 512, upKbit: 512 });
    expect(resolveLink(undefined, { loss: '20' })).toMatchObject({ lossDownPercent: 20, lossUpPercent: 20 });
    expect(resolveLink(undefined, {})).toEqual({ ...CLEAN_LINK, profile: null });
  });

  it('refuses an unknown profile naming the known ones, and values out of range', () => {
    expect(() => resolveLink('rural-5g', {})).toThrow(/unknown --profile "rural-5g": use one of rural-3g, rural-lte-edge, satellite/);
    const bad: Array<[string, string]> = [
      ['loss', '101'],
      ['loss', '2.5'],
      ['delay', '-1'],
      ['rate', 'fast'],
      ['jitter', ''],
      ['cuts', '1.5'],
      ['delay', 'Infinity'],
    ];
    for (const [flag, value] of bad) {
      let err: unknown;
      try {
        resolveLink(undefined, { [flag]: value });
      } catch (e) {
        err = e;
      }
      expect(err, `--${flag} ${value}`).toBeInstanceOf(LinkSpecError);
      expect((err as LinkSpecError).code).toBe('bad-value');
      expect((err as Error).message).toContain(`--${flag}`);
    }
  });

  it('only a symmetric, lossless, undelayed link runs on the proxy', () => {
    expect(needsKernel({ ...CLEAN_LINK, downKbit: 512, upKbit: 512 })).toBe(false);
    expect(needsKernel({ ...CLEAN_LINK, downKbit: 512, upKbit: 128 })).toBe(true);
    expect(needsKernel({ ...CLEAN_LINK, jitterMs: 5 })).toBe(true);
    expect(describeLink(resolveLink('satellite', {}))).toBe('satellite: 1000/256 kbit/s, loss 1/1 %, RTT 600 ms ± 15');
  });

  it('the TCP floor: full segments through the downlink rate, lost packets sent again, two round trips and the cuts', () => {
    const clean = { ...CLEAN_LINK, downKbit: 512, upKbit: 512 };
    const mib = 1 << 20;
    const segments = Math.ceil(mib / 1448);
    expect(tcpFloorSeconds(clean, 1, mib, 1514)).toBeCloseTo((segments * 1514 * 8) / 512_000, 6);
    expect(tcpFloorSeconds({ ...clean, lossDownPercent: 20, delayMs: 150, cuts: 2, cutSeconds: 3 }, 2, mib, 1500)).toBeCloseTo((2 * segments * 1500 * 8) / 512_000 / 0.8 + 0.6 + 6, 6);
    expect(tcpFloorSeconds(CLEAN_LINK, 1, mib, 1514)).toBeNull();
  });
});
