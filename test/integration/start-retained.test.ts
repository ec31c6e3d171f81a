/**
 * A device that starts while its group's release is already retained (a device booting, or
 * joining, after the publish) fetches it once. At start-up the retained release arrives while the
 * agent is still subscribing, so it is taken and its fetch begun before the agent's own start-up
 * recovery runs; that recovery must not begin a second fetch of the same release beside the first
 * (it did: the list and the first window were asked for twice, and the second Download's frames
 * all went to the first, so it re-asked on its own timers; sim:gateway's direct phase, whose
 * devices start after the release, received 1.2–1.6 payloads a device on a clean link).
 * Real Aedes broker over TCP on loopback, the agent in this process.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { decodeRequest } from '../../protocol/frames.ts';
import { createLogger } from '../../util/log.ts';
import { connect, createFixture, publish, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';

let f: Fixture | undefined;
afterEach(async () => {
  await f?.close();
  f = undefined;
});

describe('a device started after the release was published', () => {
  it('fetches the retained release once: the list and every chunk asked for once, no duplicate, no second fetch', async () => {
    f = await createFixture('start-retained');
    const asked: Array<{ want: number[]; list: boolean }> = [];
    const recorder = await connect(f, 'request-recorder');
    recorder.onMessage((topic, payload) => {
      const p = topics.parse(topic);
      if (p?.kind === 'request' && p.deviceId === 'late-1') asked.push(decodeRequest(payload));
    });
    await recorder.subscribe(topics.allRequests(), 1);
    const watch = await StatusWatch.start(f);
    const r = await publish(f, f.update.payload, 512);
    const chunks = r.release.steps[0].chunks;
    expect(chunks).toBeGreaterThan(8); // more than a first window

    const lines: string[] = [];
    // A long idle timeout: any chunk asked for twice on this clean loopback link is a second fetch, not a re-ask.
    const { agent } = await startAgent(
      f,
      'late-1',
      createLogger('late-1', 'info', (l) => lines.push(l)),
      { idleMs: 60_000 },
    );
    const s = await watch.until('late-1', (x) => x.state === 'ok', 60_000);
    expect(s.running).toBe(f.update.targetDigest);

    const events = lines.map((l) => JSON.parse(l) as { msg: string; event?: string }).filter((l) => l.msg === 'transition');
    expect(events.map((e) => e.event)).not.toContain('resume');
    expect(asked.filter((q) => q.list)).toHaveLength(1);
    const wanted = asked.flatMap((q) => q.want);
    expect(wanted.filter((i, k) => wanted.indexOf(i) !== k)).toEqual([]);
    expect(new Set(wanted).size).toBe(chunks);
    expect(agent.stats.duplicateChunks).toBe(0);
  });
});
