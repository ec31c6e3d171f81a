import nacl from 'tweetnacl';
import { ProtocolError } from './errors.ts';

/**
 * Optional end-to-end payload encryption: a payload sealed with
 * nacl.secretbox (XSalsa20-Poly1305) under a 32-byte key provisioned per
 * group, so whoever runs the broker or the update server cannot read the
 * weights. Sealed bytes: nonce (24) ‖ box. The release marks the step
 * `sealed`; its SHA-256 and chunk list are over the sealed bytes, so chunks
 * are checked before anything is decrypted.
 */
export const GROUP_KEY_BYTES = nacl.secretbox.keyLength;
const NONCE = nacl.secretbox.nonceLength;

export function sealPayload(plain: Uint8Array, key: Uint8Array, nonce: Uint8Array = nacl.randomBytes(NONCE)): Uint8Array {
  if (key.byteLength !== GROUP_KEY_BYTES) throw new TypeError(`a group key is ${GROUP_KEY_BYTES} bytes`);
  const box = nacl.secretbox(plain, nonce, key);
  const out = new Uint8Array(NONCE + box.byteLength);
  out.set(nonce, 0);
  out.set(box, NONCE);
  return out;
}

export function openPayload(sealed: Uint8Array, key: Uint8Array): Uint8Array {
  if (key.byteLength !== GROUP_KEY_BYTES) throw new ProtocolError('undecryptable', 'the group key is not 32 bytes');
  if (sealed.byteLength < NONCE + nacl.secretbox.overheadLength) throw new ProtocolError('undecryptable', 'too short to be sealed');
  const plain = nacl.secretbox.open(sealed.subarray(NONCE), sealed.subarray(0, NONCE), key);
  if (!plain) throw new ProtocolError('undecryptable', 'the payload does not open with this group key');
  return plain;
}

/** Group key file: JSON {"groupKey": base64 of 32 bytes}. */
export function parseGroupKeyFile(text: string): Uint8Array {
  let j: { groupKey?: unknown };
  try {
    j = JSON.parse(text) as { groupKey?: unknown };
  } catch (e) {
    throw new ProtocolError('undecryptable', `group key file: ${(e as Error).message}`);
  }
  const key = typeof j.groupKey === 'string' ? new Uint8Array(Buffer.from(j.groupKey, 'base64')) : new Uint8Array();
  if (key.byteLength !== GROUP_KEY_BYTES) throw new ProtocolError('undecryptable', 'group key file must be {"groupKey": base64 of 32 bytes}');
  return key;
}

export function formatGroupKeyFile(key: Uint8Array): string {
  return JSON.stringify({ groupKey: Buffer.from(key).toString('base64') }) + '\n';
}

export function newGroupKey(): Uint8Array {
  return nacl.randomBytes(GROUP_KEY_BYTES);
}
