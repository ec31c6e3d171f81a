import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../../protocol/errors.ts';
import { formatGroupKeyFile, newGroupKey, openPayload, parseGroupKeyFile, sealPayload } from '../../protocol/seal.ts';

const code = (f: () => unknown): string => {
  try {
    f();
    return 'no error';
  } catch (e) {
    return e instanceof ProtocolError ? e.code : `other: ${String(e)}`;
  }
};

describe('sealed payloads', () => {
  const key = new Uint8Array(32).fill(7);
  const plain = new TextEncoder().encode('the weights of a model, or any bytes at all');

  it('round-trips with the key; the sealed bytes do not contain the plaintext; a fixed nonce gives a fixed vector', () => {
    const sealed = sealPayload(plain, key);
    expect(Buffer.from(sealed).includes(Buffer.from(plain.subarray(0, 16)))).toBe(false);
    expect(openPayload(sealed, key)).toEqual(plain);
    const nonce = new Uint8Array(24).fill(1);
    const a = sealPayload(plain, key, nonce);
    expect(Buffer.from(a.subarray(0, 24))).toEqual(Buffer.from(nonce));
    expect(a.byteLength).toBe(24 + 16 + plain.byteLength);
    expect(Buffer.from(sealPayload(plain, key, nonce)).equals(Buffer.from(a))).toBe(true);
  });

  it('refuses a wrong key, any flipped byte, and short input with `undecryptable`', () => {
    const sealed = sealPayload(plain, key);
    expect(code(() => openPayload(sealed, new Uint8Array(32).fill(8)))).toBe('undecryptable');
    for (let i = 0; i < sealed.byteLength; i += 7) {
      const bad = new Uint8Array(sealed);
      bad[i] ^= 0x40;
      expect(code(() => openPayload(bad, key))).toBe('undecryptable');
    }
    expect(code(() => openPayload(sealed.subarray(0, 30), key))).toBe('undecryptable');
    expect(code(() => openPayload(sealed, new Uint8Array(31)))).toBe('undecryptable');
  });

  it('group key files round-trip and are validated', () => {
    const k = newGroupKey();
    expect(parseGroupKeyFile(formatGroupKeyFile(k))).toEqual(k);
    expect(code(() => parseGroupKeyFile('{"groupKey":"AAAA"}'))).toBe('undecryptable');
    expect(code(() => parseGroupKeyFile('not json'))).toBe('undecryptable');
  });
});
