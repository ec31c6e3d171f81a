/** The cut schedule of a simulated transfer: the same seed gives the same moments for every run. */
import type { LinkProxy } from './link-proxy.ts';
import type { NetnsLink } from './netns-link.ts';

export interface Fault {
  /** ms after the transfer started. */
  at: number;
  kind: 'cut' | 'kill';
}

/** Faults at random moments of the first 70 % of the ideal transfer time (`rand` is the run's seeded PRNG). */
export function scheduleFaults(rand: () => number, idealSeconds: number, cuts: number, kills: number): Fault[] {
  return [
    ...Array.from({ length: cuts }, () => ({ at: (0.1 + 0.6 * rand()) * idealSeconds * 1000, kind: 'cut' as const })),
    ...Array.from({ length: kills }, () => ({ at: (0.1 + 0.6 * rand()) * idealSeconds * 1000, kind: 'kill' as const })),
  ].sort((x, y) => x.at - y.at);
}

export interface RunFaultsOptions {
  faults: Fault[];
  t0: number;
  finished: () => boolean;
  cutSeconds: number;
  link?: NetnsLink;
  proxy?: LinkProxy;
  log: (line: string) => void;
  /** Called for a 'kill' fault. */
  kill?: () => Promise<void>;
  deadline?: number;
}

/** Applies the faults at their moments until `finished()`; returns how many cuts and kills it made. */
export async function runFaults(o: RunFaultsOptions): Promise<{ cuts: number; kills: number }> {
  let cuts = 0;
  let kills = 0;
  const deadline = o.deadline ?? Infinity;
  while (!o.finished() && Date.now() < deadline) {
    const next = o.faults[0];
    if (next && Date.now() - o.t0 >= next.at) {
      o.faults.shift();
      if (next.kind === 'cut') {
        cuts++;
        o.log(`cut ${cuts} at ${((Date.now() - o.t0) / 1000).toFixed(1)} s for ${o.cutSeconds} s`);
        if (o.link) await o.link.cut();
        else o.proxy?.takeDown();
        await new Promise((r) => setTimeout(r, o.cutSeconds * 1000));
        if (o.link) await o.link.restore();
        else o.proxy?.restore();
      } else if (o.kill) {
        kills++;
        o.log(`kill ${kills} of the device host at ${((Date.now() - o.t0) / 1000).toFixed(1)} s`);
        await o.kill();
      }
      continue;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { cuts, kills };
}
