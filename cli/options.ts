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
