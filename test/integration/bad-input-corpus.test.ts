/**
 * Bad-input corpus, part 1: frames injected on a device's own `…/to/{deviceId}`
 * topic while it downloads, and broken model files. Part 2
 * (bad-input-corpus-releases.test.ts) has releases and payloads.
 *
 * Frames: one in-process agent on a real Aedes broker; the update server answers
 * 150 ms late so the injected frames arrive first. Every case starts from a known
 * running digest with a fresh update built from it, and ends either `ok` on the
 * update's target (a frame that is dropped or counted is harmless) or
 * `failed`/<reason> with the model unchanged. A malformed frame is dropped
 * (protocol §4.1, §9: `malformed-frame`, "dropped"); the device does not put that
 * in its status, so those cases check the agent's log for the code.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { DeviceAgent } from '../../device/agent.ts';
import { cborEncode } from '../../protocol/cbor.ts';
import { chunkCount, chunkList, chunkRange, sha256Hex } from '../../protocol/chunks.ts';
import { PROTOCOL_REASONS, ProtocolError } from '../../protocol/errors.ts';
import { encodeFrame, type ChunkRequest, decodeRequest } from '../../protocol/frames.ts';
import { synthesizeModel, synthesizeUpdate, type SynthUpdate } from '../../publisher/synth.ts';
import { ContentStore } from '../../server/content-store.ts';
import { UpdateServer } from '../../server/update-server.ts';
import { silentLogger, type Logger } from '../../util/log.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { expectNoEventWithin } from '../support/wait.ts';
import { CHUNK, connect, createFixture, currentDigest, MODEL, publish, SMALL_LAYERS, startAgent, StatusWatch, tempDir, topics, type Fixture } from '../support/harness.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';
import { transportWith } from '../support/transport-with.ts';

let cases = 0;
afterAll(() => console.log(`bad-input corpus, part 1 (frames, model files): ${cases} cases`));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// --- frames -------------------------------------------------------------------

interface Ctx {
  updateId: string;
  payload: Uint8Array;
  chunks: number;
}
interface FrameCase {
  name: string;
  /** Frames to inject in answer to this request (called for every request of the device; `n` counts them). */
  inject(req: ChunkRequest, c: Ctx, n: number): Uint8Array[];
  end: { state: 'ok' } | { state: 'failed'; reason: string };
  /** The agent's log names this code for a dropped frame. */
  dropped?: 'malformed-frame';
  badChunks?: number;
  duplicates?: boolean;
}

const chunkOf = (c: Ctx, i: number): Uint8Array => {
  const [b, e] = chunkRange(c.payload.byteLength, CHUNK, i);
  return c.payload.subarray(b, e);
};
const goodChunk = (c: Ctx, i: number) => encodeFrame({ kind: 'chunk', updateId: c.updateId, index: i, count: c.chunks, data: chunkOf(c, i) });
/** Inject on the first request that asks for chunks (the device holds the list by then). */
const onFirstChunks = (make: (c: Ctx, i: number) => Uint8Array[]) => {
  let done = false;
  return (req: ChunkRequest, c: Ctx): Uint8Array[] => {
    if (done || req.want.length === 0) return [];
    done = true;
    return make(c, req.want[0]);
  };
};
/** Inject on the list request, before the server's list. */
const onList =
  (make: (c: Ctx) => Uint8Array[]) =>
  (req: ChunkRequest, c: Ctx, n: number): Uint8Array[] =>
    req.list && n === 0 ? make(c) : [];

function frameCases(): FrameCase[] {
  const ok = { state: 'ok' } as const;
  const oversized = (c: Ctx, i: number) => encodeFrame({ kind: 'chunk', updateId: c.updateId, index: i, count: c.chunks, data: new Uint8Array(CHUNK + 1).fill(7) });
  return [
    { name: 'frame: truncated CBOR of a chunk frame is dropped', dropped: 'malformed-frame', end: ok, inject: onFirstChunks((c, i) => [goodChunk(c, i).subarray(0, 40)]) },
    { name: 'frame: malformed CBOR (a break byte, garbage) is dropped', dropped: 'malformed-frame', end: ok, inject: onFirstChunks(() => [new Uint8Array([0xff, 0xfe, 0x00, 0x41])]) },
    { name: 'frame: two CBOR items (trailing bytes) are dropped', dropped: 'malformed-frame', end: ok, inject: onFirstChunks((c, i) => [Buffer.concat([goodChunk(c, i), new Uint8Array([0])])]) },
    {
      name: 'frame: update id that is not 32 hex digits is dropped',
      dropped: 'malformed-frame',
      end: ok,
      inject: onFirstChunks((c, i) => [cborEncode({ v: 1, u: c.updateId.toUpperCase(), i, n: c.chunks, d: chunkOf(c, i) })]),
    },
    { name: 'frame: chunk index >= count is dropped', dropped: 'malformed-frame', end: ok, inject: onFirstChunks((c) => [cborEncode({ v: 1, u: c.updateId, i: c.chunks, n: c.chunks, d: new Uint8Array(10) })]) },
    { name: 'frame: protocol version 2 is dropped', dropped: 'malformed-frame', end: ok, inject: onFirstChunks((c, i) => [cborEncode({ v: 2, u: c.updateId, i, n: c.chunks, d: chunkOf(c, i) })]) },
    { name: 'frame: chunk data that is not a byte string is dropped', dropped: 'malformed-frame', end: ok, inject: onFirstChunks((c, i) => [cborEncode({ v: 1, u: c.updateId, i, n: c.chunks, d: 'text' })]) },
    {
      name: 'frame: a well-formed chunk of another update is ignored',
      end: ok,
      badChunks: 0,
      inject: onFirstChunks((c, i) => [encodeFrame({ kind: 'chunk', updateId: 'f'.repeat(32), index: i, count: c.chunks, data: chunkOf(c, i) })]),
    },
    {
      name: 'frame: a chunk with another count than the release is ignored',
      end: ok,
      badChunks: 0,
      inject: onFirstChunks((c, i) => [encodeFrame({ kind: 'chunk', updateId: c.updateId, index: i, count: c.chunks + 1, data: new Uint8Array(CHUNK) })]),
    },
    {
      // The list and the first window are asked for together: a chunk that comes first is held until the list lands, then checked.
      name: 'frame: a wrong chunk before the chunk list is checked when the list lands (counted, asked for again)',
      end: ok,
      badChunks: 1,
      inject: onList((c) => [encodeFrame({ kind: 'chunk', updateId: c.updateId, index: 0, count: c.chunks, data: new Uint8Array(CHUNK) })]),
    },
    { name: 'frame: an oversized chunk is dropped, counted and asked for again', end: ok, badChunks: 1, inject: onFirstChunks((c, i) => [oversized(c, i)]) },
    {
      name: 'frame: a chunk of the right size with wrong bytes is counted',
      end: ok,
      badChunks: 1,
      inject: onFirstChunks((c, i) => [encodeFrame({ kind: 'chunk', updateId: c.updateId, index: i, count: c.chunks, data: chunkOf(c, i).map((x) => x ^ 1) })]),
    },
    { name: 'frame: a duplicate of a good chunk is harmless (counted as duplicate)', end: ok, badChunks: 0, duplicates: true, inject: onFirstChunks((c, i) => [goodChunk(c, i), goodChunk(c, i)]) },
    {
      name: 'frame: three bad copies of one chunk → failed corrupt-source',
      end: { state: 'failed', reason: 'corrupt-source' },
      badChunks: 3,
      inject: onFirstChunks((c, i) => [oversized(c, i), oversized(c, i), oversized(c, i)]),
    },
    {
      name: 'frame: chunk list with the wrong hash → failed chunk-list-mismatch',
      end: { state: 'failed', reason: 'chunk-list-mismatch' },
      inject: onList((c) => [encodeFrame({ kind: 'list', updateId: c.updateId, count: c.chunks, list: chunkList(c.payload, CHUNK).map((x, k) => (k === 5 ? x ^ 0xff : x)) })]),
    },
    {
      name: 'frame: chunk list with another count → failed chunk-list-mismatch',
      end: { state: 'failed', reason: 'chunk-list-mismatch' },
      inject: onList((c) => [encodeFrame({ kind: 'list', updateId: c.updateId, count: c.chunks + 1, list: new Uint8Array(32 * (c.chunks + 1)) })]),
    },
    {
      name: 'frame: error frame unknown-update → failed unknown-update',
      end: { state: 'failed', reason: 'unknown-update' },
      inject: onList((c) => [encodeFrame({ kind: 'error', updateId: c.updateId, error: 'unknown-update' })]),
    },
    {
      name: 'frame: error frame bad-request → failed malformed-frame',
      end: { state: 'failed', reason: 'malformed-frame' },
      inject: onList((c) => [encodeFrame({ kind: 'error', updateId: c.updateId, error: 'bad-request' })]),
    },
  ];
}

describe('bad-input corpus: frames injected while downloading', () => {
  const ID = 'corpus-frames';
  let f: Fixture;
  let watch: StatusWatch;
  let agent: DeviceAgent;
  let server: UpdateServer;
  let hook: ((req: ChunkRequest, updateId: string) => void) | undefined;
  const logs: Array<{ msg: string; error?: string }> = [];
  const capture: Logger = {
    debug: () => undefined,
    info: () => undefined,
    error: (msg, x) => logs.push({ msg, ...x }),
    warn: (msg, x) => logs.push({ msg, ...x }),
    child: () => capture,
  };
  let running: { model: Uint8Array; digest: string };
  let send: (c: Ctx, frames: Uint8Array[]) => Promise<void>;
  let seed = 100;

  beforeAll(async () => {
    f = await createFixture('corpus-frames', { updateServer: false });
    const serverT = await connect(f, 'corpus-slow-server');
    const slow = transportWith(serverT, {
      connected: true,
      publish: async (t: string, p: Uint8Array | string, o?: object) => {
        if (t.includes('/to/')) await sleep(150);
        return serverT.publish(t, p, o);
      },
    });
    server = new UpdateServer({ transport: slow, store: new ContentStore(path.join(f.dir, 'store')), topics, log: silentLogger });
    await server.start();
    const injector = await connect(f, 'corpus-injector');
    injector.onMessage((topic, payload) => {
      const p = topics.parse(topic);
      if (p?.kind === 'request' && p.deviceId === ID) hook?.(decodeRequest(payload), p.updateId);
    });
    await injector.subscribe(topics.allRequests(), 1);
    watch = await StatusWatch.start(f);
    ({ agent } = await startAgent(f, ID, capture, { retryMs: 600_000 }));
    await watch.until(ID, (s) => s.state === 'idle');
    running = { model: f.base, digest: f.update.baseDigest };
    // Inject on the device's own topic, for its current update.
    send = async (c: Ctx, frames: Uint8Array[]) => {
      for (const fr of frames) await injector.publish(topics.frames(MODEL, c.updateId, ID), fr, { qos: 1 });
    };
  }, 30_000);

  afterAll(async () => {
    await server?.stop();
    await f?.close();
  });

  for (const c of frameCases()) {
    it(c.name, async () => {
      cases++;
      await agent.idle();
      expect(['idle', 'ok', 'failed']).toContain(agent.state);
      expect(await currentDigest(f, ID)).toBe(running.digest);
      const u: SynthUpdate = synthesizeUpdate(running.model, 3, seed++);
      const updateId = sha256Hex(u.payload).slice(0, 32);
      const ctx: Ctx = { updateId, payload: u.payload, chunks: chunkCount(u.payload.byteLength, CHUNK) };
      let n = 0;
      hook = (req, id) => {
        if (id !== updateId) return;
        const frames = c.inject(req, ctx, n++);
        if (frames.length) void send(ctx, frames);
      };
      const from = watch.history.length;
      const logFrom = logs.length;
      const t0 = Date.now();
      await publish(f, u.payload);
      if (c.end.state === 'ok') {
        const s = await watch.after(ID, from, t0, (s) => s.state === 'ok' && s.running === u.targetDigest);
        expect(s.reason).toBeNull();
        if (c.badChunks !== undefined) expect(s.badChunks).toBe(c.badChunks);
        expect(await currentDigest(f, ID)).toBe(u.targetDigest);
        running = { model: u.target, digest: u.targetDigest };
      } else {
        const reason = c.end.reason;
        const s = await watch.after(ID, from, t0, (s) => s.state === 'failed');
        expect(s.reason).toBe(reason);
        expect(s.running).toBe(running.digest);
        if (c.badChunks !== undefined) expect(s.badChunks).toBe(c.badChunks);
        // The server's late frames arrive and change nothing.
        await expectNoEventWithin(300, () => watch.latest.get(ID)!.state !== 'failed' && watch.latest.get(ID), `${ID} leaving 'failed' on a late frame`);
        expect(await currentDigest(f, ID)).toBe(running.digest);
        expect(watch.latest.get(ID)!.state).toBe('failed');
      }
      if (c.duplicates) expect(agent.stats.duplicateChunks).toBeGreaterThanOrEqual(1);
      const dropped = logs.slice(logFrom).filter((l) => l.msg === 'dropped a malformed frame');
      if (c.dropped) {
        expect(dropped.length).toBeGreaterThanOrEqual(1);
        expect(dropped[0].error).toContain(PROTOCOL_REASONS[c.dropped]);
      } else {
        expect(dropped).toHaveLength(0);
      }
      hook = undefined;
    });
  }

  it('the agent still takes a valid release after all of them', async () => {
    await agent.idle();
    const u = synthesizeUpdate(running.model, 3, 999);
    const from = watch.history.length;
    const t0 = Date.now();
    await publish(f, u.payload);
    await watch.after(ID, from, t0, (s) => s.state === 'ok' && s.running === u.targetDigest);
    expect(await currentDigest(f, ID)).toBe(u.targetDigest);
  });
});

// --- model files ---------------------------------------------------------------------

function safetensors(header: unknown, data: Uint8Array, lengthOverride?: number): Uint8Array {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(lengthOverride ?? json.length));
  return new Uint8Array(Buffer.concat([head, json, data]));
}
const t16 = (begin: number) => ({ dtype: 'F32', shape: [4], data_offsets: [begin, begin + 16] });

const modelCases: Array<{ name: string; bytes: Uint8Array; detail: RegExp }> = [
  { name: 'model: header length past the end of the file', bytes: safetensors({ a: t16(0) }, new Uint8Array(16), 4096), detail: /header longer than the file/ },
  { name: 'model: overlapping tensor offsets', bytes: safetensors({ a: t16(0), b: t16(8) }, new Uint8Array(24)), detail: /overlaps another/ },
  { name: 'model: unknown dtype', bytes: safetensors({ a: { dtype: 'F8', shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4)), detail: /unknown dtype "F8"/ },
  { name: 'model: file shorter than 8 bytes', bytes: new Uint8Array([1, 2, 3]), detail: /shorter than the 8-byte header length/ },
  { name: 'model: header is not JSON', bytes: safetensors('{"a": [', new Uint8Array(0)), detail: /header is not UTF-8 JSON/ },
  { name: 'model: offsets do not match shape × dtype', bytes: safetensors({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 12] } }, new Uint8Array(12)), detail: /12 bytes for shape \[4\] of F32/ },
  { name: 'model: a gap in the data buffer', bytes: safetensors({ a: t16(0), b: t16(20) }, new Uint8Array(36)), detail: /gap in the data buffer/ },
  { name: 'model: non-string metadata', bytes: safetensors({ __metadata__: { n: 1 }, a: t16(0) }, new Uint8Array(16)), detail: /metadata "n" is not a string/ },
];

function fleet(args: string[]): Promise<{ code: number; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [FLEET_BIN, ...args], { timeout: 60_000 }, (e, _out, err) => resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, err: String(err) }));
  });
}

describe('bad-input corpus: model files (digestModelFile and `fleet apply`)', () => {
  let dir: string;
  const cli = new Map<string, { code: number; err: string }>();

  beforeAll(async () => {
    dir = await tempDir('corpus-models');
    const update = path.join(dir, 'update.cbor');
    await fs.writeFile(update, encodeUpdateFile(synthesizeUpdate(synthesizeModel(7, SMALL_LAYERS), 3, 8).payload));
    // The CLI runs in parallel (each start of tsx takes a while on two cores).
    await Promise.all(
      modelCases.map(async (c, k) => {
        const model = path.join(dir, `bad-${k}.safetensors`);
        await fs.writeFile(model, c.bytes);
        cli.set(c.name, await fleet(['apply', '--model', model, '--update', update, '--out', path.join(dir, `out-${k}.safetensors`)]));
      }),
    );
  }, 60_000);

  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  modelCases.forEach((c, k) => {
    it(c.name, async () => {
      cases++;
      const err = await digestModelFile(path.join(dir, `bad-${k}.safetensors`)).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ProtocolError);
      expect((err as ProtocolError).code).toBe('malformed-model');
      expect((err as ProtocolError).message).toMatch(c.detail);
      const r = cli.get(c.name)!;
      expect(r.code).not.toBe(0);
      expect(r.err).toContain(`fleet: ${PROTOCOL_REASONS['malformed-model']}`);
      expect(r.err).toMatch(c.detail);
      await expect(fs.access(path.join(dir, `out-${k}.safetensors`))).rejects.toThrow();
    });
  });
});
