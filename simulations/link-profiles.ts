/**
 * Named link profiles for the simulations (`--profile NAME`) and the resolution of the
 * link flags against them. Pure: no I/O. Where each number comes from is in docs/links.md
 * ("Link profiles"); the `source` field says it in one line.
 */

export interface LinkSpec {
  /** srv → site (what the devices download), kbit/s; 0 = no cap. */
  downKbit: number;
  /** site → srv (requests, statuses), kbit/s; 0 = no cap. */
  upKbit: number;
  /** One-way delay each direction, ms (the round trip is twice this plus jitter). */
  delayMs: number;
  /** ± ms, uniform per packet, order kept. */
  jitterMs: number;
  /** Random drop srv → site, percent (integer). */
  lossDownPercent: number;
  /** Random drop site → srv, percent (integer). */
  lossUpPercent: number;
  /** Whole-link cuts during the transfer, and how long each lasts. */
  cuts: number;
  cutSeconds: number;
}

export interface LinkProfile extends LinkSpec {
  name: string;
  source: string;
}

export const LINK_PROFILES: readonly LinkProfile[] = [
  {
    name: 'rural-3g',
    downKbit: 384,
    upKbit: 64,
    delayMs: 150,
    jitterMs: 40,
    lossDownPercent: 2,
    lossUpPercent: 2,
    cuts: 1,
    cutSeconds: 5,
    source: 'UMTS R99 bearers 384/64 kbit/s (3GPP TS 25.306); 3G RTT 200–400 ms',
  },
  {
    name: 'rural-lte-edge',
    downKbit: 512,
    upKbit: 128,
    delayMs: 150,
    jitterMs: 20,
    lossDownPercent: 10,
    lossUpPercent: 10,
    cuts: 2,
    cutSeconds: 3,
    source: 'issue 20: 512/128 kbit/s, 300 ms RTT, 10 % loss; LTE cell edge (3GPP TR 36.942 edge throughput ~ 1/10 of mean)',
  },
  {
    name: 'satellite',
    downKbit: 1000,
    upKbit: 256,
    delayMs: 300,
    jitterMs: 15,
    lossDownPercent: 1,
    lossUpPercent: 1,
    cuts: 1,
    cutSeconds: 3,
    source: 'GEO: 2 × 35 786 km / c = 239 ms one way + processing (RTT ≥ 560 ms, ITU-T G.114 §A); small VSAT plan 1 Mbit/s / 256 kbit/s',
  },
];

export type LinkFlagName = 'rate' | 'rate-up' | 'delay' | 'jitter' | 'loss' | 'loss-up' | 'cuts' | 'cut-seconds';

/** What a flag sets; a flag given explicitly overrides the profile. */
const FLAG_FIELDS: Record<LinkFlagName, Array<keyof LinkSpec>> = {
  rate: ['downKbit', 'upKbit'],
  'rate-up': ['upKbit'],
  delay: ['delayMs'],
  jitter: ['jitterMs'],
  loss: ['lossDownPercent', 'lossUpPercent'],
  'loss-up': ['lossUpPercent'],
  cuts: ['cuts'],
  'cut-seconds': ['cutSeconds'],
};

const LIMITS: Record<keyof LinkSpec, { max: number; integer: boolean }> = {
  downKbit: { max: 10_000_000, integer: false },
  upKbit: { max: 10_000_000, integer: false },
  delayMs: { max: 10_000, integer: false },
  jitterMs: { max: 10_000, integer: false },
  lossDownPercent: { max: 100, integer: true },
  lossUpPercent: { max: 100, integer: true },
  cuts: { max: 1000, integer: true },
  cutSeconds: { max: 3600, integer: false },
};

export class LinkSpecError extends Error {
  constructor(
    readonly code: 'unknown-profile' | 'bad-value',
    message: string,
  ) {
    super(message);
  }
}

export const CLEAN_LINK: LinkSpec = { downKbit: 0, upKbit: 0, delayMs: 0, jitterMs: 0, lossDownPercent: 0, lossUpPercent: 0, cuts: 0, cutSeconds: 3 };

export function findProfile(name: string): LinkProfile {
  const p = LINK_PROFILES.find((x) => x.name === name);
  if (!p) throw new LinkSpecError('unknown-profile', `unknown --profile ${JSON.stringify(name)}: use one of ${LINK_PROFILES.map((x) => x.name).join(', ')}`);
  return p;
}

/**
 * The link a run uses: the profile's (or a clean link's) values, then each flag the user
 * gave, in the order: rate before rate-up, loss before loss-up (so `--rate 512 --rate-up 128`
 * is asymmetric). Values are checked: finite, ≥ 0, within bounds, integers where they must be.
 */
export function resolveLink(profile: string | undefined, flags: Partial<Record<LinkFlagName, string>>): LinkSpec & { profile: string | null } {
  const spec: LinkSpec = { ...(profile ? pick(findProfile(profile)) : CLEAN_LINK) };
  const order: LinkFlagName[] = ['rate', 'rate-up', 'delay', 'jitter', 'loss', 'loss-up', 'cuts', 'cut-seconds'];
  for (const flag of order) {
    const raw = flags[flag];
    if (raw === undefined) continue;
    const n = Number(raw);
    for (const field of FLAG_FIELDS[flag]) {
      const lim = LIMITS[field];
      if (raw.trim() === '' || !Number.isFinite(n) || n < 0 || n > lim.max || (lim.integer && !Number.isInteger(n))) {
        throw new LinkSpecError('bad-value', `--${flag} ${JSON.stringify(raw)}: must be ${lim.integer ? 'an integer' : 'a number'} from 0 to ${lim.max}`);
      }
      spec[field] = n;
    }
  }
  return { ...spec, profile: profile ?? null };
}

function pick(p: LinkProfile): LinkSpec {
  const { downKbit, upKbit, delayMs, jitterMs, lossDownPercent, lossUpPercent, cuts, cutSeconds } = p;
  return { downKbit, upKbit, delayMs, jitterMs, lossDownPercent, lossUpPercent, cuts, cutSeconds };
}

/** True when the link needs the kernel (packets, not a TCP stream): loss, delay or jitter, or an asymmetric rate. */
export function needsKernel(s: LinkSpec): boolean {
  return s.lossDownPercent > 0 || s.lossUpPercent > 0 || s.delayMs > 0 || s.jitterMs > 0 || s.upKbit !== s.downKbit;
}

/** A short human description for the JSON line. */
export function describeLink(s: LinkSpec & { profile?: string | null }): string {
  const rate = (k: number): string => (k > 0 ? String(k) : '∞');
  const parts = [`${rate(s.downKbit)}/${rate(s.upKbit)} kbit/s`, `loss ${s.lossDownPercent}/${s.lossUpPercent} %`];
  if (s.delayMs > 0 || s.jitterMs > 0) parts.push(`RTT ${2 * s.delayMs} ms ± ${s.jitterMs}`);
  return (s.profile ? `${s.profile}: ` : '') + parts.join(', ');
}
