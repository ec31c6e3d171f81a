import { sha256 } from './chunks.ts';

/**
 * The update file `fleet build` and `fleet synth` write (docs/protocol.md §6.1):
 * a 16-byte magic line, the SHA-256 of the payload (32 bytes), then the payload
 * itself (§6), byte for byte what the update server stores and devices fetch.
 * The check is the publisher's: a file damaged after the build (a flipped
 * factor byte, a truncated copy) is refused before a byte is uploaded, instead
 * of every device downloading it and refusing it with `digest-mismatch`.
 */
export const UPDATE_FILE_MAGIC = new TextEncoder().encode('FLEET-UPDATE-V1\n');
export const UPDATE_FILE_HEADER_BYTES = UPDATE_FILE_MAGIC.byteLength + 32;

export type UpdateFileProblem = 'no-check' | 'damaged-update';

export class UpdateFileError extends Error {
  constructor(
    readonly code: UpdateFileProblem,
    message: string,
  ) {
    super(message);
    this.name = 'UpdateFileError';
  }
}

/** The file for a payload: magic, SHA-256 of the payload, payload. */
export function encodeUpdateFile(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(UPDATE_FILE_HEADER_BYTES + payload.byteLength);
  out.set(UPDATE_FILE_MAGIC, 0);
  out.set(sha256(payload), UPDATE_FILE_MAGIC.byteLength);
  out.set(payload, UPDATE_FILE_HEADER_BYTES);
  return out;
}

function startsWithMagic(bytes: Uint8Array): boolean {
  if (bytes.byteLength < UPDATE_FILE_MAGIC.byteLength) return false;
  for (let i = 0; i < UPDATE_FILE_MAGIC.byteLength; i++) if (bytes[i] !== UPDATE_FILE_MAGIC[i]) return false;
  return true;
}

/**
 * The SHA-256 an update file's header promises for its payload. `head` is the
 * file's first UPDATE_FILE_HEADER_BYTES bytes (fewer when the file is shorter);
 * `name` (the user's path) goes into the one-line refusals, which say what to do.
 * A bare payload (a file from before the check, or written by hand) is refused
 * too: nothing says it is what the build wrote.
 */
export function promisedPayloadSha256(head: Uint8Array, name: string): Uint8Array {
  if (!startsWithMagic(head)) {
    throw new UpdateFileError('no-check', `${name} is not an update file with an integrity check (written by hand, or by a fleet before the check): rebuild it with fleet build`);
  }
  if (head.byteLength < UPDATE_FILE_HEADER_BYTES) {
    throw new UpdateFileError('damaged-update', `${name} is damaged: it ends inside its ${UPDATE_FILE_HEADER_BYTES}-byte header (a truncated copy?); copy it again from where fleet build wrote it, or rebuild it`);
  }
  return head.subarray(UPDATE_FILE_MAGIC.byteLength, UPDATE_FILE_HEADER_BYTES);
}

/** Refuses the file `name` unless its payload's SHA-256 `got` is the one its header promised (`want`). */
export function checkPayloadSha256(want: Uint8Array, got: Uint8Array, name: string): void {
  for (let i = 0; i < 32; i++) {
    if (got[i] !== want[i]) {
      throw new UpdateFileError(
        'damaged-update',
        `${name} is damaged: its payload's SHA-256 is not the one fleet build wrote in its header (bytes changed or cut off after the build); copy it again from where fleet build wrote it, or rebuild it`,
      );
    }
  }
}

/** The payload of an update file held in memory, after checking its SHA-256 (see promisedPayloadSha256). */
export function decodeUpdateFile(bytes: Uint8Array, name: string): Uint8Array {
  const want = promisedPayloadSha256(bytes.subarray(0, UPDATE_FILE_HEADER_BYTES), name);
  const payload = bytes.subarray(UPDATE_FILE_HEADER_BYTES);
  checkPayloadSha256(want, sha256(payload), name);
  return payload;
}
