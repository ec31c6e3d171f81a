import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { decodePayload, isLowRank } from '../../protocol/lowrank.ts';
import { decodeUpdateFile, encodeUpdateFile, UPDATE_FILE_HEADER_BYTES, UpdateFileError } from '../../protocol/update-file.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const payload = new Uint8Array(readFileSync(path.join(here, '../../protocol/vectors/payload.cbor')));
const doc = readFileSync(path.join(here, '../../docs/protocol.md'), 'utf8');

function problem(bytes: Uint8Array): string | undefined {
  try {
    decodeUpdateFile(bytes, 'u.cbor');
    return undefined;
  } catch (e) {
    return e instanceof UpdateFileError ? e.code : `other: ${(e as Error).message}`;
  }
}

describe('the update file carries the SHA-256 of its payload (docs/protocol.md §6.1)', () => {
  it("the vector of the document: magic, then the payload's SHA-256, then the payload", () => {
    const file = encodeUpdateFile(payload);
    const hex = Buffer.from(file.subarray(0, UPDATE_FILE_HEADER_BYTES)).toString('hex');
    const section = doc.slice(doc.indexOf('### 6.1'), doc.indexOf('## 7.'));
    const [magic, digest] = [...section.matchAll(/`([0-9a-f]{32,64})`/g)].map((m) => m[1]);
    expect(hex).toBe(magic + digest);
    expect(Buffer.compare(decodeUpdateFile(file, 'u.cbor'), payload)).toBe(0);
  });

  it('a flipped factor byte, a cut-off file and a bare payload are refused, each by name', () => {
    const file = encodeUpdateFile(payload);
    const u = decodePayload(payload).tensors.find(isLowRank)!.u;
    const at = Buffer.from(file).indexOf(Buffer.from(u));
    expect(at).toBeGreaterThan(UPDATE_FILE_HEADER_BYTES);
    const flipped = file.slice();
    flipped[at + 1] ^= 0x01;
    expect(problem(flipped)).toBe('damaged-update');
    expect(problem(file.subarray(0, file.byteLength - 1))).toBe('damaged-update');
    expect(problem(file.subarray(0, 20))).toBe('damaged-update');
    expect(problem(payload)).toBe('no-check');
    expect(problem(new Uint8Array(0))).toBe('no-check');
    expect(problem(file)).toBeUndefined();
  });
});
