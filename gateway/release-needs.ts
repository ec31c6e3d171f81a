import { decodeRelease } from '../protocol/release.ts';

/** One payload a release needs: what the upstream fetcher must get and check. */
export interface NeededUpdate {
  updateId: string;
  size: number;
  sha256: string;
  chunkSize: number;
  chunks: number;
  listSha256: string;
}

export interface ReleaseNeeds {
  group: string;
  model: string;
  seq: number;
  updates: NeededUpdate[];
}

/**
 * THE one place the gateway reads a release: which payloads it names. No
 * signature is checked (the gateway holds no keys; devices verify what it
 * forwards byte for byte). Throws on a release it cannot read.
 */
export function releaseNeeds(bytes: Uint8Array): ReleaseNeeds {
  const body = decodeRelease(bytes);
  const seen = new Set<string>();
  const updates: NeededUpdate[] = [];
  for (const s of body.steps) {
    if (seen.has(s.updateId)) continue;
    seen.add(s.updateId);
    updates.push({ updateId: s.updateId, size: s.size, sha256: s.sha256, chunkSize: s.chunkSize, chunks: s.chunks, listSha256: s.listSha256 });
  }
  return { group: body.group, model: body.model, seq: body.seq, updates };
}
