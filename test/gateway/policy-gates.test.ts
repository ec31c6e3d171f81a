import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { stopChild } from '../../platform/child-process.ts';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import { parseWindow } from '../../gateway/policy.ts';
import { synthesizeUpdate } from '../../publisher/synth.ts';
import { createFixture, GROUP, MEDIUM_LAYERS, publish, spawnDevice, StatusWatch, type Fixture } from '../support/harness.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';
import { startGateway, untilGateway, watchGatewayStatus } from './helpers.ts';

let f: Fixture | undefined;
let gw: Gateway | undefined;
afterEach(async () => {
  await Promise.all((f?.children ?? []).map((c) => stopChild(c)));
  await gw?.close();
  await f?.close();
  f = undefined;
  gw = undefined;
});

/** Local wall-clock time, as the gateway's --window reads it. */
const at = (y: number, mo: number, d: number, h: number, mi = 0): number => new Date(y, mo - 1, d, h, mi).getTime();

describe('site gateway: download window and data budget', () => {
  it('a window that opens later delays the upstream fetch (a newer release replaces the waiting one), then completes it', async () => {
    f = await createFixture('gwwin');
    let now = at(2026, 1, 15, 1, 0);
    gw = await startGateway(f, { groups: [GROUP], window: parseWindow('02:00-03:00'), now: () => now });
    const watch = await StatusWatch.start(f);
    const gwWatch = await watchGatewayStatus(f);
    spawnDevice(f, 'win-1', [], gw.url);
    await watch.until('win-1', (s) => s.state === 'idle', 60_000);
    const r = await publish(f);
    const waiting = await untilGateway(gw, (s) => s.downloads === 'waiting', 15_000);
    expect(waiting.waiting).toBe('window-closed');
    expect(waiting.message).toContain('02:00-03:00');
    expect(waiting.resumesAt).toBe(new Date(at(2026, 1, 15, 2, 0)).toISOString());
    expect(waiting.releases).toEqual([expect.objectContaining({ state: 'fetching', missing: [r.updateId] })]);
    // The operator sees why upstream.
    await until(() => gwWatch.latest()?.waiting === 'window-closed', { timeoutMs: 15_000, what: 'window-closed upstream' });
    const up = f.broker!.updateServer!.stats;
    await expectNoEventWithin(2000, () => up.chunksSent > 0 || up.listsSent > 0, 'a chunk or chunk list sent while the window is closed');
    expect(up.chunksSent).toBe(0);
    expect(up.listsSent).toBe(0);
    // The device was not offered a release the site cannot serve yet.
    expect(watch.latest.get('win-1')!.state).toBe('idle');

    // A newer release replaces the waiting one: its payload is no longer wanted (no budget spent on it).
    const second = synthesizeUpdate(f.base, 3, 9);
    const r2 = await publish(f, second.payload);
    const replaced = await untilGateway(gw, (s) => s.fetching.length === 1 && s.fetching[0].updateId === r2.updateId, 15_000, 'only the newer update wanted');
    expect(replaced.releases).toEqual([expect.objectContaining({ state: 'fetching', missing: [r2.updateId], seq: r2.release.seq })]);

    now = at(2026, 1, 15, 2, 30);
    const ok = await watch.until('win-1', (s) => s.state === 'ok', 60_000);
    expect(ok.running).toBe(second.targetDigest);
    expect(up.chunksSent).toBeGreaterThan(0);
    const s = await untilGateway(gw, (s) => s.downloads === 'idle' && s.cache.length === 1);
    expect(s.cache.map((c) => c.updateId)).toEqual([r2.updateId]);
    expect(s.waiting).toBeNull();
  });

  it('budget exhaustion pauses the fetch with a clear status; the next month resumes it from the bitmap', async () => {
    f = await createFixture('gwbudget', { layers: MEDIUM_LAYERS, rank: 32 });
    let now = at(2026, 1, 20, 12, 0);
    // ~132 KB payload: January's budget stops it part way; February's covers the rest.
    const budget = 85_000;
    gw = await startGateway(f, { groups: [GROUP], budgetBytes: budget, now: () => now });
    const watch = await StatusWatch.start(f);
    const gwWatch = await watchGatewayStatus(f);
    spawnDevice(f, 'bud-1', [], gw.url);
    await watch.until('bud-1', (s) => s.state === 'idle', 60_000);
    const r = await publish(f);
    const size = r.release.steps[0].size;
    expect(size).toBeGreaterThan(1.4 * budget);
    const paused = await untilGateway(gw, (s) => s.waiting === 'budget-exhausted', 30_000);
    expect(paused.downloads).toBe('waiting');
    expect(paused.message).toMatch(/monthly budget used/);
    expect(paused.budget).toMatchObject({ month: '2026-01', limitBytes: budget });
    expect(paused.budget.usedBytes).toBeGreaterThanOrEqual(budget);
    expect(paused.resumesAt).toBe(new Date(at(2026, 2, 1, 0)).toISOString());
    await until(() => gwWatch.latest()?.waiting === 'budget-exhausted', { timeoutMs: 15_000, what: 'budget-exhausted upstream' });
    // Paused: nothing more is fetched while the budget is used.
    await new Promise((res) => setTimeout(res, 4000)); // past the drain of chunks already asked for
    const held = (await gw.status()).fetching[0].bytes;
    expect(held).toBeGreaterThan(0);
    expect(held).toBeLessThan(size);
    const chunksBefore = f.broker!.updateServer!.stats.chunksSent;
    await expectNoEventWithin(2000, () => f!.broker!.updateServer!.stats.chunksSent !== chunksBefore, 'a chunk sent while the budget is used');
    expect(f.broker!.updateServer!.stats.chunksSent).toBe(chunksBefore);
    expect((await gw.status()).fetching[0].bytes).toBe(held);
    expect(watch.latest.get('bud-1')!.state).toBe('idle');
    // The month's usage is on disk.
    const ledger = JSON.parse(await fs.readFile(path.join(f.dir, 'gateway', 'budget.json'), 'utf8')) as Record<string, number>;
    expect(ledger['2026-01']).toBeGreaterThanOrEqual(budget);

    // A new month: the fetch resumes where it stopped and completes.
    now = at(2026, 2, 1, 0, 30);
    const ok = await watch.until('bud-1', (s) => s.state === 'ok', 60_000);
    expect(ok.running).toBe(f.update.targetDigest);
    const s = await untilGateway(gw, (s) => s.downloads === 'idle' && s.cache.length === 1);
    expect(s.fetched.payloadBytes).toBe(size);
    expect(s.budget.month).toBe('2026-02');
    // Resumed, not restarted: the upstream server sent about one payload in all.
    expect(f.broker!.updateServer!.stats.chunksSent).toBeLessThanOrEqual(r.release.steps[0].chunks + 8);
  });
});
