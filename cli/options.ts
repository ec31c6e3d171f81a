import { InvalidArgumentError } from 'commander';

export function parseIntArg(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    return n;
  };
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** "90s", "15m", "12h", "30d" or plain seconds. */
export function parseDuration(v: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError('expected a duration like 90s, 15m, 12h or 30d');
  return Number(m[1]) * UNITS[m[2] || 's'];
}

export function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

/** An accuracy: a fraction from 0 to 1 ("0.9") or a percentage ("90%"). */
export function parseAccuracy(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(v.trim());
  const x = m ? Number(m[1]) / (m[2] ? 100 : 1) : NaN;
  if (!(x >= 0 && x <= 1)) throw new InvalidArgumentError('expected an accuracy from 0 to 1 (0.9) or a percentage (90%)');
  return x;
}

/** Percentage points from 0 to 100 ("2" or "2.5"). */
export function parsePoints(v: string): number {
  const x = Number(v.trim().replace(/%$/, ''));
  if (!(v.trim() !== '' && x >= 0 && x <= 100)) throw new InvalidArgumentError('expected percentage points from 0 to 100 (e.g. 2)');
  return x;
}

/** `--unpin-senders [when]`: auto, on or off (broker/pinned-senders.ts's UnpinMode). */
export function parseUnpinMode(v: string): 'auto' | 'on' | 'off' {
  const m = v.trim();
  if (m !== 'auto' && m !== 'on' && m !== 'off') throw new InvalidArgumentError('expected auto, on or off');
  return m;
}
