import { describe, expect, it } from 'vitest';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import { encodePresence, encodeStatus, parseStatus, type DeviceState } from '../../protocol/status.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { connect, createFixture, GROUP, MODEL, publish, topics, type Fixture } from '../support/harness.ts';
import { until } from '../support/wait.ts';
import { statusFixture } from '../support/status.ts';
import type { QueuedMessage } from '../../gateway/queue.ts';
import { superseded } from '../../gateway/status-relay.ts';
import { parseGatewayStatus } from '../../gateway/status.ts';
import { SITE, startGateway, untilGateway, watchGatewayStatus } from './helpers.ts';
import { ownAfterEach } from '../support/cleanup.ts';

/** What the gateway sends up its cellular link besides the payload's requests (issue 20, fifth pass). */

let f: Fixture | undefined;
let gw: Gateway | undefined;
const own = ownAfterEach();

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('site gateway: its uplink', () => {
  it('its frames are subscribed before any release comes: a fetch asks at once, not after a SUBACK round trip', async () => {
    f = own(await createFixture('gwsub'));
    // Every subscription the gateway makes upstream, as the upstream broker sees it.
    const subs: Array<{ at: number; topic: string; qos: number }> = [];
    f.broker!.aedes.on('subscribe', (s, client) => {
      if (client?.id === `fleet-gateway-${SITE}`) for (const x of s) subs.push({ at: Date.now(), topic: x.topic, qos: x.qos });
    });
    gw = own(await startGateway(f, { groups: [GROUP] }));
    await untilGateway(gw, (s) => s.upstream.state === 'connected');
    await sleep(300);
    const releasedAt = Date.now();
    const r = await publish(f);
    await untilGateway(gw, (s) => s.cache.some((c) => c.updateId === r.updateId), 60_000, 'the payload fetched');
    const frames = subs.filter((x) => topics.parse(x.topic.replaceAll('+', 'x'))?.kind === 'frames');
    const seen = subs.map((x) => `${x.topic}@${x.qos}${x.at < releasedAt ? ' before' : ' after'}`).join(', ');
    // Subscribed while idle (the client restores it after a reconnect), at QoS 0; none made for the fetch.
    expect(frames.filter((x) => x.at < releasedAt).length, seen).toBe(1);
    expect(
      frames.filter((x) => x.at >= releasedAt),
      seen,
    ).toEqual([]);
    expect(frames[0].qos).toBe(0);
  });

  it("a site device's passing states go up as its newest status only; idle, outcomes and presence all go up, in order", async () => {
    f = own(await createFixture('gwmrg'));
    gw = own(await startGateway(f, { groups: [GROUP] }));
    // What reaches upstream for the device, as an operator sees it.
    const seen: string[] = [];
    const op = await connect(f, 'mrg-operator');
    op.onMessage((topic, payload) => {
      const p = topics.parse(topic);
      if (p?.kind === 'status' && p.deviceId === 'mrg-dev') seen.push(parseStatus(payload)?.state ?? 'unreadable');
      if (p?.kind === 'presence' && p.deviceId === 'mrg-dev') seen.push(`presence:${new TextDecoder().decode(payload).slice(0, 40)}`);
    });
    await op.subscribe([topics.status('mrg-dev'), topics.presence('mrg-dev')], 1);
    const site = await MqttTransport.connect({ url: gw.url, clientId: 'mrg-dev' }, 10_000);
    own(site);
    const status = (state: DeviceState, progress = 0): Uint8Array => encodeStatus(statusFixture({ device: 'mrg-dev', group: GROUP, model: MODEL, running: '0'.repeat(64), state, progress }));
    await site.publish(topics.status('mrg-dev'), status('idle'), { qos: 1, retain: true });
    await until(async () => seen.length, { what: 'the idle status upstream', timeoutMs: 10_000, accept: (n) => n >= 1 });
    // Over the LAN a download, its check and apply pass in a second or two: six statuses.
    const burst: Array<[DeviceState, number]> = [
      ['downloading', 0],
      ['downloading', 0.5],
      ['verifying', 1],
      ['applying', 1],
      ['testing', 1],
      ['ok', 1],
    ];
    for (const [state, progress] of burst) await site.publish(topics.status('mrg-dev'), status(state, progress), { qos: 1, retain: true });
    await site.publish(topics.presence('mrg-dev'), encodePresence('offline', Date.now()), { qos: 1, retain: true });
    await until(async () => seen.length, { what: 'the presence upstream', timeoutMs: 15_000, accept: () => seen.some((x) => x.startsWith('presence:')) });
    await untilGateway(gw, (s) => s.relay.queued === 0, 10_000, 'relay drained');
    const states = seen.filter((x) => !x.startsWith('presence:'));
    // Before: all seven went up (about 500 B each on the uplink).
    expect(states[0]).toBe('idle');
    expect(states[states.length - 1]).toBe('ok');
    expect(states.length, seen.join(' ')).toBeLessThanOrEqual(3);
    // What went up is in the order it was made.
    const order = ['idle', ...burst.map(([s]) => s)];
    const at = states.map((x) => order.indexOf(x));
    expect(at, seen.join(' ')).toEqual([...at].sort((a, b) => a - b));
    expect((await gw.status()).relay.merged).toBeGreaterThanOrEqual(4);
  });

  it("a quick reconnect of its upstream connection (the silence watch's) sends its status up once, for the new connection, not also the one made as the old went", async () => {
    f = own(await createFixture('gwqr'));
    gw = own(await startGateway(f, { groups: [GROUP] }));
    // Every status the gateway publishes, as the upstream broker receives it (before any routing).
    const received: string[] = [];
    f.broker!.aedes.on('publish', (packet, client) => {
      if (client?.id !== `fleet-gateway-${SITE}` || topics.parse(packet.topic)?.kind !== 'gatewayStatus') return;
      const s = parseGatewayStatus(new Uint8Array(packet.payload as Buffer));
      // The broker sends its last will as the old connection goes (a status the gateway must replace).
      if (s && !s.message?.includes('last will')) received.push(`${s.upstream.state}/${s.upstream.connects}`);
    });
    await untilGateway(gw, (s) => s.upstream.state === 'connected');
    await sleep(1500);
    const before = received.length;
    // What the silence watch does when the socket is silent while a fresh connection gets through.
    const upstream = (gw.gateway as unknown as { upstream: MqttTransport }).upstream;
    upstream.reconnect('test: silent while the link was up');
    await untilGateway(gw, (s) => s.upstream.connects >= 2 && s.upstream.state === 'connected', 15_000, 'reconnected');
    await sleep(2500);
    // Before: one made as the old connection went (sent after the reconnect, saying `down`) besides
    // the new connection's, each ~750 B; on a slow link also on the dying socket and then again.
    expect(received.slice(before)).toEqual(['connected/2']);
  });

  it('relayed device statuses do not send its own status up again (once a second while the site downloaded)', async () => {
    f = own(await createFixture('gwrel'));
    gw = own(await startGateway(f, { groups: [GROUP] }));
    const gwWatch = await watchGatewayStatus(f);
    const site = await MqttTransport.connect({ url: gw.url, clientId: 'rel-dev' }, 10_000);
    own(site);
    const status = (n: number): Uint8Array => encodeStatus(statusFixture({ device: 'rel-dev', group: GROUP, model: MODEL, running: '0'.repeat(64), message: String(n) }));
    // The first status of a new device is a change (`devices`); let it and the start-up ones go up.
    await site.publish(topics.status('rel-dev'), status(0), { qos: 1, retain: true });
    await untilGateway(gw, (s) => s.devices === 1 && s.relay.relayed >= 1);
    await sleep(1500);
    const before = gwWatch.all.length;
    // A site device downloading over the LAN: 20 statuses in 4 s, each relayed upstream.
    for (let n = 1; n <= 20; n++) {
      await site.publish(topics.status('rel-dev'), status(n), { qos: 1, retain: true });
      await sleep(200);
    }
    await untilGateway(gw, (s) => s.relay.relayed >= 21 && s.relay.queued === 0, 15_000, 'all relayed');
    await sleep(1500);
    const during = gwWatch.all.slice(before);
    // Before: each relayed status moved `relay.relayed`, a change by itself (4–5 gateway statuses of ~750 B here).
    expect(during.length, during.map((s) => JSON.stringify(s.relay)).join(' ')).toBeLessThanOrEqual(1);
    // The relay's counters still go up with the next status that does change (and the 30 s one).
    expect((await gw.status()).relay.relayed).toBeGreaterThanOrEqual(21);
  });
});

describe('the relay: which queued statuses a newer one makes moot (superseded)', () => {
  const st = (device: string, state: DeviceState): QueuedMessage => ({
    topic: topics.status(device),
    payload: encodeStatus(statusFixture({ device, group: GROUP, model: MODEL, running: '0'.repeat(64), state })),
    retain: true,
  });
  const pr = (device: string): QueuedMessage => ({ topic: topics.presence(device), payload: new TextEncoder().encode(encodePresence('online', 1)), retain: true });

  it('drops a passing state only when the same device has a newer message queued behind it', () => {
    const q = [st('a', 'downloading'), st('b', 'downloading'), st('a', 'verifying'), st('a', 'ok'), st('b', 'failed'), pr('a'), pr('a')];
    expect(superseded(q)).toEqual([true, true, true, false, false, false, false]);
  });

  it('keeps idle statuses, outcomes, presence, unretained messages and the newest of each device', () => {
    const unretained = { ...st('c', 'applying'), retain: false };
    const q = [st('a', 'idle'), st('a', 'ok'), st('a', 'rolled_back'), unretained, st('c', 'testing'), st('d', 'downloading')];
    expect(superseded(q)).toEqual([false, false, false, false, false, false]);
  });

  it('judges only the first `first` (the batch) against the whole queue', () => {
    const q = [st('a', 'downloading'), st('b', 'applying'), st('a', 'ok'), st('b', 'ok')];
    expect(superseded(q, 1)).toEqual([true]);
  });
});
