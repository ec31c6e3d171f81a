import { cborEncode, isHex, isUint } from './cbor.ts';
import { ProtocolError } from './errors.ts';
import { PROTOCOL_VERSION } from './frames.ts';
import { decodeDocument } from './signed.ts';
import { isTopicSegment } from './topics.ts';

/**
 * An assignment (docs/protocol.md §5.3) says which signed manifest a group of devices should run,
 * and for how long (TUF's timestamp/snapshot role, per group): signed by the
 * online rollout key. A stolen rollout key can only point a group at another
 * manifest the release keys signed, never at new weights.
 */
export interface AssignmentBody {
  model: string;
  group: string;
  /** Grows with every assignment for this model and group. */
  seq: number;
  /** Unix seconds. */
  issued: number;
  /** Unix seconds; refused after this. */
  expires: number;
  /** SHA-256 (hex) of the manifest's signed body bytes. */
  manifest: string;
  /** This assignment takes the group back to an earlier version (operator rollback). */
  rollback: boolean;
  /** The digest the group was asked to run before this assignment, when known. */
  previous: string | null;
}

function bad(detail: string): never {
  throw new ProtocolError('malformed-release', `assignment: ${detail}`);
}

/** Sequence numbers an assignment may use per second of its issued time. */
export const SEQ_PER_SECOND = 1000;

/**
 * The highest seq an assignment issued at `issued` (Unix seconds) may carry:
 * issued × 1000 + 999, the issued time in milliseconds at the end of that
 * second. Publishers default to seq = max(current + 1, now in seconds), so
 * honest sequences stay far below it; a seq above it is absurd for its time
 * (a fast-forward meant to freeze the group) and is refused when signed and
 * when decoded. As devices refuse issued times beyond their clock plus skew,
 * nobody, even with the rollout key, can push a group's seq further than
 * about 1000 per second of real time.
 */
export function maxSeqAt(issued: number): number {
  return issued * SEQ_PER_SECOND + (SEQ_PER_SECOND - 1);
}

function checkSeq(seq: number, issued: number): void {
  if (seq > maxSeqAt(issued)) bad(`seq ${seq} is absurd for issued ${issued}: at most issued x ${SEQ_PER_SECOND} + ${SEQ_PER_SECOND - 1} = ${maxSeqAt(issued)}`);
}

/** Encodes an assignment body for signing; refuses (malformed-release) a seq that a device would refuse as absurd. */
export function encodeAssignment(a: AssignmentBody): Uint8Array {
  checkSeq(a.seq, a.issued);
  const m: Record<string, unknown> = {
    v: PROTOCOL_VERSION,
    type: 'assignment',
    model: a.model,
    group: a.group,
    seq: a.seq,
    issued: a.issued,
    expires: a.expires,
    manifest: a.manifest,
  };
  if (a.rollback) m.rollback = true;
  if (a.previous) m.previous = a.previous;
  return cborEncode(m);
}

export function decodeAssignment(bytes: Uint8Array): AssignmentBody {
  const m = decodeDocument(bytes, 'assignment', bad);
  if (typeof m.group !== 'string' || !isTopicSegment(m.group)) bad('group');
  if (!isUint(m.seq) || !isUint(m.issued) || !isUint(m.expires)) bad('seq, issued and expires must be unsigned integers');
  if (m.expires <= m.issued) bad('expires must be after issued');
  checkSeq(m.seq, m.issued);
  if (!isHex(m.manifest, 64)) bad('manifest must be a 64-hex-digit SHA-256');
  if (m.rollback !== undefined && m.rollback !== true) bad('rollback must be true when present');
  if (m.previous !== undefined && !isHex(m.previous, 64)) bad('previous must be a 64-hex-digit digest');
  return {
    model: m.model,
    group: m.group,
    seq: m.seq,
    issued: m.issued,
    expires: m.expires,
    manifest: m.manifest,
    rollback: m.rollback === true,
    previous: (m.previous as string | undefined) ?? null,
  };
}
