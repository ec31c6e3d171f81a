import { chunkCount, chunkList, sha256Hex, updateIdOf } from '../protocol/chunks.ts';
import { cborEncode } from '../protocol/cbor.ts';
import { DEFAULT_CHUNK_SIZE } from '../protocol/chunks.ts';
import { decodeRelease, signRelease, type ReleaseBody, type ReleaseDraft, type ReleaseStep, type SigningKey } from '../protocol/release.ts';
import { fullModelDigest, orderChain, PublishError } from './publish.ts';

function stepFor(payload: Uint8Array, from: string | null, to: string, chunkSize: number): ReleaseStep {
  const list = chunkList(payload, chunkSize);
  return {
    updateId: updateIdOf(payload),
    from,
    to,
    size: payload.byteLength,
    sha256: sha256Hex(payload),
    chunkSize,
    chunks: chunkCount(payload.byteLength, chunkSize),
    listSha256: sha256Hex(list),
  };
}

export interface MakeBundleOptions {
  payloads: Uint8Array[];
  fullModel?: Uint8Array;
  /** Release keys (sign the manifest). */
  keys: SigningKey[];
  /** Rollout keys (sign the assignment); default the release keys. */
  rolloutKeys?: SigningKey[];
  model: string;
  group: string;
  ttlSeconds: number;
  seq?: number;
  now?: () => number;
}

/** Sign a release for the updates (a chain, and/or a full model) and pack it with their payloads (the format: protocol/bundle.ts). */
export function makeBundle(o: MakeBundleOptions): { bytes: Uint8Array; release: ReleaseBody } {
  if (o.payloads.length === 0 && !o.fullModel) throw new PublishError('bad-update', 'a bundle needs at least one update or a full model');
  const chain = o.payloads.length ? orderChain(o.payloads) : undefined;
  const target = chain?.target ?? fullModelDigest(o.fullModel!);
  if (o.fullModel && fullModelDigest(o.fullModel) !== target) throw new PublishError('bad-update', 'the full model is not the target of the updates');
  const steps = [...(chain?.links.map((l) => stepFor(l.payload, l.base, l.target, DEFAULT_CHUNK_SIZE)) ?? []), ...(o.fullModel ? [stepFor(o.fullModel, null, target, DEFAULT_CHUNK_SIZE)] : [])];
  const now = Math.floor((o.now ?? Date.now)() / 1000);
  const draft: ReleaseDraft = {
    model: o.model,
    group: o.group,
    seq: o.seq ?? now,
    issued: now,
    expires: now + o.ttlSeconds,
    target,
    steps,
    rollback: false,
    previous: chain?.links[0]?.base ?? null,
  };
  const payloads: Record<string, Uint8Array> = {};
  for (const p of [...o.payloads, ...(o.fullModel ? [o.fullModel] : [])]) payloads[updateIdOf(p)] = p;
  const signed = signRelease(draft, o.keys, o.rolloutKeys?.length ? o.rolloutKeys : o.keys);
  return { bytes: cborEncode({ v: 1, release: signed, payloads }), release: decodeRelease(signed) };
}
