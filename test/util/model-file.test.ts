/**
 * digestModelFile reads each tensor in pieces of at most 256 KiB: the digest is the
 * same as over the whole file in memory (safetensorsDigest), for tensors smaller than,
 * equal to and larger than a piece (and empty ones), and a file whose header promises
 * more bytes than it holds is refused as malformed-model.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { safetensorsDigest } from '../../protocol/digest.ts';
import { writeSafetensors } from '../../protocol/safetensors.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { ProtocolError } from '../../protocol/errors.ts';

const dir = mkdtempSync(path.join(os.tmpdir(), 'model-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

describe('digestModelFile', () => {
  it("is the in-memory digest, whatever the tensors' sizes against its 256 KiB pieces", async () => {
    const piece = 256 * 1024;
    const sizes = [0, 4, piece - 4, piece, piece + 4, 3 * piece + 8];
    const model = writeSafetensors(sizes.map((n, i) => ({ name: `t${i}`, dtype: 'F32' as const, shape: [n / 4], data: bytes(n, i) })));
    const file = path.join(dir, 'm.safetensors');
    writeFileSync(file, model);
    expect(await digestModelFile(file)).toBe(safetensorsDigest(model));
    // One byte changed in the last piece of the largest tensor changes it.
    const changed = model.slice();
    changed[changed.length - 1] ^= 1;
    writeFileSync(file, changed);
    expect(await digestModelFile(file)).not.toBe(safetensorsDigest(model));
    expect(await digestModelFile(file)).toBe(safetensorsDigest(changed));
  });

  it('refuses a file shorter than its header says', async () => {
    const model = writeSafetensors([{ name: 'w', dtype: 'F32', shape: [200_000], data: bytes(800_000, 1) }]);
    const file = path.join(dir, 'short.safetensors');
    writeFileSync(file, model.subarray(0, model.byteLength - 1000));
    const e = await digestModelFile(file).then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(ProtocolError);
    expect((e as ProtocolError).code).toBe('malformed-model');
  });
});
