/**
 * Apply keeps nothing proportional to the payload alive (issue 17, item 3): the
 * payload is decoded from disk tensor by tensor during verify and apply, so the
 * memory kept alive while applying a 32 MiB update to a 32 MiB model is a few
 * tensors' worth (~6 MiB), not the payload. Measured in a child (test/support/apply-memory-child.ts)
 * as the live set after forced full collections, so V8's timing does not enter it.
 * Checked against the code before streaming (the payload decoded whole): there the
 * live set grew by more than twice the payload. The same for an ONNX model (the same
 * tensors as Gemm initializers): its apply splices the file record by record.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodePayload, type Payload } from '../../protocol/lowrank.ts';
import { applyToModel } from '../../protocol/delta-apply.ts';
import { safetensorsDigest } from '../../protocol/digest.ts';
import { writeSafetensors } from '../../protocol/safetensors.ts';
import { onnxDigest } from '../../protocol/onnx.ts';
import { buildOnnxModel } from '../../publisher/onnx-build.ts';
import { applyToOnnxFile } from '../../util/onnx-file.ts';

const CHILD = fileURLToPath(new URL('../support/apply-memory-child.ts', import.meta.url));
const TENSORS = 32;
const SIDE = 512; // 512×512 float32: 1 MiB a tensor, 32 MiB the model and (dense deltas) the payload

function f32(n: number, seed: number): Uint8Array {
  const a = new Float32Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) % 2147483648;
    a[i] = x / 2147483648 - 0.5;
  }
  return new Uint8Array(a.buffer);
}

function runChild(args: string[]): Promise<{ baseline: number; peak: number; samples: number; target: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`the child exited ${code}: ${err.slice(-2000)}`));
      else resolve(JSON.parse(out.trim().split('\n').pop()!));
    });
  });
}

/** The tensors as an ONNX model: a chain of Gemm layers (transB = 1, as PyTorch exports nn.Linear). */
function onnxModel(tensors: Array<{ name: string; dtype: 'F32'; shape: number[]; data: Uint8Array }>): Uint8Array {
  return buildOnnxModel({
    nodes: tensors.map((t, k) => ({ name: `fc${k}`, op: 'Gemm', inputs: [k === 0 ? 'x' : `h${k - 1}`, t.name], outputs: [`h${k}`], attrs: { transB: 1 } })),
    initializers: tensors,
    inputs: [{ name: 'x', shape: ['N', SIDE] }],
    outputs: [{ name: `h${tensors.length - 1}`, shape: ['N', SIDE] }],
  });
}

describe.each(['safetensors', 'onnx'] as const)('apply memory, %s (slow)', (format) => {
  let dir: string;
  let model: string;
  let update: string;
  let target: string;
  let payloadBytes: number;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'apply-memory-'));
    const tensors = Array.from({ length: TENSORS }, (_, i) => ({ name: `layer${String(i).padStart(2, '0')}.weight`, dtype: 'F32' as const, shape: [SIDE, SIDE], data: f32(SIDE * SIDE, i + 1) }));
    const modelBytes = format === 'onnx' ? onnxModel(tensors) : writeSafetensors(tensors);
    model = path.join(dir, `model.${format}`);
    writeFileSync(model, modelBytes);
    const base = format === 'onnx' ? onnxDigest(modelBytes) : safetensorsDigest(modelBytes);
    const draft: Payload = { v: 1, base, target: '0'.repeat(64), tensors: tensors.map((t, i) => ({ name: t.name, shape: t.shape, dense: f32(SIDE * SIDE, 1000 + i) })) };
    target = format === 'onnx' ? await applyToOnnxFile(model, draft, null) : applyToModel(modelBytes, draft).digest;
    const payload = encodePayload({ ...draft, target });
    payloadBytes = payload.byteLength;
    update = path.join(dir, 'update.cbor');
    writeFileSync(update, payload);
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('applying a 32 MiB update to a 32 MiB model keeps under a third of it alive, and gives the target', async () => {
    const r = await runChild([model, update, path.join(dir, `out.${format}`)]);
    const grew = r.peak - r.baseline;
    process.stdout.write(`apply-memory (${format}): payload ${payloadBytes} B, live set grew by ${(grew / 2 ** 20).toFixed(1)} MiB at most (${r.samples} samples)\n`);
    expect(r.target).toBe(target);
    expect(r.samples).toBeGreaterThanOrEqual(5); // sampled while it applied, not only before and after
    expect(grew).toBeGreaterThan(0);
    // What stays alive is a few tensors' worth (1 MiB each): the base and output buffers, one item read
    // from the payload file and its decoded copy, its values as doubles (2 MiB); whole, it was over 64 MiB.
    expect(grew).toBeLessThan(payloadBytes / 3);
  }, 300_000);
});
