import { chunkList, sha256Hex, updateIdOf } from '../../protocol/chunks.ts';
import type { ReleaseStep } from '../../protocol/release.ts';

/** A payload of `chunks` chunks of `chunkSize` bytes (byte i is `byteAt(i)`), its chunk list and the release step that names them (a fresh install to `to`). */
export function payloadStep(chunkSize: number, chunks: number, byteAt: (i: number) => number, to: string): { payload: Uint8Array; list: Uint8Array; updateId: string; step: ReleaseStep } {
  const payload = new Uint8Array(chunkSize * chunks).map((_, i) => byteAt(i));
  const list = chunkList(payload, chunkSize);
  const updateId = updateIdOf(payload);
  const step: ReleaseStep = { updateId, from: null, to, size: payload.byteLength, sha256: sha256Hex(payload), chunkSize, chunks, listSha256: sha256Hex(list) };
  return { payload, list, updateId, step };
}
