import { spawn, type ChildProcess } from 'node:child_process';
import { findBinary } from './netns-commands.ts';

/*
 * The userspace delay line of a delayed NetnsLink (simulations/netns-link.ts): the kernel here has
 * no netem, no fq (for EDT pacing) and no NFQUEUE target in nftables, so a delayed link is a TUN
 * device in each namespace joined by simulations/delay-line.py (Python because TUNSETIFF is an
 * ioctl Node cannot issue), which holds every packet, data and ACK alike, for the one-way delay
 * ± jitter, in order.
 */

const DELAY_LINE = new URL('./delay-line.py', import.meta.url).pathname;

/** The two ends the delay line makes: a TUN device `srvIf` in namespace `srvNs`, `siteIf` in `siteNs`. */
export interface DelayLineEnds {
  srvNs: string;
  srvIf: string;
  siteNs: string;
  siteIf: string;
}

/** The delay each way, ms, its ± jitter, ms, and the jitter's seed. */
export interface DelayLineTiming {
  delayMs: number;
  jitterMs: number;
  seed: number;
}

/**
 * Starts simulations/delay-line.py, which makes the two TUN devices; resolves when they exist.
 * `track` is given the process as soon as it is spawned (its owner stops it by PID).
 */
export async function startDelayLine(ends: DelayLineEnds, t: DelayLineTiming, track: (child: ChildProcess) => void): Promise<void> {
  for (const [what, n] of [
    ['delayMs', t.delayMs],
    ['jitterMs', t.jitterMs],
  ] as const) {
    if (!(Number.isFinite(n) && n >= 0 && n <= 10_000)) throw new Error(`${what} must be 0..10000 ms: ${n}`);
  }
  const python = findBinary('python3');
  if (!python) throw new Error('a delayed link needs python3 (for the TUN delay line): install python3');
  const child = spawn(python, [DELAY_LINE, ends.srvNs, ends.srvIf, ends.siteNs, ends.siteIf, String(t.delayMs), String(t.jitterMs), String(t.seed)], { stdio: ['pipe', 'pipe', 'pipe'] });
  track(child);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`delay line did not start in 10 s: ${out.trim()}`)), 10_000);
    const onData = (d: Buffer): void => {
      out += String(d);
      if (out.includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`delay line exited ${code}: ${out.trim().split('\n').pop() ?? ''}`));
    });
  });
}
