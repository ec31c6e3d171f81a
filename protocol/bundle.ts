import { cborDecode, isBytes, isRecord } from './cbor.ts';
import { ProtocolError } from './errors.ts';
import { decodeRelease } from './release.ts';

/**
 * A signed single-file bundle for sites reached by a memory stick:
 * CBOR `{v: 1, release: <signed release bytes>, payloads: {updateId: bytes}}`.
 * The release is exactly what a device would get over MQTT; the payloads are
 * what the update server would serve.
 */
export interface Bundle {
  release: Uint8Array;
  payloads: Map<string, Uint8Array>;
}

const MAX_BUNDLE_PAYLOADS = 64;

/** Unpack a bundle; the release inside is checked later exactly as a device checks one. */
export function readBundle(bytes: Uint8Array): Bundle {
  let m: unknown;
  try {
    m = cborDecode(bytes);
  } catch (e) {
    throw new ProtocolError('malformed-release', `bundle: ${(e as Error).message}`);
  }
  if (!isRecord(m) || m.v !== 1 || !isBytes(m.release) || !isRecord(m.payloads)) throw new ProtocolError('malformed-release', 'bundle must be {v: 1, release, payloads}');
  const entries = Object.entries(m.payloads);
  if (entries.length > MAX_BUNDLE_PAYLOADS) throw new ProtocolError('payload-too-large', `${entries.length} payloads in one bundle`);
  const payloads = new Map<string, Uint8Array>();
  for (const [id, p] of entries) {
    if (!isBytes(p)) throw new ProtocolError('malformed-release', `bundle payload ${id} is not bytes`);
    payloads.set(id, p);
  }
  // Fail early on an unreadable release, with the release's own reason codes.
  decodeRelease(m.release);
  return { release: m.release, payloads };
}
