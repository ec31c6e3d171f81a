import { checkRelease, pathFrom, verifyRelease, type ManifestLimits, type ReleaseBody, type TrustFile } from '../protocol/release.ts';
import { DeviceError } from './reasons.ts';
import type { ActiveRelease, AgentMemory } from './storage.ts';

export interface DecisionContext {
  model: string;
  group: string;
  trust: TrustFile;
  /** Digest of the running model. */
  running: string;
  /** Unix seconds. */
  now: number;
  skewSeconds: number;
  /** The device's caps: the manifest's limits, and the path's total size, must be within them. */
  caps: ManifestLimits;
  memory: Pick<AgentMemory, 'clockFloor' | 'highestSeq'>;
  /** Whether this device still holds a version on disk. */
  holds: (digest: string) => Promise<boolean>;
}

export type Decision =
  | { kind: 'refuse'; error: unknown; body?: ReleaseBody }
  | { kind: 'current'; body: ReleaseBody }
  | { kind: 'switch-back'; body: ReleaseBody; active: ActiveRelease }
  | { kind: 'fetch'; body: ReleaseBody; active: ActiveRelease };

/**
 * What to do with a new release (its bytes already known not to be seen
 * before): refuse it with a reason, ack it (already running its target),
 * switch back to a held version, or fetch the steps from the running digest.
 * docs/protocol.md §5.5, "What a device checks, in order": step 1 (seen before) is the
 * agent's; here steps 2 to 5 (verifyRelease: decode, both roles' signatures, bodies),
 * 6 to 9 (checkRelease), 10 (current), 11 (switch back), 12 (the path and its size);
 * step 13 (free space) comes when the fetch begins (fetcher.ts checkSpace).
 */
export async function decideRelease(bytes: Uint8Array, releaseHash: string, c: DecisionContext): Promise<Decision> {
  let body: ReleaseBody;
  try {
    body = verifyRelease(bytes, c.trust);
  } catch (error) {
    return { kind: 'refuse', error };
  }
  try {
    checkRelease(body, {
      model: c.model,
      group: c.group,
      now: c.now,
      clockFloor: c.memory.clockFloor,
      highestSeq: c.memory.highestSeq,
      skewSeconds: c.skewSeconds,
      caps: c.caps,
    });
  } catch (error) {
    // Signed, but not for us now: the status names the release it refused.
    return { kind: 'refuse', error, body };
  }
  // §5.5 steps 10 to 12.
  if (body.target === c.running) return { kind: 'current', body };
  const held = await c.holds(body.target);
  const steps = held ? [] : pathFrom(body, c.running);
  if (!steps) return { kind: 'refuse', error: new DeviceError('wrong-base', `running ${c.running.slice(0, 16)}…`), body };
  const size = steps.reduce((a, s) => a + s.size, 0);
  if (size > c.caps.payloadBytes) return { kind: 'refuse', error: new DeviceError('payload-too-large', `${size} bytes > ${c.caps.payloadBytes}`), body };
  const active: ActiveRelease = { releaseHash, seq: body.seq, target: body.target, steps, rollback: body.rollback };
  return held ? { kind: 'switch-back', body, active } : { kind: 'fetch', body, active };
}
