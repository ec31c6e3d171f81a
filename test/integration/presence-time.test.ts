import { describe, expect, it } from 'vitest';
import { createFixture, runFleet, spawnDevice, StatusWatch, type Fixture } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

interface Row {
  device: string;
  online: boolean | null;
  presenceSince: string | null;
}

async function devices(fx: Fixture): Promise<Row[]> {
  const r = await runFleet(['devices', '--broker', fx.url, '--json', '--wait', '800']);
  expect(r.code, r.err).toBe(0);
  return JSON.parse(r.out) as Row[];
}

const seconds = (iso: string | null | undefined): number => (iso ? Date.parse(iso) / 1000 : NaN);

describe('presence carries the time it changed', () => {
  it("fleet devices shows it: online since connect, offline since a clean stop, and since the broker published a killed agent's will", async () => {
    f = own(await createFixture('presence-time'));
    const watch = await StatusWatch.start(f);
    const t0 = Math.floor(Date.now() / 1000);
    const calm = spawnDevice(f, 'pt-calm');
    const killed = spawnDevice(f, 'pt-killed');
    await watch.until('pt-calm', (s) => s.state === 'idle', 60_000);
    await watch.until('pt-killed', (s) => s.state === 'idle', 60_000);

    const up = await devices(f);
    for (const id of ['pt-calm', 'pt-killed']) {
      const row = up.find((r) => r.device === id);
      expect(row?.online).toBe(true);
      expect(seconds(row?.presenceSince)).toBeGreaterThanOrEqual(t0);
      expect(seconds(row?.presenceSince)).toBeLessThanOrEqual(Date.now() / 1000 + 1);
    }
    const table = await runFleet(['devices', '--broker', f.url, '--wait', '800']);
    expect(table.out.split('\n')[0]).toMatch(/ONLINE\s+SINCE\s+LAST SEEN/);
    expect(table.out).toMatch(/pt-calm .* yes\s+\d+ (s|min) ago /);

    await new Promise((r) => setTimeout(r, 1500));
    const t1 = Math.floor(Date.now() / 1000);
    const exited = (c: typeof calm) => new Promise((r) => (c.exitCode !== null ? r(null) : c.once('exit', r)));
    process.kill(killed.pid!, 'SIGKILL');
    process.kill(calm.pid!, 'SIGTERM');
    await Promise.all([exited(killed), exited(calm)]);
    let down: Row[] = [];
    for (let i = 0; i < 40; i++) {
      down = await devices(f);
      if (down.filter((r) => r.online === false).length === 2) break;
    }
    for (const id of ['pt-calm', 'pt-killed']) {
      const row = down.find((r) => r.device === id);
      expect(row?.online, id).toBe(false);
      expect(seconds(row?.presenceSince), id).toBeGreaterThanOrEqual(t1);
    }
  }, 180_000);
});
