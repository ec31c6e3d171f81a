import type { PayloadDescriptor } from '../protocol/chunks.ts';
import { decodeRelease } from '../protocol/release.ts';

/** One payload a release needs: what the upstream fetcher must get and check. */
export interface NeededUpdate extends PayloadDescriptor {
  /** The digest the step starts from; null for a full-model step. */
  from: string | null;
}

export interface ReleaseNeeds {
  group: string;
  model: string;
  seq: number;
  target: string;
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
    updates.push({ updateId: s.updateId, size: s.size, sha256: s.sha256, chunkSize: s.chunkSize, chunks: s.chunks, listSha256: s.listSha256, from: s.from });
  }
  return { group: body.group, model: body.model, seq: body.seq, target: body.target, updates };
}

/**
 * The payloads the site needs of a release: every chain step (they are
 * small), and the full-model step only when a site device runs a digest
 * that is neither the target nor on a chain — a full model can cost a
 * hundred updates' worth of the site's budget.
 */
export function wantedBySite(n: Pick<ReleaseNeeds, 'target' | 'updates'>, siteDigests: Iterable<string>): NeededUpdate[] {
  const onChain = new Set(n.updates.filter((u) => u.from !== null).map((u) => u.from as string));
  const offChain = [...siteDigests].some((d) => d !== n.target && !onChain.has(d));
  return n.updates.filter((u) => u.from !== null || offChain);
}
