import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { applyUpdateFile } from '../../device/apply.ts';
import { DeviceError } from '../../device/reasons.ts';
import { CBOR_FORMS, CborError, checkStrictCbor } from '../../protocol/cbor-strict.ts';
import { safetensorsDigest } from '../../protocol/digest.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { caseVectors, conform, type Acceptance, type Refusal } from '../../scripts/case-vectors.ts';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../protocol/vectors');
const load = (name: string) => new Uint8Array(readFileSync(path.join(dir, name)));
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const manifest = JSON.parse(readFileSync(path.join(dir, 'cases.json'), 'utf8')) as {
  procedure: string[];
  accept: Array<Acceptance & { sha256: string }>;
  refuse: Refusal[];
};

/** `fleet apply --model --update --out`, as a device applies: the reason code, or the file written. */
async function applyFile(model: string, payload: string, out: string): Promise<string> {
  try {
    await applyUpdateFile(path.join(dir, model), path.join(dir, payload), out);
  } catch (e) {
    if (e instanceof ProtocolError || e instanceof DeviceError) return e.code;
    throw e;
  }
  return 'accepted';
}

describe('conformance cases (protocol/vectors/cases.json, docs/protocol.md §7.5)', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'cases-'));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('cases.json names exactly the files in cases/, and they are what the generator writes now (deterministic, up to date)', () => {
    const named = new Set<string>();
    for (const a of manifest.accept) [a.model, a.payload, a.target].forEach((f) => named.add(f));
    for (const r of manifest.refuse) [r.model, r.payload].forEach((f) => named.add(f));
    const onDisk = readdirSync(path.join(dir, 'cases')).map((f) => `cases/${f}`);
    expect([...named].filter((f) => f.startsWith('cases/')).sort()).toEqual(onDisk.sort());
    for (const f of named) expect(existsSync(path.join(dir, f)), f).toBe(true);
    const fresh = caseVectors(load('base.safetensors'));
    expect(Object.keys(fresh.files).sort()).toEqual(onDisk.sort());
    for (const [f, bytes] of Object.entries(fresh.files)) expect(sha256(load(f)), f).toBe(sha256(bytes));
    expect(fresh.refuse).toEqual(manifest.refuse);
  });

  it('covers every CBOR rule, every safetensors refusal and every reason code of the apply path', () => {
    const forms = new Set(manifest.refuse.map((r) => r.cbor).filter(Boolean));
    expect([...CBOR_FORMS].filter((f) => !forms.has(f))).toEqual([]);
    const codes = new Set(manifest.refuse.map((r) => r.expect));
    for (const code of ['malformed-payload', 'malformed-model', 'payload-too-large', 'non-finite', 'shape-mismatch', 'unsupported-dtype', 'wrong-base', 'digest-mismatch']) {
      expect(codes.has(code as Refusal['expect']), code).toBe(true);
    }
    for (const name of ['model-gap', 'model-trailing-bytes', 'model-overlap', 'cbor-duplicate-key-last-wins', 'cbor-self-describe-tag', 'cbor-float-half', 'cbor-indefinite-bytes', 'dense-on-i8']) {
      expect(
        manifest.refuse.some((r) => r.name === name),
        name,
      ).toBe(true);
    }
  });

  it('every accepted case gives its target byte for byte, through the file path and in memory', async () => {
    expect(manifest.accept.length).toBeGreaterThanOrEqual(3);
    for (const a of manifest.accept) {
      const out = path.join(tmp, `${a.name}.safetensors`);
      expect(await applyFile(a.model, a.payload, out), a.name).toBe('accepted');
      const written = new Uint8Array(readFileSync(out));
      expect(sha256(written), a.name).toBe(a.sha256);
      expect(Buffer.from(written).equals(Buffer.from(load(a.target))), a.name).toBe(true);
      expect(safetensorsDigest(written), a.name).toBe(a.targetDigest);
      const mem = conform(load(a.model), load(a.payload));
      expect('digest' in mem && mem.digest, a.name).toBe(a.targetDigest);
    }
  });

  it('every refused case is refused with exactly its code, through the file path and in memory, writing nothing', async () => {
    expect(manifest.refuse.length).toBeGreaterThanOrEqual(80);
    const wrong: string[] = [];
    for (const r of manifest.refuse) {
      const out = path.join(tmp, `${r.name}.safetensors`);
      const got = await applyFile(r.model, r.payload, out);
      const mem = conform(load(r.model), load(r.payload));
      const memCode = 'code' in mem ? mem.code : 'accepted';
      if (got !== r.expect || memCode !== r.expect || existsSync(out)) wrong.push(`${r.name}: expected ${r.expect}, file path ${got}, in memory ${memCode}`);
      if (r.cbor) {
        let form = 'accepted';
        try {
          checkStrictCbor(load(r.payload));
        } catch (e) {
          form = e instanceof CborError ? e.form : String(e);
        }
        if (form !== r.cbor) wrong.push(`${r.name}: expected CBOR form ${r.cbor}, got ${form}`);
      }
    }
    expect(wrong).toEqual([]);
    expect(readdirSync(tmp).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('the edge case shows -0 → +0 under a low-rank delta, IEEE signs under a dense one, and NaN copied from an untouched tensor', () => {
    const edge = manifest.accept.find((a) => a.name === 'edge')!;
    const hexOf = (file: string, name: string) => {
      const b = load(file);
      const n = new DataView(b.buffer, b.byteOffset).getUint32(0, true);
      const h = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + n))) as Record<string, { data_offsets: [number, number] }>;
      const [s, e] = h[name].data_offsets;
      return Buffer.from(b.subarray(8 + n + s, 8 + n + e)).toString('hex');
    };
    expect(hexOf(edge.model, 'negzero.lowrank')).toBe('00000080'.repeat(4));
    expect(hexOf(edge.target, 'negzero.lowrank')).toBe('00000000'.repeat(4));
    expect(hexOf(edge.target, 'negzero.bf16')).toBe('0000'.repeat(4));
    expect(hexOf(edge.target, 'negzero.dense')).toBe('00000080' + '00000000' + '00000080' + '0000803f');
    expect(hexOf(edge.target, 'nan.untouched')).toBe(hexOf(edge.model, 'nan.untouched'));
    expect(hexOf(edge.target, 'nan.untouched')).toBe('0000c07f' + '0100c0ff' + '0000807f' + '000080ff');
  });
});
