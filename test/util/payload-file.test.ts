/**
 * A device's verify and apply allocate nothing per tensor (issue 17: the peak memory
 * of an update must not grow with the model): each delta read from a payload file is
 * decoded into arrays reused from tensor to tensor, its factors' bytes included.
 * Before, every tensor's factors were copied into new arrays (64 KiB a tensor for a
 * rank-8 1024×1024 update), garbage V8 freed only at its next full collection, so a
 * 100-tensor apply ended ~3 MB higher than a 25-tensor one. decodePayload, which keeps
 * every delta, still gives each its own copy.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { safetensorsDigest } from '../../protocol/digest.ts';
import { decodePayload, encodePayload, type LowRankDelta, type Payload } from '../../protocol/lowrank.ts';
import { applyToModel } from '../../protocol/delta-apply.ts';
import { writeSafetensors } from '../../protocol/safetensors.ts';
import { applyToFile } from '../../util/apply-file.ts';
import { PayloadFile } from '../../util/payload-file.ts';

const SIDE = 64;
const RANK = 4;
const TENSORS = 3;

function f32(n: number, seed: number): Uint8Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(seed * 7919 + i) / 8;
  return new Uint8Array(a.buffer);
}

describe('PayloadFile: deltas decoded into reused arrays', () => {
  let dir: string;
  let payloadFile: string;
  let modelFile: string;
  let payload: Payload;
  let modelBytes: Uint8Array;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'payload-file-'));
    const tensors = Array.from({ length: TENSORS }, (_, i) => ({ name: `t${i}`, dtype: 'F32' as const, shape: [SIDE, SIDE], data: f32(SIDE * SIDE, i + 1) }));
    modelBytes = writeSafetensors(tensors);
    const deltas: LowRankDelta[] = tensors.map((t, i) => ({ name: t.name, shape: t.shape, rank: RANK, dtype: 'f32', u: f32(SIDE * RANK, 100 + i), v: f32(RANK * SIDE, 200 + i) }));
    const draft: Payload = { v: 1, base: safetensorsDigest(modelBytes), target: '0'.repeat(64), tensors: deltas };
    payload = { ...draft, target: applyToModel(modelBytes, draft).digest };
    payloadFile = path.join(dir, 'payload');
    modelFile = path.join(dir, 'model.safetensors');
    writeFileSync(payloadFile, encodePayload(payload));
    writeFileSync(modelFile, modelBytes);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads every tensor into the same arrays, each with its own values', async () => {
    const file = await PayloadFile.verify(payloadFile);
    const reader = await file.open();
    try {
      const seen: LowRankDelta[] = [];
      for (let i = 0; i < TENSORS; i++) {
        const d = (await reader.delta(`t${i}`)) as LowRankDelta;
        // The values are this tensor's (checked before the next read reuses the arrays).
        const want = payload.tensors[i] as LowRankDelta;
        expect(Buffer.from(d.u).equals(Buffer.from(want.u))).toBe(true);
        expect(Buffer.from(d.v).equals(Buffer.from(want.v))).toBe(true);
        seen.push(d);
      }
      // No new array per tensor: the second and third deltas' bytes live where the first's did.
      for (const d of seen.slice(1)) {
        expect(d.u.buffer).toBe(seen[0].u.buffer);
        expect(d.v.buffer).toBe(seen[0].v.buffer);
      }
    } finally {
      await reader.close();
    }
  });

  it('applies to the model file with the digest of the in-memory apply', async () => {
    const file = await PayloadFile.verify(payloadFile);
    expect(await applyToFile(modelFile, file, path.join(dir, 'out.safetensors'))).toBe(payload.target);
  });

  it('decodePayload keeps a copy of each delta (nothing shared between them)', () => {
    const decoded = decodePayload(encodePayload(payload)).tensors as LowRankDelta[];
    expect(new Set(decoded.map((d) => d.u.buffer)).size).toBe(TENSORS);
    decoded.forEach((d, i) => expect(Buffer.from(d.u).equals(Buffer.from((payload.tensors[i] as LowRankDelta).u))).toBe(true));
  });
});
