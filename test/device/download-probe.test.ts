/**
 * What the download asks again after a silence: first only the chunk it asked
 * for last (a probe), and of it only its last byte (a one-byte `tail`, the
 * probe's marker). Frames come back in request order, so when the marker's
 * answer arrives, whatever was asked before it and is still missing was lost
 * (the probe's chunk with it). A merely stalled link costs a one-byte frame; a
 * lost window is asked again one round trip later. A server that ignores
 * `tail` answers the probe with the chunk whole: then a stalled link costs one
 * duplicate chunk (the first describe block serves so). Real storage in a temp
 * dir, a recording transport and a manual clock.
 */
import { describe, expect, it } from 'vitest';
import { chunkRange } from '../../protocol/chunks.ts';
import { decodeRequest, type Frame } from '../../protocol/frames.ts';
import { ownAfterEach } from '../support/cleanup.ts';
import { downloadRig } from '../support/download-rig.ts';
import { payloadStep } from '../support/payload-step.ts';
import { until } from '../support/wait.ts';

const CHUNK = 1024;
const CHUNKS = 12;
const { payload, list, updateId, step } = payloadStep(CHUNK, CHUNKS, (i) => (i * 31) % 251, 'ab'.repeat(32));

const own = ownAfterEach();

/** `link`: the probe connects while `link.up` (and the watch's reconnects are counted): the silence watch runs. */
/** `noList`: the chunk list is not delivered at the start (`list()` delivers it). */
async function rig(o: { pings?: boolean; handshakeMs?: number; link?: { up: boolean; reconnects: number }; noList?: boolean } = {}) {
  const requests: number[][] = [];
  /** Whether each request asked for the chunk list too. */
  const asksList: boolean[] = [];
  /** Each request's `tail` entries (a probe's marker is `[index, length - 1]`). */
  const tails: Array<Array<[number, number]>> = [];
  let wire = 0;
  /** With `pings`: the PINGREQs the download sends, and the PINGRESPs the broker answered (the test's). */
  const ping = { sent: 0, answered: 0 };
  let done = false;
  const { d, clock, files } = await downloadRig(own, 'download-probe', step, {
    transport: {
      publish: async (_t: string, p: Uint8Array | string) => {
        const req = decodeRequest(p as Uint8Array);
        requests.push(req.want);
        asksList.push(req.list);
        tails.push(req.tail ?? []);
      },
      ...(o.pings ? { nudge: () => ping.sent++, pongs: () => ping.answered } : {}),
      // A transport that can probe and reconnect (the silence watch runs), and knows its quickest TCP handshake.
      ...(o.handshakeMs === undefined ? {} : { probe: () => Promise.resolve(false), reconnect: () => undefined, handshakeMs: () => o.handshakeMs! }),
      ...(o.link === undefined ? {} : { probe: () => Promise.resolve(o.link!.up), reconnect: () => void o.link!.reconnects++ }),
    },
    wireBytesIn: () => wire,
    onComplete: () => (done = true),
  });
  const settle = async () => {
    for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 5));
  };
  /** Delivers chunk i and waits until it is written (or counted as a duplicate): the writes go to a real disk. */
  const chunk = async (i: number) => {
    const [b, e] = chunkRange(step.size, CHUNK, i);
    wire += e - b;
    const held = d.receivedChunks;
    const dups = d.duplicateChunks;
    d.onFrame({ kind: 'chunk', updateId, index: i, count: CHUNKS, data: payload.subarray(b, e) } as Frame);
    await until(() => d.receivedChunks !== held || d.duplicateChunks !== dups, { what: `chunk ${i} written or counted as a duplicate`, timeoutMs: 10_000, intervalMs: 5 });
    await settle();
  };
  /** Delivers the answer to chunk i's marker (its last byte, a one-byte tail frame); it is handled at once, nothing is written. */
  const marker = async (i: number) => {
    const [b, e] = chunkRange(step.size, CHUNK, i);
    wire += 1;
    d.onFrame({ kind: 'chunk', updateId, index: i, count: CHUNKS, offset: e - b - 1, data: payload.subarray(e - 1, e) } as Frame);
    await settle();
  };
  const deliverList = async () => {
    d.onFrame({ kind: 'list', updateId, count: CHUNKS, list } as Frame);
    // The first window is asked for with the list; wait until the list is saved.
    await until(() => files.list && requests.some((w) => w.length > 0), { what: 'the list saved and the first window of requests', timeoutMs: 10_000, intervalMs: 5 });
  };
  await d.start();
  if (!o.noList) await deliverList();
  return { d, clock, requests, asksList, tails, marker, chunk, settle, ping, list: deliverList, isDone: () => done, close: () => d.close(), wireIn: (n: number) => (wire += n) };
}

/** Receives in request order until every chunk not yet here has been asked for: the chunks outstanding then, in request order. */
async function toEndOfPayload(r: Awaited<ReturnType<typeof rig>>): Promise<number[]> {
  const got = new Set<number>();
  const asked = () => new Set(r.requests.flat());
  while (asked().size < CHUNKS) {
    const next = r.requests.flat().find((i) => !got.has(i))!;
    got.add(next);
    await r.chunk(next);
  }
  return [...asked()].filter((i) => !got.has(i));
}

/** At the end of the payload (`toEndOfPayload`), a reconnect: the old outstanding chunks, and the request count before it. */
async function reconnectAtEnd(r: Awaited<ReturnType<typeof rig>>): Promise<{ old: number[]; before: number }> {
  const old = await toEndOfPayload(r);
  expect(old.length).toBeGreaterThan(2);
  const before = r.requests.length;
  r.d.resend();
  await r.settle();
  return { old, before };
}

/** Serves every request from `from` on, each chunk once, until the download completes. */
async function serveToEnd(r: Awaited<ReturnType<typeof rig>>, from: number, served = new Set<number>()) {
  for (let k = from; k < r.requests.length && !r.isDone(); k++) {
    for (const i of r.requests[k]) {
      if (served.has(i)) continue;
      served.add(i);
      await r.chunk(i);
    }
  }
  await until(() => r.isDone(), { what: 'the download complete', timeoutMs: 10_000, intervalMs: 5 });
}

/** A window asked for, a reconnect (its new request's chunks: `fresh`), then a silence. */
async function reconnectThenSilence(r: Awaited<ReturnType<typeof rig>>): Promise<{ asked: number[]; before: number; fresh: number[] }> {
  const asked = r.requests.filter((w) => w.length > 0).at(-1)!;
  const before = r.requests.length;
  r.d.resend();
  await r.settle();
  const fresh = r.requests.slice(before).flat();
  await r.clock.advance(r.d.link.idleTimeoutMs + 1);
  await r.settle();
  return { asked, before, fresh };
}

/**
 * No chunk list yet, and a silence: the first request (list and first window), then the probe the
 * silence sends (the list again and the window's last chunk alone).
 */
async function silenceBeforeList() {
  const r = await rig({ noList: true });
  const first = r.requests[0];
  expect(r.asksList[0]).toBe(true);
  expect(first.length).toBeGreaterThan(2);
  await r.clock.advance(r.d.link.idleTimeoutMs + 1);
  await r.settle();
  expect(r.requests.slice(1)).toEqual([[first.at(-1)]]);
  expect(r.asksList[1]).toBe(true);
  return { r, first };
}

describe('download: after a silence, a probe before the rest (a server that sends the probe chunk whole)', () => {
  it('a stalled link (frames late, none lost): one chunk asked again, nothing else, one duplicate', async () => {
    const r = await rig();
    const asked = r.requests.filter((w) => w.length > 0).at(-1)!;
    expect(asked.length).toBeGreaterThan(1);
    const before = r.requests.length;
    await r.clock.advance(r.d.link.idleTimeoutMs + 1);
    await r.settle();
    // The probe: only the last chunk asked for.
    expect(r.requests.slice(before)).toEqual([[asked.at(-1)!]]);
    // The stall ends: the original frames arrive in order; nothing is asked again for them.
    for (const i of asked) await r.chunk(i);
    const reasked = r.requests
      .slice(before + 1)
      .flat()
      .filter((i) => asked.includes(i));
    expect(reasked).toEqual([]);
    // The probe's own copy arrives late: one duplicate.
    await r.chunk(asked.at(-1)!);
    expect(r.d.duplicateChunks).toBe(1);
    await r.close();
  });

  it('a lost window: when the probe comes back alone, the chunks asked before it are asked again, and the download completes', async () => {
    const r = await rig();
    const asked = r.requests.filter((w) => w.length > 0).at(-1)!;
    const before = r.requests.length;
    await r.clock.advance(r.d.link.idleTimeoutMs + 1);
    await r.settle();
    expect(r.requests.slice(before)).toEqual([[asked.at(-1)!]]);
    await r.chunk(asked.at(-1)!);
    const again = r.requests.slice(before + 1).flat();
    expect(again.slice(0, asked.length - 1).sort((a, b) => a - b)).toEqual(asked.slice(0, -1).sort((a, b) => a - b));
    // Serve every request from now on until complete.
    for (let k = before + 1; k < r.requests.length && !r.isDone(); k++) for (const i of r.requests[k]) await r.chunk(i);
    await until(() => r.isDone(), { what: 'the download complete', timeoutMs: 10_000, intervalMs: 5 });
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('a probe that goes unanswered too: the next silence asks for the same chunk again, alone; when it comes, the rest are asked again', async () => {
    const r = await rig();
    const asked = r.requests.filter((w) => w.length > 0).at(-1)!;
    const before = r.requests.length;
    await r.clock.advance(r.d.link.idleTimeoutMs + 1);
    await r.settle();
    expect(r.requests.slice(before)).toEqual([[asked.at(-1)!]]);
    await r.clock.advance(r.d.link.idleTimeoutMs + 1);
    await r.settle();
    // On one connection nothing is lost, only late: the probe once more, nothing else.
    expect(r.requests.slice(before + 1)).toEqual([[asked.at(-1)!]]);
    // Its chunk comes: what was asked before it and has not come is asked again.
    await r.chunk(asked.at(-1)!);
    const again = r.requests.slice(before + 2).flat();
    for (const i of asked.slice(0, -1)) expect(again).toContain(i);
    await r.close();
  });

  it('after a reconnect whose first new chunk is slow to come: the silence asks for it again alone; chunks still on their way are not asked twice', async () => {
    const r = await rig();
    const { asked, before, fresh } = await reconnectThenSilence(r);
    expect(fresh.length).toBeGreaterThan(1);
    // Not everything again (that asked again for chunks on their way, and they came twice).
    expect(r.requests.slice(before + 1)).toEqual([[fresh[0]]]);
    // They were only late: the old request's chunks, then the new ones, arrive.
    for (const i of [...asked, ...fresh]) await r.chunk(i);
    const later = r.requests.slice(before + 2).flat();
    expect(later.filter((i) => asked.includes(i) || fresh.includes(i))).toEqual([]);
    await serveToEnd(r, before + 2, new Set([...asked, ...fresh]));
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('after a reconnect: new chunks first; old ones that still come are not asked again, the rest are, once the first new one is here (no duplicates)', async () => {
    const r = await rig();
    const asked = r.requests.filter((w) => w.length > 0).at(-1)!;
    expect(asked.length).toBeGreaterThan(1);
    const before = r.requests.length;
    r.d.resend();
    await r.settle();
    const fresh = r.requests.slice(before).flat();
    expect(fresh.length).toBeGreaterThan(0);
    // None of what was outstanding on the old connection is asked again at once.
    expect(fresh.filter((i) => asked.includes(i))).toEqual([]);
    // The old request was served after all (its answer comes on the new connection), all but its last chunk; then the first new chunk.
    for (const i of asked.slice(0, -1)) await r.chunk(i);
    await r.chunk(fresh[0]);
    const again = r.requests.slice(before + 1).flat();
    expect(again).toContain(asked.at(-1)!);
    expect(again.filter((i) => asked.slice(0, -1).includes(i))).toEqual([]);
    // Serve every request from the reconnect on until complete: no chunk comes twice.
    const served = new Set([...asked.slice(0, -1), fresh[0]]);
    for (let k = before; k < r.requests.length && !r.isDone(); k++) for (const i of r.requests[k]) if (!served.has(i)) await r.chunk(i);
    await until(() => r.isDone(), { what: 'the download complete', timeoutMs: 10_000, intervalMs: 5 });
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('after a reconnect at the end of the payload (every chunk missing already asked for): the last one alone first, the rest only if they do not come (no duplicates)', async () => {
    const r = await rig();
    const { old, before } = await reconnectAtEnd(r);
    // Only the last old chunk is asked for again (the probe); nothing else yet.
    expect(r.requests.slice(before)).toEqual([[old.at(-1)]]);
    // The old request was served on the new connection after all, but for the chunk before the last:
    // its frames come, then the probe's. Only the missing one is asked again.
    const lost = old.at(-2)!;
    for (const i of old.slice(0, -2)) await r.chunk(i);
    await r.chunk(old.at(-1)!);
    expect(r.requests.slice(before + 1)).toEqual([[lost]]);
    await r.chunk(lost);
    await until(() => r.isDone(), { what: 'the download complete', timeoutMs: 10_000, intervalMs: 5 });
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('a silence before the chunk list: the list and the last chunk asked again, the rest held; a late first answer then costs one duplicate, not the window', async () => {
    const { r, first } = await silenceBeforeList();
    // The first request's answer was only late: the list, then its chunks; then the probe's (list ignored, one chunk twice).
    await r.list();
    for (const i of first) await r.chunk(i);
    await r.chunk(first.at(-1)!);
    expect(r.d.duplicateChunks).toBe(1);
    // Nothing of the first window is asked again; the download goes on and completes.
    expect(
      r.requests
        .slice(2)
        .flat()
        .filter((i) => first.includes(i)),
    ).toEqual([]);
    for (let k = 2; k < r.requests.length && !r.isDone(); k++) for (const i of r.requests[k]) await r.chunk(i);
    await until(() => r.isDone(), { what: 'the download complete', timeoutMs: 10_000, intervalMs: 5 });
    expect(r.d.duplicateChunks).toBe(1);
    await r.close();
  });

  it('a silence before the chunk list whose first request was lost: the probe brings the list and its chunk, then the rest are asked again', async () => {
    const { r, first } = await silenceBeforeList();
    await r.list();
    await r.chunk(first.at(-1)!);
    const again = r.requests.slice(2).flat();
    expect(first.slice(0, -1).every((i) => again.includes(i))).toBe(true);
    await r.close();
  });

  it('acknowledgements trickling in (a PUBACK per status) are not chunks on their way: the silence is still answered', async () => {
    const r = await rig();
    const before = r.requests.length;
    for (let k = 0; k < 4; k++) {
      r.wireIn(4);
      await r.clock.advance(r.d.link.idleTimeoutMs / 2);
      await r.settle();
    }
    expect(r.requests.length).toBeGreaterThan(before);
    await r.close();
  });

  it('a silence with no PINGRESP back asks nothing again (the answers may be queued ahead of it); once the broker answers a ping, it asks again', async () => {
    const r = await rig({ pings: true });
    const asked = r.requests.filter((w) => w.length > 0).at(-1)!;
    const before = r.requests.length;
    for (let k = 0; k < 3; k++) {
      await r.clock.advance(r.d.link.idleTimeoutMs + 1);
      await r.settle();
    }
    // Three idle timeouts, each a ping and no request: TCP may be backing off with the frames in its queue.
    expect(r.requests.length).toBe(before);
    expect(r.ping.sent).toBe(3);
    // The frames were late, not lost: they come, and nothing was sent twice.
    for (const i of asked.slice(0, 2)) await r.chunk(i);
    expect(r.d.duplicateChunks).toBe(0);
    // Silent again, but now the broker answers the ping: everything queued ahead of it has come, so what is missing was lost.
    const mark = r.requests.length;
    const outstanding = r.requests.flat().filter((i) => i !== asked[0] && i !== asked[1]);
    r.ping.answered++;
    await r.clock.advance(r.d.link.idleTimeoutMs + 1);
    await r.settle();
    const again = r.requests.slice(mark).flat();
    expect(again.length).toBeGreaterThan(0);
    expect(again.every((i) => outstanding.includes(i))).toBe(true);
    await r.close();
  });

  it("the silence watch judges a silence by the quickest TCP handshake when the chunks' round trip is inflated by frames queued ahead", async () => {
    const r = await rig({ handshakeMs: 150 });
    // A chunk that arrived 20 s after it was asked for (ten devices' first windows queued on one link).
    r.d.link.requested(0, [99]);
    r.d.link.arrived(20_000, 99, CHUNK);
    expect(r.d.link.minRttMs).toBe(20_000);
    const watch = (r.d as unknown as { watch: { silenceNeededMs: number; delivered: () => void } }).watch;
    watch.delivered();
    // 4 × 150 ms is under the least silence (2 s); 4 × 20 s would be 80 s.
    expect(watch.silenceNeededMs).toBeLessThan(5000);
    await r.close();
  });

  it("a connection the transport made again (the old one reset by the peer) is not torn down for the old one's silence", async () => {
    const link = { up: false, reconnects: 0 };
    const r = await rig({ link });
    await r.chunk(r.requests[0][0]);
    const watch = (r.d as unknown as { watch: { probes: number } }).watch;
    const advanceUntil = async (done: () => boolean, what: string) => {
      for (let s = 0; s < 300 && !done(); s++) {
        await r.clock.advance(1000);
        await r.settle();
      }
      expect(done(), what).toBe(true);
    };
    // The link cut: the watch probes once the silence is long enough, and nothing connects.
    await advanceUntil(() => watch.probes > 0, 'a probe within 300 s of silence');
    expect(link.reconnects).toBe(0);
    // The peer resets the connection and the transport connects again: the agent calls resend.
    link.up = true;
    r.d.resend();
    await r.settle();
    // The new connection has the least silence (2 s) of its own before the watch may tear it down...
    await r.clock.advance(1500);
    await r.settle();
    expect(link.reconnects).toBe(0);
    // ...and once silent long enough, it is probed and torn down as any.
    await advanceUntil(() => link.reconnects === 1, 'a reconnect of the silent new connection');
    await r.close();
  });
});

/** A window asked for, then a silence: the probe (the window's last chunk, with its marker). */
async function silenceProbe() {
  const r = await rig();
  const asked = r.requests.filter((w) => w.length > 0).at(-1)!;
  expect(asked.length).toBeGreaterThan(1);
  const before = r.requests.length;
  await r.clock.advance(r.d.link.idleTimeoutMs + 1);
  await r.settle();
  const last = asked.at(-1)!;
  const [b, e] = chunkRange(step.size, CHUNK, last);
  expect(r.requests.slice(before)).toEqual([[last]]);
  expect(r.tails.slice(before)).toEqual([[[last, e - b - 1]]]);
  return { r, asked, before, last };
}

describe("download: a probe asks for its chunk's last byte only (the marker), and no chunk comes twice", () => {
  it("a stalled link: the late frames come (the probe chunk's first copy settles the probe), then the marker, dropped; nothing is asked again and nothing comes twice", async () => {
    const { r, asked, before } = await silenceProbe();
    for (const i of asked) await r.chunk(i);
    await r.marker(asked.at(-1)!);
    expect(r.d.markersAnswered).toBe(0);
    expect(
      r.requests
        .slice(before + 1)
        .flat()
        .filter((i) => asked.includes(i)),
    ).toEqual([]);
    await serveToEnd(r, before + 1, new Set(asked));
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('a lost window: the marker comes alone; every chunk asked before it and the probe chunk itself are asked again, whole', async () => {
    const { r, asked, before, last } = await silenceProbe();
    await r.marker(last);
    const again = r.requests.slice(before + 1);
    expect(new Set(again.flat())).toEqual(new Set(asked));
    // Asked whole this time: no marker goes with them.
    expect(r.tails.slice(before + 1).flat()).toEqual([]);
    await serveToEnd(r, before + 1);
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('part of the window lost: only what did not come before the marker is asked again', async () => {
    const { r, asked, before, last } = await silenceProbe();
    const came = asked.slice(0, 1);
    for (const i of came) await r.chunk(i);
    await r.marker(last);
    expect(r.d.markersAnswered).toBe(1);
    expect(new Set(r.requests.slice(before + 1).flat())).toEqual(new Set(asked.slice(1)));
    await serveToEnd(r, before + 1, new Set(came));
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('a probe unanswered twice: the marker is asked again, and two answers to it ask nothing twice', async () => {
    const { r, asked, before, last } = await silenceProbe();
    await r.clock.advance(r.d.link.idleTimeoutMs + 1);
    await r.settle();
    expect(r.requests.slice(before + 1)).toEqual([[last]]);
    expect(r.tails.at(-1)).toEqual(r.tails[before]);
    await r.marker(last);
    const mark = r.requests.length;
    await r.marker(last);
    expect(r.requests.length).toBe(mark);
    expect(new Set(r.requests.slice(before + 2).flat())).toEqual(new Set(asked));
    await r.close();
  });

  it("after a reconnect at the end of the payload: only the last old chunk's marker is asked; the old request served after all costs no chunk twice", async () => {
    const r = await rig();
    const { old, before } = await reconnectAtEnd(r);
    const last = old.at(-1)!;
    const [b, e] = chunkRange(step.size, CHUNK, last);
    expect(r.requests.slice(before)).toEqual([[last]]);
    expect(r.tails.slice(before)).toEqual([[[last, e - b - 1]]]);
    // The old request's frames come on the new connection, then the marker: done, each chunk once.
    for (const i of old) await r.chunk(i);
    await r.marker(last);
    await until(() => r.isDone(), { what: 'the download complete', timeoutMs: 10_000, intervalMs: 5 });
    expect(r.requests.length).toBe(before + 1);
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('after a reconnect at the end of the payload with the old answers lost: the marker comes alone, and every old chunk is asked again', async () => {
    const r = await rig();
    const { old, before } = await reconnectAtEnd(r);
    await r.marker(old.at(-1)!);
    expect(new Set(r.requests.slice(before + 1).flat())).toEqual(new Set(old));
    await serveToEnd(r, before + 1);
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('after a reconnect, a silence with the first new chunk still to come: it is asked again as a marker only; when its first copy comes, the marker after it asks nothing', async () => {
    const r = await rig();
    const { asked, before, fresh } = await reconnectThenSilence(r);
    const [b, e] = chunkRange(step.size, CHUNK, fresh[0]);
    expect(r.requests.slice(before + 1)).toEqual([[fresh[0]]]);
    expect(r.tails.slice(before + 1)).toEqual([[[fresh[0], e - b - 1]]]);
    // The old chunks were lost; the new request's answer was only late: its first chunk settles the probe.
    await r.chunk(fresh[0]);
    const again = r.requests.slice(before + 2).flat();
    for (const i of asked) expect(again).toContain(i);
    const mark = r.requests.length;
    await r.marker(fresh[0]);
    expect(r.requests.length).toBe(mark);
    await serveToEnd(r, before, new Set([fresh[0]]));
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it("a reconnect before the chunk list: the list again and the first window's last chunk as a marker, the rest held; the first request answered on the new connection costs no chunk twice", async () => {
    const r = await rig({ noList: true });
    const first = r.requests[0];
    r.d.resend();
    await r.settle();
    const last = first.at(-1)!;
    const [b, e] = chunkRange(step.size, CHUNK, last);
    expect(r.asksList[1]).toBe(true);
    expect(r.requests[1][0]).toBe(last);
    expect(r.requests[1].filter((i) => first.includes(i))).toEqual([last]);
    expect(r.tails[1]).toEqual([[last, e - b - 1]]);
    // The first request's answer comes after all: the list, its chunks; then the second list and the marker.
    await r.list();
    for (const i of first) await r.chunk(i);
    await r.marker(last);
    expect(
      r.requests
        .slice(2)
        .flat()
        .filter((i) => first.includes(i)),
    ).toEqual([]);
    await serveToEnd(r, 1, new Set(first));
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('a reconnect before the chunk list whose first request was lost: the list and the marker come, and the first window is asked again', async () => {
    const r = await rig({ noList: true });
    const first = r.requests[0];
    r.d.resend();
    await r.settle();
    await r.list();
    await r.marker(first.at(-1)!);
    const again = r.requests.slice(2).flat();
    for (const i of first) expect(again).toContain(i);
    await serveToEnd(r, 1);
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it("a reconnect with a probe out: nothing is asked again whole at once; the old chunks, the probe's among them, wait for the new request's answer", async () => {
    const { r, asked, before } = await silenceProbe();
    r.d.resend();
    await r.settle();
    const after = r.requests.slice(before + 1).flat();
    // Chunks not asked yet (or, with none, the last old one's marker): none of the old ones whole.
    const tails = r.tails.slice(before + 1).flat();
    const whole = after.filter((i) => asked.includes(i) && !tails.some(([t]) => t === i));
    expect(whole).toEqual([]);
    // The old request was answered on the new connection: each chunk once.
    for (const i of asked) await r.chunk(i);
    await serveToEnd(r, before + 1, new Set(asked));
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('a forged marker (a wrong last byte, from a hostile broker or server) is never stored: it only settles the probe, whose chunk is asked for whole and checked as any', async () => {
    const { r, asked, before, last } = await silenceProbe();
    const held = r.d.receivedChunks;
    const [b, e] = chunkRange(step.size, CHUNK, last);
    r.d.onFrame({ kind: 'chunk', updateId, index: last, count: CHUNKS, offset: e - b - 1, data: Uint8Array.of(payload[e - 1] ^ 0xff) } as Frame);
    await r.settle();
    expect(r.d.receivedChunks).toBe(held);
    expect(r.d.badChunks).toBe(0);
    expect(new Set(r.requests.slice(before + 1).flat())).toEqual(new Set(asked));
    await serveToEnd(r, before + 1);
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('one chunk outstanding and a silence: its marker, not the chunk again; the marker alone means it was lost, and it is asked whole', async () => {
    const r = await rig();
    const got = new Set<number>();
    // Receive in request order until only the last chunk is missing.
    while (got.size < CHUNKS - 1) {
      const next = r.requests.flat().find((i) => !got.has(i))!;
      got.add(next);
      await r.chunk(next);
    }
    const last = [...Array(CHUNKS).keys()].find((i) => !got.has(i))!;
    const before = r.requests.length;
    await r.clock.advance(r.d.link.idleTimeoutMs + 1);
    await r.settle();
    const [b, e] = chunkRange(step.size, CHUNK, last);
    expect(r.requests.slice(before)).toEqual([[last]]);
    expect(r.tails.slice(before)).toEqual([[[last, e - b - 1]]]);
    await r.marker(last);
    expect(r.requests.slice(before + 1)).toEqual([[last]]);
    expect(r.tails.slice(before + 1)).toEqual([[]]);
    await r.chunk(last);
    await until(() => r.isDone(), { what: 'the download complete', timeoutMs: 10_000, intervalMs: 5 });
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });

  it('a silence before the chunk list: the list and the marker; a late first answer then costs no chunk twice', async () => {
    const { r, first } = await silenceBeforeList();
    const [b, e] = chunkRange(step.size, CHUNK, first.at(-1)!);
    expect(r.tails[1]).toEqual([[first.at(-1)!, e - b - 1]]);
    await r.list();
    for (const i of first) await r.chunk(i);
    await r.marker(first.at(-1)!);
    expect(
      r.requests
        .slice(2)
        .flat()
        .filter((i) => first.includes(i)),
    ).toEqual([]);
    await serveToEnd(r, 2, new Set(first));
    expect(r.d.duplicateChunks).toBe(0);
    await r.close();
  });
});
