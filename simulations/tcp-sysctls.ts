import fs from 'node:fs';

/**
 * The host's TCP settings a simulated link reads or sets per network namespace: the congestion
 * control, and the cap on the retransmission timer's backoff with the retries that go with it.
 */

/** Whether this kernel lets a namespace cap TCP's retransmission backoff (`tcp_rto_max_ms`, Linux >= 6.15). */
export function rtoMaxAvailable(): boolean {
  return fs.existsSync('/proc/sys/net/ipv4/tcp_rto_max_ms');
}

const RTO_MIN_MS = 200;
const RTO_MAX_DEFAULT_MS = 120_000;
const RETRIES2_DEFAULT = 15;
/** The largest `tcp_retries2` the kernel takes. */
const RETRIES2_MAX = 255;

/** How long Linux keeps retransmitting without an ACK before it gives a connection up (`tcp_model_timeout`), ms. */
export function giveUpMs(retries2: number, rtoMaxMs: number): number {
  const thresh = Math.floor(Math.log2(rtoMaxMs / RTO_MIN_MS));
  if (retries2 <= thresh) return (2 ** (retries2 + 1) - 1) * RTO_MIN_MS;
  return (2 ** (thresh + 1) - 1) * RTO_MIN_MS + (retries2 - thresh) * rtoMaxMs;
}

/**
 * The `tcp_retries2` that, with the backoff capped at `rtoMaxMs`, gives a connection up no sooner than
 * the defaults do (15 and 120 s: ~925 s), or as late as the kernel allows (255: ~254 s at a 1 s cap).
 */
export function retries2ForRtoMax(rtoMaxMs: number): number {
  const target = giveUpMs(RETRIES2_DEFAULT, RTO_MAX_DEFAULT_MS);
  let r = RETRIES2_DEFAULT;
  while (r < RETRIES2_MAX && giveUpMs(r, rtoMaxMs) < target) r++;
  return r;
}

/** The host's cap on TCP's retransmission backoff, ms (what a namespace starts with); undefined before Linux 6.15. */
export function hostRtoMaxMs(): number | undefined {
  return rtoMaxAvailable() ? Number(fs.readFileSync('/proc/sys/net/ipv4/tcp_rto_max_ms', 'utf8').trim()) : undefined;
}

/** The congestion controls this kernel offers, and its default. */
export function congestionControls(): { available: string[]; hostDefault: string } {
  const read = (f: string): string => fs.readFileSync(`/proc/sys/net/ipv4/${f}`, 'utf8').trim();
  return { available: read('tcp_available_congestion_control').split(/\s+/), hostDefault: read('tcp_congestion_control') };
}

/** The cap a run reports in its JSON line: the one asked for, else the host's (null before Linux 6.15). */
export function reportedRtoMaxMs(asked: number | undefined): number | null {
  return asked ?? hostRtoMaxMs() ?? null;
}

/** `--rto-max`'s value as parsed (checked by NetnsLink.create before the link is built). */
export function rtoMaxArg(value: string | undefined): number | undefined {
  return value === undefined ? undefined : Number(value);
}
