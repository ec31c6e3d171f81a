import { cborEncode, isHex, isUint } from './cbor.ts';
import { ProtocolError } from './errors.ts';
import { PROTOCOL_VERSION } from './frames.ts';
import { decodeDocument } from './signed.ts';
import { isTopicSegment } from './topics.ts';

/**
 * An assignment says which signed manifest a group of devices should run,
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

export function encodeAssignment(a: AssignmentBody): Uint8Array {
  const m: Record<string, unknown> = {
    v: PROTOCOL_VERSION, type: 'assignment', model: a.model, group: a.group, seq: a.seq, issued: a.issued, expires: a.expires, manifest: a.manifest,
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
  if (!isHex(m.manifest, 64)) bad('manifest must be a 64-hex-digit SHA-256');
  if (m.rollback !== undefined && m.rollback !== true) bad('rollback must be true when present');
  if (m.previous !== undefined && !isHex(m.previous, 64)) bad('previous must be a 64-hex-digit digest');
  return {
    model: m.model, group: m.group, seq: m.seq, issued: m.issued, expires: m.expires, manifest: m.manifest,
    rollback: m.rollback === true, previous: (m.previous as string | undefined) ?? null,
  };
}
