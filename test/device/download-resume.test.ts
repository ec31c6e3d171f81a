/**
 * A Download after a reconnect that cut a chunk's frame (issue 20, seventh pass): the part of the
 * frame the transport kept is used when it is the start of an outstanding chunk of this update and
 * at least 1 KiB; the chunk is asked for from there (`tail`), the tail joined and checked against the
 * chunk list (a mismatch drops both and asks for the chunk whole); anything else is dropped. Real
 * storage in a temp dir, a transport that records requests and hands over the partial the test sets.
 */
import { describe, expect, it } from 'vitest';
import { RESUME_MIN_BYTES } from '../../device/chunk-resume.ts';
import { decodeRequest, encodeFrame, type ChunkRequest } from '../../protocol/frames.ts';
import { Topics } from '../../protocol/topics.ts';
import type { PartialPublish, PartialRule, Transport } from '../../transport/types.ts';
import { ownAfterEach } from '../support/cleanup.ts';
import { downloadRig } from '../support/download-rig.ts';
import { payloadStep } from '../support/payload-step.ts';
import { until } from '../support/wait.ts';

const CHUNK = 4096;
const CHUNKS = 8;
const { step, payload, list } = payloadStep(CHUNK, CHUNKS, (i) => (i * 7) % 253, 'ab'.repeat(32));
const other = payloadStep(CHUNK, CHUNKS, (i) => (i * 5) % 251, 'ab'.repeat(32));
const topics = new Topics();
const TOPIC = topics.frames('m', step.updateId, 'dev');
const chunk = (i: number) => payload.subarray(i * CHUNK, (i + 1) * CHUNK);
/** The first `n` data bytes of chunk i's frame, as a cut connection leaves them (the frame's head and n bytes of d). */
const cutFrame = (i: number, n: number, s = step, data = chunk(i)): Uint8Array => {
  const f = encodeFrame({ kind: 'chunk', updateId: s.updateId, index: i, count: s.chunks, data });
  return f.subarray(0, f.length - data.length + n);
};

const own = ownAfterEach();

async function rig() {
  const requests: ChunkRequest[] = [];
  let partial: PartialPublish | undefined;
  let rule: PartialRule | undefined;
  const transport: Partial<Transport> = {
    publish: (_t: string, p: Uint8Array | string) => {
      requests.push(decodeRequest(p as Uint8Array));
      return Promise.resolve();
    },
    keepPartial: (r: PartialRule | undefined) => (rule = r),
    takePartial: () => {
      const p = partial;
      partial = undefined;
      return p;
    },
  };
  const { d, files, clock } = await downloadRig(own, 'download-resume', step, { transport, topics, deviceId: 'dev', maxWindow: 4, idleMs: 60_000 });
  await d.start();
  d.onFrame({ kind: 'list', updateId: step.updateId, count: CHUNKS, list });
  d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 0, count: CHUNKS, data: chunk(0) });
  await until(() => files.bitmap.has(0), { what: 'chunk 0 stored', timeoutMs: 5000 });
  const held = (i: number) => until(() => files.bitmap.has(i), { what: `chunk ${i} stored`, timeoutMs: 5000 });
  return { d, files, clock, requests, held, rule: () => rule, cut: (p: PartialPublish) => (partial = p) };
}

describe('a Download resumes a chunk whose frame a reconnect cut', () => {
  it('keeps frames of its own topic only, up to one chunk packet', async () => {
    const r = await rig();
    const rule = r.rule()!;
    expect(rule.match(TOPIC)).toBe(true);
    expect(rule.match(topics.frames('m', other.step.updateId, 'dev'))).toBe(false);
    expect(rule.match(topics.frames('m', step.updateId, 'dev2'))).toBe(false);
    expect(rule.maxBytes).toBeGreaterThan(CHUNK);
    expect(rule.maxBytes).toBeLessThan(CHUNK + 512);
    expect(rule.minBytes).toBe(RESUME_MIN_BYTES);
    await r.d.close();
  });

  it('asks for the tail first, joins it, checks and stores the chunk', async () => {
    const r = await rig();
    r.cut({ topic: TOPIC, bytes: cutFrame(1, 3000) });
    const before = r.requests.length;
    r.d.resend();
    const req = r.requests[before];
    expect(req.want[0]).toBe(1);
    expect(req.tail).toEqual([[1, 3000]]);
    r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 1, count: CHUNKS, offset: 3000, data: chunk(1).subarray(3000) });
    await r.held(1);
    expect({ resumed: r.d.resumedChunks, mismatches: r.d.resumeMismatches, bad: r.d.badChunks }).toEqual({ resumed: 1, mismatches: 0, bad: 0 });
    // The prefix is gone with the join: chunk 1 is never asked from an offset again.
    expect(r.requests.slice(before + 1).flatMap((q) => q.tail ?? [])).toEqual([]);
    await r.d.close();
  });

  it("the tail answers the probe after a reconnect: the chunks lost before it are asked again, the tail's own chunk not", async () => {
    const r = await rig();
    // Chunks 1-3 arrive; 4-7 are asked for (the window is 4); the frame of 4 is cut.
    for (const i of [1, 2, 3]) r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: i, count: CHUNKS, data: chunk(i) });
    await r.held(3);
    expect(new Set(r.requests.flatMap((q) => q.want))).toEqual(new Set([0, 1, 2, 3, 4, 5, 6, 7]));
    r.cut({ topic: TOPIC, bytes: cutFrame(4, 2000) });
    r.d.resend();
    expect(r.requests.at(-1)).toEqual({ want: [4], list: false, tail: [[4, 2000]] });
    const before = r.requests.length;
    r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 4, count: CHUNKS, offset: 2000, data: chunk(4).subarray(2000) });
    // 5-7 were lost with the old connection: asked again; 4 is here (before: asked again too, a whole duplicate).
    expect(
      r.requests
        .slice(before)
        .flatMap((q) => q.want)
        .sort(),
    ).toEqual([5, 6, 7]);
    await r.held(4);
    await r.d.close();
  });

  it('a joined chunk that does not match the list: dropped, counted, asked for whole; never stored', async () => {
    const r = await rig();
    const wrong = chunk(2).slice();
    wrong[10] ^= 0xff;
    r.cut({ topic: TOPIC, bytes: cutFrame(2, 2000, step, wrong) });
    r.d.resend();
    expect(r.requests.at(-1)!.tail).toEqual([[2, 2000]]);
    const before = r.requests.length;
    r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 2, count: CHUNKS, offset: 2000, data: chunk(2).subarray(2000) });
    expect(r.d.resumeMismatches).toBe(1);
    expect(r.d.badChunks).toBe(0);
    expect(r.files.bitmap.has(2)).toBe(false);
    const again = r.requests.slice(before).find((q) => q.want.includes(2));
    expect(again?.tail).toBeUndefined();
    r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 2, count: CHUNKS, data: chunk(2) });
    await r.held(2);
    await r.d.close();
  });

  it('a stale or small partial is dropped: another update, another topic, a chunk already held, under 1 KiB, not a frame', async () => {
    const cases: Array<[string, PartialPublish]> = [
      ['another update', { topic: TOPIC, bytes: cutFrame(1, 3000, other.step, other.payload.subarray(CHUNK, 2 * CHUNK)) }],
      ['another topic', { topic: topics.frames('m', step.updateId, 'dev2'), bytes: cutFrame(1, 3000) }],
      ['a chunk already held', { topic: TOPIC, bytes: cutFrame(0, 3000) }],
      ['under 1 KiB', { topic: TOPIC, bytes: cutFrame(1, RESUME_MIN_BYTES - 1) }],
      ['garbage', { topic: TOPIC, bytes: new Uint8Array(3000).fill(0xa5) }],
    ];
    for (const [what, p] of cases) {
      const r = await rig();
      r.cut(p);
      const before = r.requests.length;
      r.d.resend();
      expect(
        r.requests.slice(before).flatMap((q) => q.tail ?? []),
        what,
      ).toEqual([]);
      await r.d.close();
    }
  });

  it('a tail that joins nothing held (its prefix gone): the chunk is asked for whole', async () => {
    const r = await rig();
    const before = r.requests.length;
    r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 3, count: CHUNKS, offset: 100, data: chunk(3).subarray(100) });
    expect(r.files.bitmap.has(3)).toBe(false);
    const again = r.requests.slice(before).find((q) => q.want.includes(3));
    expect(again).toBeDefined();
    expect(again!.tail).toBeUndefined();
    // A tail of a chunk not asked for (hostile, or long stale): nothing asked on its account.
    const n = r.requests.length;
    r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 6, count: CHUNKS, offset: 100, data: chunk(6).subarray(100) });
    expect(r.requests.slice(n).filter((q) => q.want.includes(6))).toEqual([]);
    await r.d.close();
  });

  it("a silence while the tail is out asks again for the chunk's last byte only (the probe's marker), not the tail: a late tail then comes once", async () => {
    const r = await rig();
    r.cut({ topic: TOPIC, bytes: cutFrame(1, 3000) });
    const before = r.requests.length;
    r.d.resend();
    expect(r.requests[before].tail).toEqual([[1, 3000]]);
    await r.clock.advance(r.d.link.idleTimeoutMs + 1);
    const again = r.requests.slice(before + 1);
    expect(again.map((q) => [q.want, q.tail])).toEqual([[[1], [[1, CHUNK - 1]]]]);
    // The first tail was only late: it comes and completes the chunk; then the marker, dropped.
    r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 1, count: CHUNKS, offset: 3000, data: chunk(1).subarray(3000) });
    await r.held(1);
    const n = r.requests.length;
    r.d.onFrame({ kind: 'chunk', updateId: step.updateId, index: 1, count: CHUNKS, offset: CHUNK - 1, data: chunk(1).subarray(CHUNK - 1) });
    expect(r.d.duplicateChunks).toBe(0);
    expect(r.requests.slice(n).filter((q) => q.want.includes(1))).toEqual([]);
    await r.d.close();
  });
});
