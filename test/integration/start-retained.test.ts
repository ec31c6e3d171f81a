/**
 * A device that starts while its group's release is already retained (a device booting, or
 * joining, after the publish) fetches it once. At start-up the retained release arrives while the
 * agent is still subscribing, so it is taken and its fetch begun before the agent's own start-up
 * recovery runs; that recovery must not begin a second fetch of the same release beside the first
 * (it did: the list and the first window were asked for twice, and the second Download's frames
 * all went to the first, so it re-asked on its own timers; sim:gateway's direct phase, whose
 * devices start after the release, received 1.2–1.6 payloads a device on a clean link).
 * Nor may the agent's first look at its connection ask again for what that fetch asked for on it
 * (it did, and a device whose chunk list had not come yet asked for the list and the first window
 * a second time). The answers are handed to the agent 1.5 s late and SUBACKs 0.3 s late, as behind
 * a link shared by ten devices, where the broker's own replies (a SUBACK) overtake the chunks.
 * Real Aedes broker and MQTT client over TCP on loopback, the agent in this process; the transport
 * is wrapped only to delay the frames it hands on.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DeviceAgent } from '../../device/agent.ts';
import { digestHealthCheck } from '../../device/health.ts';
import { DeviceStorage } from '../../device/storage.ts';
import { systemClock } from '../../platform/clock.ts';
import { decodeRequest } from '../../protocol/frames.ts';
import { parseTrustFile } from '../../protocol/release.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import type { Transport } from '../../transport/types.ts';
import { createLogger } from '../../util/log.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { connect, createFixture, GROUP, MODEL, publish, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

/** The real transport, except that frames reach the agent `ms` late (in order), as chunks queued behind other devices' on a shared link do, and a SUBACK `ms / 5` late. */
function lateFrames(inner: MqttTransport, ms: number): Transport {
  return {
    publish: (t, p, o) => inner.publish(t, p, o),
    // A SUBACK a round trip of the link later; the agent's start-up work goes on meanwhile.
    subscribe: async (filters, qos, o) => {
      await inner.subscribe(filters, qos, o);
      await new Promise((r) => setTimeout(r, ms / 5));
    },
    unsubscribe: (filters) => inner.unsubscribe(filters),
    onMessage: (h) => inner.onMessage((t, p, r) => (topics.parse(t)?.kind === 'frames' ? void setTimeout(() => h(t, p, r), ms) : h(t, p, r))),
    onConnect: (h) => inner.onConnect(h),
    onDisconnect: (h) => inner.onDisconnect(h),
    get connected() {
      return inner.connected;
    },
    close: (g) => inner.close(g),
  };
}

let f: Fixture | undefined;
const own = ownAfterEach();

describe('a device started after the release was published', () => {
  it('fetches the retained release once: the list and every chunk asked for once, no duplicate, no second fetch', async () => {
    f = own(await createFixture('start-retained'));
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
    // A long idle timeout: a chunk asked for twice on this clean loopback link is asked again by mistake, not re-asked after a silence.
    const storage = new DeviceStorage(path.join(f.dir, 'late-1'));
    await DeviceAgent.provision(storage, f.baseFile, digestModelFile);
    const inner = MqttTransport.start({ url: f.url, clientId: 'fleet-device-late-1' });
    f.transports.push(inner);
    const agent = await DeviceAgent.open(
      { deviceId: 'late-1', model: MODEL, group: GROUP, trust: parseTrustFile(await fs.readFile(f.trustFile, 'utf8')), idleMs: 60_000 },
      { transport: lateFrames(inner, 1500), storage, clock: systemClock, health: digestHealthCheck, topics, log: createLogger('late-1', 'info', (l) => lines.push(l)) },
    );
    f.agents.push(agent);
    await agent.start();
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
