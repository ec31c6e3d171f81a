/**
 * Structure-aware fuzzing of the signed documents' decoders (see fuzz.test.ts
 * for the method): manifests, assignments, signed envelopes, the composite
 * release (decodeRelease, verifyRelease), trust file JSON and signed trust
 * updates. Mutations reach every level: the release map, each envelope, and
 * each body inside. A decoder either returns a value or throws ProtocolError.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cborDecode, cborEncode, isRecord } from '../../protocol/cbor.ts';
import { sha256Hex } from '../../protocol/chunks.ts';
import { decodeManifest, encodeManifest, limitsOf, MAX_CHUNK_BYTES, MAX_PAYLOAD_BYTES, type ManifestBody, type ReleaseStep } from '../../protocol/manifest.ts';
import { decodeAssignment, encodeAssignment, maxSeqAt, type AssignmentBody } from '../../protocol/assignment.ts';
import { decodeEnvelope, signEnvelope } from '../../protocol/signed.ts';
import { composeRelease, decodeRelease, formatTrustFile, parseTrustFile, signingKeyFromSeed, signRelease, signTrust, verifyRelease, verifyTrustUpdate, type ReleaseBody, type TrustFile } from '../../protocol/release.ts';
import { corpus, decodeOrProtocolError, fieldMutation, fuzz, hexString, mutation, norm, params, SEED, text, textMutation, utf8, TEST_TIMEOUT, type Case, type Mutation } from './fuzz-kit.ts';

/** Ed25519 costs ~5-15 ms per check on a loaded machine: the signed corpora reach it in a few percent of the runs. */
const SIGNED_TIMEOUT = 240_000;

const ident = fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/).filter((s) => !/^\.+$/.test(s)); // the identifier rule: not dots alone
// chunks ≤ 2^20 and chunk ≤ 2^20 keep every size within MAX_PAYLOAD_BYTES (2^40).
const stepFields = fc
  .record({ chunk: fc.integer({ min: 1, max: 1 << 20 }), chunks: fc.integer({ min: 1, max: 1 << 20 }), r: fc.double({ min: 0, max: 1, noNaN: true }), sha256: hexString(64), list: hexString(64), sealed: fc.boolean() })
  .map(({ chunk, chunks, r, sha256, list, sealed }) => {
    const size = Math.min(chunks * chunk, (chunks - 1) * chunk + 1 + Math.floor(r * (chunk - 1)));
    return { updateId: sha256.slice(0, 32), size, sha256, chunkSize: chunk, chunks, listSha256: list, ...(sealed ? { sealed: true as const } : {}) };
  });
const manifestArb: fc.Arbitrary<ManifestBody> = fc
  .record({
    model: ident,
    digests: fc.uniqueArray(hexString(64), { minLength: 1, maxLength: 5 }),
    full: fc.boolean(),
    fields: fc.array(stepFields, { minLength: 6, maxLength: 6 }),
    order: fc.array(fc.nat(), { minLength: 6, maxLength: 6 }),
    extra: fc.tuple(fc.nat({ max: 2 ** 30 }), fc.nat({ max: 1000 }), fc.nat({ max: 1 << 20 })),
  })
  .map((x): ManifestBody => {
    const target = x.digests[x.digests.length - 1];
    const steps: ReleaseStep[] = x.digests.slice(0, -1).map((from, k) => ({ ...x.fields[k], from, to: x.digests[k + 1] }));
    if (x.full) steps.push({ ...x.fields[5], from: null, to: target });
    const shuffled = steps
      .map((s, k) => ({ s, o: x.order[k] }))
      .sort((a, b) => a.o - b.o)
      .map((p) => p.s);
    const fit = limitsOf(steps);
    const limits = {
      payloadBytes: Math.min(MAX_PAYLOAD_BYTES, fit.payloadBytes + x.extra[0]),
      chunks: fit.chunks + x.extra[1],
      chunkBytes: Math.min(MAX_CHUNK_BYTES, fit.chunkBytes + x.extra[2]),
    };
    return { model: x.model, target, steps: shuffled, limits };
  });
const assignmentArb: fc.Arbitrary<AssignmentBody> = fc
  .record({
    model: ident,
    group: ident,
    seq: fc.maxSafeNat(),
    issued: fc.integer({ min: 0, max: 2 ** 40 }),
    ttl: fc.integer({ min: 1, max: 2 ** 40 }),
    manifest: hexString(64),
    rollback: fc.boolean(),
    previous: fc.option(hexString(64), { nil: null }),
  })
  .map(({ ttl, ...a }): AssignmentBody => ({ ...a, seq: a.seq % (maxSeqAt(a.issued) + 1), expires: a.issued + ttl }));

const keys = [1, 2, 3, 4, 5].map((n) => signingKeyFromSeed(new Uint8Array(32).fill(n)));
const pub = (...ks: typeof keys) => ks.map((k) => ({ id: k.id, publicKey: k.publicKey }));
/** Made-up signatures (signing 10,000 documents would take minutes); mostly by unknown keys, which stop before Ed25519. */
const sigsOf = (unknownWeight: number) =>
  fc.array(
    fc.record({
      k: fc.oneof({ weight: 1, arbitrary: fc.constantFrom(...keys.map((k) => k.id)) }, { weight: unknownWeight, arbitrary: hexString(64) }),
      s: fc.uint8Array({ minLength: 64, maxLength: 64 }),
    }),
    { minLength: 1, maxLength: 3 },
  );
const sigsArb = sigsOf(5);
const toSigs = (sigs: Array<{ k: string; s: Uint8Array }>) => sigs.map((x) => ({ keyId: x.k, sig: x.s }));

/** A release with made-up signatures: its manifest, its assignment (naming the manifest's hash), and their envelopes. */
interface Composite {
  m: ManifestBody;
  a: Omit<AssignmentBody, 'manifest' | 'model'>;
  ms: Array<{ k: string; s: Uint8Array }>;
  as: Array<{ k: string; s: Uint8Array }>;
}
const compositeArb: fc.Arbitrary<Composite> = fc.record({ m: manifestArb, a: assignmentArb.map(({ manifest: _m, model: _x, ...a }) => a), ms: sigsArb, as: sigsArb });
function encodeComposite(c: Composite): Uint8Array {
  const mb = encodeManifest(c.m);
  const ab = encodeAssignment({ ...c.a, model: c.m.model, manifest: sha256Hex(mb) });
  return composeRelease({ manifest: cborEncode({ body: mb, sigs: c.ms }), assignment: cborEncode({ body: ab, sigs: c.as }) });
}
const expectedComposite = (c: Composite): ReleaseBody => ({ ...c.a, ...c.m, manifest: sha256Hex(encodeManifest(c.m)) });

/**
 * Mutates one level of a release: the release map itself, one envelope, or
 * the body inside one envelope; the levels above are re-encoded around it.
 */
const deepMutation: fc.Arbitrary<Mutation> = fc.tuple(fc.integer({ min: 0, max: 4 }), mutation).map(([level, m]): Mutation => (b) => {
  let outer: unknown;
  try {
    outer = cborDecode(b);
  } catch {
    return m(b);
  }
  if (level === 0 || !isRecord(outer)) return m(b);
  const slot = level % 2 === 1 ? 'manifest' : 'assignment';
  const env = outer[slot];
  if (!(env instanceof Uint8Array)) return m(b);
  if (level <= 2) return cborEncode({ ...outer, [slot]: m(env) });
  let e: unknown;
  try {
    e = cborDecode(env);
  } catch {
    return m(b);
  }
  if (!isRecord(e) || !(e.body instanceof Uint8Array)) return m(b);
  return cborEncode({ ...outer, [slot]: cborEncode({ ...e, body: m(e.body) }) });
});
const releaseMutation = fc.oneof(deepMutation, mutation);

describe('fuzz: manifests and assignments', () => {
  it('decodeManifest', () => fuzz(corpus(manifestArb, encodeManifest), decodeManifest), TEST_TIMEOUT);
  it('decodeAssignment', () => fuzz(corpus(assignmentArb, encodeAssignment), decodeAssignment), TEST_TIMEOUT);
  it(
    'decodeEnvelope (bodies of any bytes, and manifest bodies)',
    () => {
      const envArb = fc.record({ body: fc.oneof(fc.uint8Array({ maxLength: 80 }), manifestArb.map(encodeManifest)), sigs: sigsArb });
      fuzz(
        corpus(envArb, (e) => cborEncode(e)),
        (b) => decodeEnvelope(b, 'malformed-release', 'fuzz'),
        (e) => ({ body: e.body, sigs: toSigs(e.sigs) }),
      );
    },
    TEST_TIMEOUT,
  );
});

// Trust files: one role (keys 0; 0+1 of 2) and two roles (release 0 / rollout 3; release 0,1 of 2 / rollout 3,4 of 2).
const trusts: TrustFile[] = [
  { version: 0, threshold: 1, keys: pub(keys[0]) },
  { version: 0, threshold: 2, keys: pub(keys[0], keys[1]) },
  { version: 0, threshold: 1, keys: pub(keys[0]), rollout: { threshold: 1, keys: pub(keys[3]) } },
  { version: 0, threshold: 2, keys: pub(keys[0], keys[1]), rollout: { threshold: 2, keys: pub(keys[3], keys[4]) } },
];
/** Really signed releases, signed once: [release signers, rollout signers] and which trust files accept them. */
const signers: Array<{ rel: typeof keys; rol: typeof keys; ok: number[] }> = [
  { rel: [keys[0]], rol: [keys[0]], ok: [0] },
  { rel: [keys[0], keys[1]], rol: [keys[0], keys[1]], ok: [0, 1] },
  { rel: [keys[0]], rol: [keys[3]], ok: [2] },
  { rel: [keys[0], keys[1]], rol: [keys[3], keys[4]], ok: [2, 3] },
];
const signedPool = fc.sample(fc.record({ m: manifestArb, a: assignmentArb }), { numRuns: 12, seed: SEED }).map(({ m, a }, i) => {
  const s = signers[i % signers.length];
  const bytes = signRelease({ ...a, ...m }, s.rel, s.rol);
  return { bytes, ok: s.ok, body: { ...a, ...m, manifest: sha256Hex(encodeManifest(m)) } as ReleaseBody };
});

describe('fuzz: releases', () => {
  it(
    'decodeRelease (the release map, both envelopes and both bodies)',
    () => {
      fuzz(corpus(compositeArb, encodeComposite, releaseMutation), decodeRelease, expectedComposite);
    },
    TEST_TIMEOUT,
  );

  it(
    'verifyRelease against one- and two-role trust files',
    () => {
      type Signed = { kind: 'signed'; bytes: Uint8Array; ok: number[]; body: ReleaseBody } | { kind: 'other'; bytes: Uint8Array };
      const signed = fc
        .constantFrom(...signedPool)
        .chain((p) => fc.oneof({ weight: 1, arbitrary: fc.constant<Signed>({ kind: 'signed', ...p }) }, { weight: 3, arbitrary: releaseMutation.map((m): Signed => ({ kind: 'other', bytes: m(p.bytes) })) }));
      const fake = corpus(compositeArb, encodeComposite, releaseMutation).map((x): Signed => ({ kind: 'other', bytes: x.bytes }));
      const arb = fc.tuple(fc.oneof({ weight: 1, arbitrary: signed }, { weight: 20, arbitrary: fake }), fc.nat({ max: trusts.length - 1 }));
      fc.assert(
        fc.property(arb, ([x, t]) => {
          const out = decodeOrProtocolError(() => verifyRelease(x.bytes, trusts[t]));
          // A genuinely signed release verifies exactly where its signers meet both roles' thresholds.
          if (x.kind === 'signed') expect(out === undefined ? undefined : norm(out)).toEqual(x.ok.includes(t) ? norm(x.body) : undefined);
        }),
        params,
      );
    },
    SIGNED_TIMEOUT,
  );
});

// --- trust files and their signed updates ------------------------------------------

const trustArb: fc.Arbitrary<TrustFile> = fc
  .record({
    rel: fc.subarray(keys, { minLength: 1 }),
    split: fc.nat({ max: 5 }),
    th: fc.nat(),
    rth: fc.nat(),
    version: fc.option(fc.maxSafeNat(), { nil: undefined }),
  })
  .map(({ rel, split, th, rth, version }): TrustFile => {
    // Keys after `split` (when any remain) form the rollout role.
    const cut = Math.max(1, Math.min(split, rel.length));
    const release = rel.slice(0, cut);
    const rollout = rel.slice(cut);
    const t: TrustFile = { version: version ?? 0, threshold: 1 + (th % release.length), keys: pub(...release) };
    if (rollout.length) t.rollout = { threshold: 1 + (rth % rollout.length), keys: pub(...rollout) };
    return t;
  });

/** Mutates the body of a signed trust update (or its trust text), re-encoding the envelope around it. */
const deepTrust: fc.Arbitrary<Mutation> = fc.tuple(fc.boolean(), mutation, textMutation).map(([inText, m, tm]): Mutation => (b) => {
  let e: unknown;
  try {
    e = cborDecode(b);
  } catch {
    return m(b);
  }
  if (!isRecord(e) || !(e.body instanceof Uint8Array)) return m(b);
  if (!inText) return cborEncode({ ...e, body: m(e.body) });
  let inner: unknown;
  try {
    inner = cborDecode(e.body);
  } catch {
    return m(b);
  }
  if (!isRecord(inner) || typeof inner.trust !== 'string') return m(b);
  return cborEncode({ ...e, body: cborEncode({ ...inner, trust: text(tm(utf8(inner.trust))) }) });
});

describe('fuzz: trust files', () => {
  it(
    'parseTrustFile',
    () => {
      const arb = fc.oneof({ weight: 9, arbitrary: corpus(trustArb, (t) => utf8(formatTrustFile(t)), textMutation) }, { weight: 1, arbitrary: fc.json().map((j): Case<TrustFile> => ({ valid: false, bytes: utf8(j) })) });
      fuzz(arb, (b) => parseTrustFile(text(b)));
    },
    TEST_TIMEOUT,
  );

  it(
    'verifyTrustUpdate against one- and two-role trust files',
    () => {
      const current: TrustFile[] = trusts.map((t, i) => ({ ...t, version: 5 + i }));
      const nextArb = trustArb.map((t) => ({ ...t, version: 6 + ((t.version ?? 0) % 100) }));
      /** Really signed updates, signed once, by the release keys of current[i]: version 6.. so 5 and 6 (current 0, 1) accept some. */
      const pool = fc.sample(nextArb, { numRuns: 8, seed: SEED }).map((next, i) => {
        const by = current[i % current.length];
        const bytes = signTrust(
          next,
          keys.filter((k) => by.keys.some((x) => x.id === k.id)),
        );
        return { bytes, next, by: i % current.length };
      });
      const body = (next: TrustFile) => cborEncode({ v: 1, type: 'trust', trust: formatTrustFile(next) });
      /** Body mutations signed for real (rare: signing costs milliseconds): the body parser after a valid signature. */
      const resigned = fc
        .tuple(
          nextArb,
          fc.oneof(
            fieldMutation,
            fc.constant<Mutation>((b) => b),
          ),
          textMutation,
          fc.boolean(),
        )
        .map(([next, m, tm, inText]) => {
          let b = body(next);
          if (inText) b = cborEncode({ v: 1, type: 'trust', trust: text(tm(utf8(formatTrustFile(next)))) });
          else b = m(b);
          return signEnvelope(b, [keys[0], keys[1]]);
        });
      type U = { kind: 'signed'; bytes: Uint8Array; next: TrustFile; by: number } | { kind: 'other'; bytes: Uint8Array };
      // Made-up signatures by trusted keys only show bad-signature here (the body is parsed after a valid one): keep them rare.
      const fake = fc
        .record({ next: nextArb, sigs: sigsOf(30) })
        .chain(({ next, sigs }) =>
          fc.oneof({ weight: 1, arbitrary: fc.constant(cborEncode({ body: body(next), sigs })) }, { weight: 6, arbitrary: fc.oneof(mutation, deepTrust).map((m) => m(cborEncode({ body: body(next), sigs }))) }),
        )
        .map((bytes): U => ({ kind: 'other', bytes }));
      const arb = fc.tuple(
        fc.oneof(
          { weight: 1, arbitrary: fc.constantFrom(...pool).map((p): U => ({ kind: 'signed', ...p })) },
          { weight: 1, arbitrary: fc.constantFrom(...pool).chain((p) => fc.oneof(mutation, deepTrust).map((m): U => ({ kind: 'other', bytes: m(p.bytes) }))) },
          { weight: 1, arbitrary: resigned.map((bytes): U => ({ kind: 'other', bytes })) },
          { weight: 60, arbitrary: fake },
        ),
        fc.nat({ max: current.length - 1 }),
      );
      fc.assert(
        fc.property(arb, ([x, c]) => {
          const out = decodeOrProtocolError(() => verifyTrustUpdate(x.bytes, current[c]));
          if (x.kind === 'signed') {
            // Accepted when the signers meet current[c]'s release threshold (current 0 and 2: key 0; 1 and 3: keys 0 and 1).
            const signedBy = x.by % 2 === 0 ? [0] : [0, 1];
            const needs = c % 2 === 0 ? [0] : [0, 1];
            const ok = needs.every((k) => signedBy.includes(k)) && (x.next.version ?? 0) > (current[c].version ?? 0);
            expect(out === undefined ? undefined : norm(out.trust)).toEqual(ok ? norm(x.next) : undefined);
          }
        }),
        params,
      );
    },
    SIGNED_TIMEOUT,
  );
});
